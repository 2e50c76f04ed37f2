// Package curve is the CurveZMQ security handshake and message boxing of
// ZeroMQ RFC 26 (rfc.zeromq.org/spec:26) as used by ZMTP's CURVE
// mechanism (RFC 25): a pure state machine, bytes in and bytes out, with
// no sockets, goroutines or clocks. The guarded transport (internal/guard)
// drives it.
//
// Every value handled here is a ZMTP command body (the bytes after the
// frame header): HELLO, WELCOME, INITIATE, READY, MESSAGE and ERROR. The
// caller frames and unframes them.
//
// The cryptography is golang.org/x/crypto's nacl/box (Curve25519,
// XSalsa20, Poly1305) and nacl/secretbox; nothing is written by hand.
//
// # The rules of RFC 26 that hold here
//
//   - Each box has its own nonce prefix ("CurveZMQHELLO---", "WELCOME-",
//     "COOKIE--", "CurveZMQINITIATE", "VOUCH---", "CurveZMQREADY---",
//     "CurveZMQMESSAGEC" client to server, "CurveZMQMESSAGES" server to
//     client).
//   - Short nonces are 8-byte big-endian counters starting at 1 and
//     shared by all the commands one side sends. A received READY or
//     MESSAGE whose nonce is not strictly greater than the last one
//     accepted is an error (a replayed or reordered command); the caller
//     closes the connection.
//   - HELLO carries 72 bytes of zero padding (and an 80-byte signature
//     box), so it is larger than the WELCOME it causes: the server is no
//     amplifier.
//   - The server keeps no state for a connection between HELLO and
//     INITIATE: its transient secret key and the client's transient
//     public key travel in the cookie, boxed under a cookie key that the
//     server replaces every CookieLifetime. A cookie is accepted only
//     under the current or the previous cookie key, and only once.
//   - Both sides make a new transient key pair for every connection
//     (forward secrecy); long-term keys only sign (HELLO is boxed to the
//     server's long-term key, the vouch by the client's).
//   - The client's long-term key is checked by the server's Authorize
//     function when INITIATE arrives, before READY is sent.
package curve

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/curve25519"
)

// Key is a Curve25519 key (public or secret).
type Key = [32]byte

// Sizes of command bodies (name length byte and name included).
const (
	HelloSize   = 200
	WelcomeSize = 168
	CookieSize  = 96
	// InitiateMinSize is an INITIATE without metadata.
	InitiateMinSize = 257
	// ReadyMinSize is a READY without metadata.
	ReadyMinSize = 30
	// MessageOverhead is what MESSAGE adds to a frame's body: name (8),
	// nonce (8), MAC (16) and the flags byte.
	MessageOverhead = 33
)

// Errors. All of them mean the connection must be closed.
var (
	// ErrMalformed: a command of the wrong name, size or version.
	ErrMalformed = errors.New("curve: malformed command")
	// ErrBox: a box failed authentication (tampered bytes, or keys that
	// do not match).
	ErrBox = errors.New("curve: box failed authentication")
	// ErrServerKey: the server could not prove it holds the secret key of
	// the public key the client pinned (WELCOME did not open).
	ErrServerKey = errors.New("curve: server does not hold the expected key")
	// ErrCookie: INITIATE carried a cookie that is forged, expired (its
	// cookie key was retired) or already used.
	ErrCookie = errors.New("curve: invalid, expired or replayed cookie")
	// ErrVouch: the vouch inside INITIATE does not prove the client's
	// long-term key for this connection.
	ErrVouch = errors.New("curve: invalid vouch")
	// ErrDenied: the server's Authorize refused the client's key.
	ErrDenied = errors.New("curve: client key not authorized")
	// ErrNonce: a replayed or reordered command (nonce not increasing).
	ErrNonce = errors.New("curve: nonce not increasing (replayed or reordered command)")
	// ErrState: a call out of the order of the handshake.
	ErrState = errors.New("curve: call out of handshake order")
	// ErrPeer: the peer sent an ERROR command; see PeerError.
	ErrPeer = errors.New("curve: peer sent ERROR")
)

// PeerError is an ERROR command received during the handshake.
type PeerError struct{ Reason string }

func (e *PeerError) Error() string   { return "curve: peer sent ERROR: " + e.Reason }
func (e *PeerError) Is(t error) bool { return t == ErrPeer }

// Command names (length-prefixed, as on the wire).
var (
	cmdHello    = []byte("\x05HELLO")
	cmdWelcome  = []byte("\x07WELCOME")
	cmdInitiate = []byte("\x08INITIATE")
	cmdReady    = []byte("\x05READY")
	cmdMessage  = []byte("\x07MESSAGE")
	cmdError    = []byte("\x05ERROR")
)

// Nonce prefixes.
const (
	prefixHello    = "CurveZMQHELLO---"
	prefixWelcome  = "WELCOME-"
	prefixCookie   = "COOKIE--"
	prefixInitiate = "CurveZMQINITIATE"
	prefixVouch    = "VOUCH---"
	prefixReady    = "CurveZMQREADY---"
	prefixMsgC     = "CurveZMQMESSAGEC"
	prefixMsgS     = "CurveZMQMESSAGES"
)

// Message flags inside a MESSAGE box (libzmq: more, command).
const (
	FlagMore    = 0x01
	FlagCommand = 0x02
)

