package protocol

import (
	"fmt"
	"strconv"
	"strings"
)

// VersionMessage is the message text of an ERROR 505: the range of
// versions the sender of the ERROR speaks, in the grammar PROTOCOL.md
// section 4 fixes ("ZSND 1..2"), then "; " and detail when detail is not
// empty. A peer reads the range back with ParseVersionMessage.
func VersionMessage(min, max uint8, detail string) string {
	s := fmt.Sprintf("ZSND %d..%d", min, max)
	if detail != "" {
		s += "; " + detail
	}
	return s
}

// ParseVersionMessage reads the version range at the start of an ERROR
// 505 message. ok is false if msg does not follow the grammar.
func ParseVersionMessage(msg string) (min, max uint8, ok bool) {
	rest, found := strings.CutPrefix(msg, "ZSND ")
	if !found {
		return 0, 0, false
	}
	if i := strings.Index(rest, "; "); i >= 0 {
		rest = rest[:i]
	}
	lo, hi, found := strings.Cut(rest, "..")
	if !found {
		return 0, 0, false
	}
	a, err1 := parseVersion(lo)
	b, err2 := parseVersion(hi)
	if err1 != nil || err2 != nil || a > b {
		return 0, 0, false
	}
	return a, b, true
}

func parseVersion(s string) (uint8, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, strconv.ErrSyntax
	}
	v, err := strconv.ParseUint(s, 10, 8)
	return uint8(v), err
}
