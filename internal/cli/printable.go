package cli

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable makes text that came from a peer or from a file name safe to
// print on a terminal. Printable UTF-8 is kept as it is; every other rune
// (C0 and C1 control characters, ESC, DEL, line breaks, Unicode format
// characters such as bidirectional overrides) is written as a Go escape
// (\x1b, \n, \u202e), and so is every byte that is not valid UTF-8. A
// server therefore cannot clear the screen, move the cursor, or start a
// new line that pretends to be ours. JSON output needs none of this: the
// encoder escapes control characters itself.
func Printable(s string) string {
	if isPrintable(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteString(`\x`)
			b.WriteString(strconv.FormatUint(uint64(s[i])>>4, 16))
			b.WriteString(strconv.FormatUint(uint64(s[i])&0xf, 16))
		case unicode.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRuneToASCII(r) // 'x' with x escaped
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

func isPrintable(s string) bool {
	for i, r := range s {
		if r < 0x7f && r >= 0x20 {
			continue
		}
		if r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD") || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