func shortNonce(prefix string, n uint64) *[24]byte {
	var nonce [24]byte
	copy(nonce[:], prefix)
	binary.BigEndian.PutUint64(nonce[16:], n)
	return &nonce
}

func longNonce(prefix string, n []byte) *[24]byte {
	var nonce [24]byte
	copy(nonce[:], prefix)
	copy(nonce[8:], n)
	return &nonce
}

// hasName reports whether body starts with the length-prefixed name.
func hasName(body, name []byte) bool {
	return len(body) >= len(name) && string(body[:len(name)]) == string(name)
}

// peerError returns the PeerError of an ERROR command body, or nil when
// body is not one.
func peerError(body []byte) error {
	if !hasName(body, cmdError) {
		return nil
	}
	r := body[len(cmdError):]
	if len(r) < 1 || int(r[0]) > len(r)-1 {
		return fmt.Errorf("%w: ERROR with a truncated reason", ErrMalformed)
	}
	return &PeerError{Reason: string(r[1 : 1+int(r[0])])}
}

// ErrorCommand returns the body of an ERROR command with reason (at most
// 255 bytes; longer reasons are cut).
func ErrorCommand(reason string) []byte {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	b := append([]byte(nil), cmdError...)
	b = append(b, byte(len(reason)))
	return append(b, reason...)
}

// IsError reports whether a command body is an ERROR command.
func IsError(body []byte) bool { return hasName(body, cmdError) }

// PublicKey returns the public key of a secret key.
func PublicKey(secret Key) (Key, error) {
	var pub Key
	p, err := curve25519.X25519(secret[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("curve: deriving a public key: %w", err)
	}
	copy(pub[:], p)
	return pub, nil
}

func randomBytes(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("curve: reading randomness: %w", err)
	}
	return b, nil
}

// Session boxes and unboxes MESSAGE commands once the handshake is done.
// It is not safe for concurrent use by several senders, nor by several
// receivers; one sender and one receiver may use it at once.
type Session struct {
	shared    [32]byte
	sendPfx   string
	recvPfx   string
	nonce     uint64 // next nonce to send
	peerNonce uint64 // last nonce accepted
}

// SealedSize is the size of the MESSAGE body for a frame of n bytes.
func SealedSize(n int) int { return MessageOverhead + n }

// Seal appends to out the body of a MESSAGE command carrying plain, whose
// first byte is the flags (FlagMore, FlagCommand) and the rest the
// frame's data.
func (s *Session) Seal(out, plain []byte) []byte {
	loadBackend()
	out = append(out, cmdMessage...)
	out = binary.BigEndian.AppendUint64(out, s.nonce)
	out = sealMessage(out, plain, shortNonce(s.sendPfx, s.nonce), &s.shared)
	s.nonce++
	return out
}

// PlainOffset is where a MESSAGE body's plaintext (flags byte, then
// data) lies once opened in place, and where SealInPlace takes it from:
// after the name, the nonce and the MAC.
const PlainOffset = MessageOverhead - 1

// SealInPlace seals the body of a MESSAGE command in b, whose bytes from
// PlainOffset on are the plaintext (flags byte, then the frame's data):
// the name, nonce and MAC are written before it and the plaintext is
// encrypted where it lies. It returns b.
func (s *Session) SealInPlace(b []byte) []byte {
	loadBackend()
	copy(b, cmdMessage)
	binary.BigEndian.PutUint64(b[8:16], s.nonce)
	sealMessage(b[16:16], b[PlainOffset:], shortNonce(s.sendPfx, s.nonce), &s.shared)
	s.nonce++
	return b
}

// OpenInPlace is Open decrypting where the ciphertext lies: on success
// the plaintext (flags byte, then data) is body[PlainOffset:], returned;
// on error body's content is unspecified.
func (s *Session) OpenInPlace(body []byte) ([]byte, error) {
	loadBackend()
	if len(body) < MessageOverhead {
		return nil, fmt.Errorf("%w: MESSAGE of %d bytes", ErrMalformed, len(body))
	}
	return s.Open(body[PlainOffset:PlainOffset], body)
}

// Open checks a MESSAGE command body and appends its plaintext (flags
// byte, then data) to out. A nonce that is not greater than the last one
// accepted is ErrNonce; nothing is appended on error.
func (s *Session) Open(out, body []byte) ([]byte, error) {
	loadBackend()
	if len(body) < MessageOverhead || !hasName(body, cmdMessage) {
		return out, fmt.Errorf("%w: MESSAGE of %d bytes", ErrMalformed, len(body))
	}
	n := binary.BigEndian.Uint64(body[8:16])
	if n <= s.peerNonce {
		return out, fmt.Errorf("%w: MESSAGE nonce %d after %d", ErrNonce, n, s.peerNonce)
	}
	res, ok := openMessage(out, body[16:], shortNonce(s.recvPfx, n), &s.shared)
	if !ok {
		return out, fmt.Errorf("%w: MESSAGE %d", ErrBox, n)
	}
	if res[len(out)]&^(FlagMore|FlagCommand) != 0 {
		return out, fmt.Errorf("%w: MESSAGE flags %#x", ErrMalformed, res[len(out)])
	}
	s.peerNonce = n
	return res, nil
}
