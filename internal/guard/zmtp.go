package guard

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/text/cases"
	"golang.org/x/text/language"
)

// Errors carried (as the Err of a *net.OpError) by the errors the guard
// returns after it has closed a connection. None of them is a timeout, so
// zmq4 always forgets the connection.
var (
	ErrFrameTooLarge    = errors.New("guard: frame larger than MaxFrameSize")
	ErrMessageTooLarge  = errors.New("guard: message larger than MaxMessageSize or MaxMessageFrames")
	ErrBadFrame         = errors.New("guard: frame with reserved flag bits set")
	ErrHandshake        = errors.New("guard: invalid ZMTP handshake")
	ErrHandshakeTimeout = errors.New("guard: ZMTP handshake not completed in time")
	ErrWriteStall       = errors.New("guard: write made no progress within WriteStallTimeout")
	ErrIdle             = errors.New("guard: nothing read within IdleTimeout")
	ErrOrphaned         = errors.New("guard: connection not adopted by zmq4")
)

// ZMTP 3 wire constants (RFC 23).
const (
	greetingLen = 64

	flagMore     = 0x01
	flagLong     = 0x02
	flagCommand  = 0x04
	flagReserved = 0xf8
)

// nullGreeting is the greeting zmq4 v0.17.0 writes with the NULL mechanism
// (greeting.marshal): signature 0xFF, 8 zero bytes, 0x7F; version 3.0;
// mechanism "NULL" zero-padded to 20 bytes; as-server 0 (zmq4 never sets
// it); 31 zero bytes of filler.
var nullGreeting = func() (g [greetingLen]byte) {
	g[0] = 0xff
	g[9] = 0x7f
	g[10], g[11] = 3, 0
	copy(g[12:32], "NULL")
	return g
}()

// handshakeError describes why a peer's greeting or READY was refused; it
// matches ErrHandshake with errors.Is.
type handshakeError struct {
	reason    string
	mechanism bool // the peer uses another security mechanism
}

func (e *handshakeError) Error() string { return "guard: invalid ZMTP handshake: " + e.reason }
func (e *handshakeError) Is(t error) bool {
	return t == ErrHandshake || (e.mechanism && t == ErrMechanism)
}

func badHandshake(format string, args ...any) error {
	return &handshakeError{reason: fmt.Sprintf(format, args...)}
}

// checkGreeting validates a peer's 64-byte greeting: ZMTP signature, major
// version 3 or higher, mechanism NULL, as-server 0 or 1. The signature
// padding is not checked: libzmq fills it for ZMTP 1.0 compatibility.
func checkGreeting(g []byte) error {
	switch {
	case g[0] != 0xff || g[9] != 0x7f:
		return badHandshake("not a ZMTP signature")
	case g[10] < 3:
		return badHandshake("ZMTP version %d.%d, want 3.0 or later", g[10], g[11])
	case !bytes.Equal(g[12:32], nullGreeting[12:32]):
		return &handshakeError{reason: fmt.Sprintf("security mechanism %q, want NULL", bytes.TrimRight(g[12:32], "\x00")), mechanism: true}
	case g[32] > 1:
		return badHandshake("as-server byte %#x", g[32])
	}
	return nil
}

