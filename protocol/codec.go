package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Sentinel errors, matched with errors.Is on a *DecodeError.
var (
	// ErrMalformed: the message does not follow the grammar or breaks a limit.
	ErrMalformed = errors.New("malformed message")
	// ErrSignature: frame 0 does not start with "ZSND"; not a ZSND peer.
	ErrSignature = errors.New("not a ZSND message")
	// ErrVersion: the message's version is not one this side speaks.
	ErrVersion = errors.New("unsupported protocol version")
	// ErrUnknownCommand: the command octet names no known command.
	ErrUnknownCommand = errors.New("unknown command")
)

// DecodeError says why a message was rejected.
type DecodeError struct {
	Command Command // zero if the command frame itself was bad
	Version uint8
	Err     error // one of the sentinels above
	Detail  string
}

func (e *DecodeError) Error() string {
	if e.Command == 0 {
		return fmt.Sprintf("zsnd: %v: %s", e.Err, e.Detail)
	}
	return fmt.Sprintf("zsnd: %v in %v: %s", e.Err, e.Command, e.Detail)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Code is the ERROR code a receiver of this message sends back.
func (e *DecodeError) Code() Code {
	switch {
	case errors.Is(e.Err, ErrVersion):
		return CodeVersion
	case errors.Is(e.Err, ErrUnknownCommand):
		return CodeUnknownCommand
	}
	return CodeBadRequest
}

// CommandFrame returns the 6-octet frame 0 for command c at version v.
func CommandFrame(v uint8, c Command) []byte {
	return []byte{Signature[0], Signature[1], Signature[2], Signature[3], v, byte(c)}
}

// Encode returns the frames of m at protocol version v. HELLO is always
// encoded at version 1 (its layout is frozen). A CHUNK's data frame is
// m.Data itself, not a copy. Encoding a command at a version older than
// m.Command().Since() yields frames the peer rejects as an unknown command;
// sessions only send commands their version has.
func Encode(v uint8, m Message) [][]byte {
	if m.Command() == CmdHello {
		v = Version1
	}
	hdr := m.appendHeader(make([]byte, 0, 64))
	frames := [][]byte{CommandFrame(v, m.Command()), hdr}
	switch d := m.(type) {
	case *Chunk:
		frames = append(frames, d.Data)
	case *Pack:
		if d.DataLen() > 0 {
			frames = append(frames, d.Data)
		}
	}
	return frames
}

// Decode parses one message. It never panics and never copies chunk data:
// a decoded Chunk's Data aliases frames[2]. The returned version is the one
// in the command frame. Errors are *DecodeError.
func Decode(frames [][]byte) (Message, uint8, error) {
	if len(frames) == 0 {
		return nil, 0, &DecodeError{Err: ErrMalformed, Detail: "no frames"}
	}
	f0 := frames[0]
	if len(f0) != CommandFrameLen || string(f0[:4]) != Signature {
		if len(f0) >= 4 && string(f0[:4]) == Signature {
			return nil, 0, &DecodeError{Err: ErrMalformed, Detail: fmt.Sprintf("command frame is %d octets, want %d", len(f0), CommandFrameLen)}
		}
		return nil, 0, &DecodeError{Err: ErrSignature, Detail: "frame 0 does not start with ZSND"}
	}
	v, c := f0[4], Command(f0[5])
	m := newMessage(c)
	if m != nil && v >= MinVersion && v < c.Since() {
		// A command of a later version in an older frame is, at that
		// version, no command at all.
		m = nil
	}
	if m == nil {
		return nil, v, &DecodeError{Command: c, Version: v, Err: ErrUnknownCommand, Detail: fmt.Sprintf("command octet 0x%02x", uint8(c))}
	}
	if c == CmdHello {
		if v != Version1 {
			return nil, v, &DecodeError{Command: c, Version: v, Err: ErrMalformed, Detail: "HELLO must be sent at version 1"}
		}
	} else if v < MinVersion || v > MaxVersion {
		return nil, v, &DecodeError{Command: c, Version: v, Err: ErrVersion, Detail: fmt.Sprintf("version %d, this side speaks %d..%d", v, MinVersion, MaxVersion)}
	}
	// CHUNK has 3 frames; PACK 3 when it carries data, else 2 (checked
	// once its header is read); every other command 2.
	want := 2
	switch {
	case c == CmdChunk:
		want = 3
	case c == CmdPack && len(frames) == 3:
		want = 3
	}
	if len(frames) != want || len(frames) < 2 {
		return nil, v, &DecodeError{Command: c, Version: v, Err: ErrMalformed, Detail: fmt.Sprintf("%d frames, want %d", len(frames), want)}
	}
	if len(frames[1]) > MaxHeaderLen {
		return nil, v, &DecodeError{Command: c, Version: v, Err: ErrMalformed, Detail: fmt.Sprintf("header frame of %d octets exceeds %d", len(frames[1]), MaxHeaderLen)}
	}
	d := decoder{b: frames[1]}
	m.decodeHeader(&d)
	if d.err == "" && len(d.b) != 0 {
		d.fail("%d trailing octets in header frame", len(d.b))
	}
	if d.err == "" {
		switch dm := m.(type) {
		case *Chunk:
			if uint32(len(frames[2])) != d.chunkLen || len(frames[2]) != int(d.chunkLen) {
				d.fail("header says %d data octets, data frame has %d", d.chunkLen, len(frames[2]))
			}
			dm.Data = frames[2]
		case *Pack:
			switch {
			case d.chunkLen == 0 && len(frames) == 3:
				d.fail("PACK of empty files has a data frame")
			case d.chunkLen > 0 && (len(frames) != 3 || len(frames[2]) != int(d.chunkLen)):
				got := 0
				if len(frames) == 3 {
					got = len(frames[2])
				}
				d.fail("header says %d data octets, data frame has %d", d.chunkLen, got)
			case d.chunkLen > 0:
				dm.Data = frames[2]
			}
		}
	}
	if d.err != "" {
		return nil, v, &DecodeError{Command: c, Version: v, Err: ErrMalformed, Detail: d.err}
	}
	return m, v, nil
}

// decoder reads big-endian fields; after the first failure every read
// returns zero and err keeps the first reason.
type decoder struct {
	b        []byte
	err      string
	chunkLen uint32
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == "" {
		d.err = fmt.Sprintf(format, args...)
	}
	d.b = nil
}

func (d *decoder) take(n int) []byte {
	if d.err != "" {
		return nil
	}
	if len(d.b) < n {
		d.fail("header frame truncated")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) bytes(dst []byte) {
	if p := d.take(len(dst)); p != nil {
		copy(dst, p)
	}
}

// text reads a string: a 2-octet length then that many octets of UTF-8.
func (d *decoder) text(limit int) string {
	n := int(d.u16())
	if d.err != "" {
		return ""
	}
	if n > limit {
		d.fail("string of %d octets exceeds %d", n, limit)
		return ""
	}
	p := d.take(n)
	if p == nil {
		return ""
	}
	if !utf8.Valid(p) {
		d.fail("string is not valid UTF-8")
		return ""
	}
	return string(p)
}

func be16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func be64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// appendString writes s as a 2-octet length and its octets. Strings longer
// than 65535 octets are truncated at a rune boundary (no field allows that
// many; this only keeps the encoder total).
func appendString(b []byte, s string) []byte {
	if len(s) > 0xFFFF {
		s = s[:0xFFFF]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	b = be16(b, uint16(len(s)))
	return append(b, s...)
}

// ErrBadName is returned (wrapped) by ValidName.
var ErrBadName = errors.New("invalid file name")

// ValidName checks a name as it appears in GET and FILE: a relative path of
// one or more components separated by "/", none of them empty, "." or "..",
// with no NUL or backslash, valid UTF-8, at most MaxNameLen octets and
// MaxComponentLen per component. Both peers apply it: the sender before it
// looks anything up, the receiver before it creates anything.
func ValidName(name string) error {
	// The message does not quote the name: the caller names it once.
	bad := func(why string) error { return fmt.Errorf("%w: %s", ErrBadName, why) }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("longer than %d octets", MaxNameLen))
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.ContainsRune(name, 0):
		return bad("contains NUL")
	case strings.ContainsRune(name, '\\'):
		return bad("contains a backslash")
	case name[0] == '/':
		return bad("absolute path")
	}
	for rest := name; ; {
		comp, after, more := strings.Cut(rest, "/")
		rest = after
		switch {
		case comp == "":
			return bad("empty path component")
		case comp == "." || comp == "..":
			return bad("contains a . or .. component")
		case len(comp) > MaxComponentLen:
			return bad(fmt.Sprintf("component longer than %d octets", MaxComponentLen))
		}
		for i := 0; i < len(comp); i++ { // UTF-8 checked above: control characters are single octets
			if c := comp[i]; c < 0x20 || c == 0x7f {
				return bad("contains a control character")
			}
		}
		if !more {
			return nil
		}
	}
}