// readGreeting reads the peer's greeting into a fresh buffer with room for
// the READY command that follows.
func readGreeting(r io.Reader) ([]byte, error) {
	buf := make([]byte, greetingLen, greetingLen+256)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	if err := checkGreeting(buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// readReady reads the peer's first command, which must be a well-formed
// READY of at most limit bytes, and appends its raw bytes to buf.
func readReady(r io.Reader, buf []byte, limit int64) ([]byte, error) {
	start := len(buf)
	buf = append(buf, 0, 0)
	if _, err := io.ReadFull(r, buf[start:]); err != nil {
		return nil, err
	}
	flags := buf[start]
	if flags&^flagLong != flagCommand {
		return nil, badHandshake("first frame has flags %#x, want a READY command", flags)
	}
	size := uint64(buf[start+1])
	if flags&flagLong != 0 {
		buf = append(buf, make([]byte, 7)...)
		if _, err := io.ReadFull(r, buf[start+2:]); err != nil {
			return nil, err
		}
		size = binary.BigEndian.Uint64(buf[start+1:])
	}
	if size > uint64(limit) {
		return nil, badHandshake("first command of %d bytes, limit %d", size, limit)
	}
	body := len(buf)
	buf = append(buf, make([]byte, size)...)
	if _, err := io.ReadFull(r, buf[body:]); err != nil {
		return nil, err
	}
	if err := checkReady(buf[body:]); err != nil {
		return nil, err
	}
	return buf, nil
}

// checkReady validates a READY command body: name, then properties of a
// 1-byte name length (at least 1), the name, a 4-byte big-endian value
// length and the value. The Socket-Type property is mandatory.
func checkReady(b []byte) error {
	if len(b) < 1 || int(b[0]) != len("READY") || len(b) < 1+len("READY") || string(b[1:6]) != "READY" {
		return badHandshake("first command is not READY")
	}
	b = b[6:]
	socketType := false
	for len(b) > 0 {
		klen := int(b[0])
		if klen == 0 {
			return badHandshake("READY property with an empty name")
		}
		if len(b) < 1+klen+4 {
			return badHandshake("READY property header truncated")
		}
		name := b[1 : 1+klen]
		vlen := binary.BigEndian.Uint32(b[1+klen:])
		b = b[1+klen+4:]
		if uint64(vlen) > uint64(len(b)) {
			return badHandshake("READY property %q value truncated", name)
		}
		b = b[vlen:]
		if bytes.EqualFold(name, []byte("Socket-Type")) {
			socketType = true
		}
	}
	if !socketType {
		return badHandshake("READY without Socket-Type")
	}
	return nil
}

// readyIdentity returns a copy of the Identity property of a READY
// command frame (flags, length, body) already checked by readReady, or nil.
// It reads names exactly as zmq4 does (title-cased word by word, the last
// of repeated names winning), so it finds the identity zmq4 routes by.
func readyIdentity(frame []byte) []byte {
	body := frame[2:]
	if frame[0]&flagLong != 0 {
		body = frame[9:]
	}
	b := body[6:] // "\x05READY"
	var id []byte
	for len(b) > 0 {
		klen := int(b[0])
		name := b[1 : 1+klen]
		vlen := int(binary.BigEndian.Uint32(b[1+klen:]))
		value := b[1+klen+4 : 1+klen+4+vlen]
		// A Caser is not safe for concurrent use: one per call.
		if cases.Title(language.Und, cases.NoLower).String(string(name)) == "Identity" {
			id = bytes.Clone(value)
		}
		b = b[1+klen+4+vlen:]
	}
	return id
}

// newIdentity returns a routing identity for a peer that announced none:
// a zero byte (libzmq's mark of identities the ROUTER made) and 16 random
// bytes.
func newIdentity() []byte {
	id := make([]byte, 17)
	rand.Read(id[1:])
	return id
}

// withIdentity returns a checked READY command frame with an Identity
// property id appended (zmq4 takes the last of repeated properties, so it
// replaces one the peer sent).
func withIdentity(frame, id []byte) ([]byte, error) {
	body := frame[2:]
	if frame[0]&flagLong != 0 {
		body = frame[9:]
	}
	nb := make([]byte, 0, len(body)+1+len("Identity")+4+len(id))
	nb = append(nb, body...)
	nb = append(nb, byte(len("Identity")))
	nb = append(nb, "Identity"...)
	nb = binary.BigEndian.AppendUint32(nb, uint32(len(id)))
	nb = append(nb, id...)
	if err := checkReady(nb); err != nil {
		return nil, err
	}
	return appendFrame(nil, flagCommand, nb), nil
}

// frameScanner follows the ZMTP frame structure of a byte stream (after the
// handshake) without copying it: it looks at header bytes only and skips
// bodies by counting.
type frameScanner struct {
	maxFrame  uint64
	maxMsg    uint64 // 0: no limit
	maxFrames int    // 0: no limit

	state     scanState
	flags     byte
	lenBytes  int    // long-length bytes seen
	size      uint64 // length being decoded
	remaining uint64 // body bytes still to skip
	msgBytes  uint64 // body bytes of the current message so far
	msgFrames int    // frames of the current message so far
}

type scanState uint8

const (
	scanFlags scanState = iota
	scanShortLen
	scanLongLen
	scanBody
)

func newFrameScanner(s *settings) frameScanner {
	return frameScanner{maxFrame: uint64(s.maxFrame), maxMsg: uint64(s.maxMsg), maxFrames: s.maxFrames}
}

// scan consumes p and reports the first violation of the limits.
func (s *frameScanner) scan(p []byte) error {
	for len(p) > 0 {
		switch s.state {
		case scanBody:
			if uint64(len(p)) < s.remaining {
				s.remaining -= uint64(len(p))
				return nil
			}
			p = p[s.remaining:]
			s.remaining = 0
			s.state = scanFlags
		case scanFlags:
			s.flags = p[0]
			p = p[1:]
			if s.flags&flagReserved != 0 {
				return ErrBadFrame
			}
			s.size, s.lenBytes = 0, 0
			s.state = scanShortLen
			if s.flags&flagLong != 0 {
				s.state = scanLongLen
			}
		case scanShortLen:
			s.size = uint64(p[0])
			p = p[1:]
			if err := s.header(); err != nil {
				return err
			}
		case scanLongLen:
			for len(p) > 0 && s.lenBytes < 8 {
				s.size = s.size<<8 | uint64(p[0])
				p = p[1:]
				s.lenBytes++
			}
			if s.lenBytes == 8 {
				if err := s.header(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// header checks a complete frame header.
func (s *frameScanner) header() error {
	if s.size > s.maxFrame {
		return ErrFrameTooLarge
	}
	s.msgFrames++
	s.msgBytes += s.size
	if (s.maxFrames > 0 && s.msgFrames > s.maxFrames) || (s.maxMsg > 0 && s.msgBytes > s.maxMsg) {
		return ErrMessageTooLarge
	}
	if s.flags&flagMore == 0 {
		s.msgFrames, s.msgBytes = 0, 0
	}
	s.remaining = s.size
	s.state = scanBody
	if s.size == 0 {
		s.state = scanFlags
	}
	return nil
}
