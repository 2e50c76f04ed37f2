package curve

import (
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/crypto/nacl/box"
)

// Client is the client half of the handshake. Call Hello, Welcome,
// Initiate and Ready in this order; Ready returns the Session.
type Client struct {
	server      Key // the server's long-term public key (pinned)
	pub, sec    Key // the client's long-term pair
	tPub, tSec  Key // this connection's transient pair
	rand        io.Reader
	step        int
	serverTPub  Key // S', from WELCOME
	cookie      []byte
	shared      [32]byte // C'/S' precomputed
	nonce       uint64   // next short nonce to send
	peerNonce   uint64
	initiateMax int // largest INITIATE metadata accepted by Initiate (0: none)
}

const (
	clientNew = iota
	clientHelloSent
	clientWelcomed
	clientInitiated
	clientDone
)

// NewClient returns a client that will only complete the handshake with
// the holder of server's secret key. pub and sec are the client's
// long-term pair; rand supplies the transient key and nonces.
func NewClient(server, pub, sec Key, rand io.Reader) (*Client, error) {
	tpub, tsec, err := box.GenerateKey(rand)
	if err != nil {
		return nil, fmt.Errorf("curve: generating a transient key: %w", err)
	}
	return &Client{server: server, pub: pub, sec: sec, tPub: *tpub, tSec: *tsec, rand: rand, nonce: 1}, nil
}

// Hello returns the HELLO command body.
func (c *Client) Hello() ([]byte, error) {
	if c.step != clientNew {
		return nil, ErrState
	}
	b := make([]byte, 0, HelloSize)
	b = append(b, cmdHello...)
	b = append(b, 1, 0)                // version 1.0
	b = append(b, make([]byte, 72)...) // anti-amplification padding
	b = append(b, c.tPub[:]...)
	b = binary.BigEndian.AppendUint64(b, c.nonce)
	var zero [64]byte
	b = box.Seal(b, zero[:], shortNonce(prefixHello, c.nonce), &c.server, &c.tSec)
	c.nonce++
	c.step = clientHelloSent
	return b, nil
}

// Welcome takes the server's WELCOME (or ERROR) command body. A WELCOME
// that does not open is ErrServerKey: the server is not the one pinned.
func (c *Client) Welcome(body []byte) error {
	if c.step != clientHelloSent {
		return ErrState
	}
	if err := peerError(body); err != nil {
		return err
	}
	if len(body) != WelcomeSize || !hasName(body, cmdWelcome) {
		return fmt.Errorf("%w: WELCOME of %d bytes", ErrMalformed, len(body))
	}
	plain, ok := box.Open(nil, body[24:], longNonce(prefixWelcome, body[8:24]), &c.server, &c.tSec)
	if !ok {
		return ErrServerKey
	}
	copy(c.serverTPub[:], plain[:32])
	c.cookie = plain[32:]
	box.Precompute(&c.shared, &c.serverTPub, &c.tSec)
	c.step = clientWelcomed
	return nil
}

// Initiate returns the INITIATE command body carrying metadata (ZMTP
// properties, as in a NULL READY after its name).
func (c *Client) Initiate(metadata []byte) ([]byte, error) {
	if c.step != clientWelcomed {
		return nil, ErrState
	}
	vn, err := randomBytes(c.rand, 16)
	if err != nil {
		return nil, err
	}
	var vouchPlain [64]byte
	copy(vouchPlain[:32], c.tPub[:])
	copy(vouchPlain[32:], c.server[:])
	plain := make([]byte, 0, 32+16+80+len(metadata))
	plain = append(plain, c.pub[:]...)
	plain = append(plain, vn...)
	plain = box.Seal(plain, vouchPlain[:], longNonce(prefixVouch, vn), &c.serverTPub, &c.sec)
	plain = append(plain, metadata...)

	b := make([]byte, 0, InitiateMinSize+len(metadata))
	b = append(b, cmdInitiate...)
	b = append(b, c.cookie...)
	b = binary.BigEndian.AppendUint64(b, c.nonce)
	b = box.SealAfterPrecomputation(b, plain, shortNonce(prefixInitiate, c.nonce), &c.shared)
	c.nonce++
	c.step = clientInitiated
	return b, nil
}

// Ready takes the server's READY (or ERROR) command body and returns the
// server's metadata and the Session for MESSAGEs.
func (c *Client) Ready(body []byte) ([]byte, *Session, error) {
	if c.step != clientInitiated {
		return nil, nil, ErrState
	}
	if err := peerError(body); err != nil {
		return nil, nil, err
	}
	if len(body) < ReadyMinSize || !hasName(body, cmdReady) {
		return nil, nil, fmt.Errorf("%w: READY of %d bytes", ErrMalformed, len(body))
	}
	n := binary.BigEndian.Uint64(body[6:14])
	if n <= c.peerNonce {
		return nil, nil, fmt.Errorf("%w: READY nonce %d", ErrNonce, n)
	}
	md, ok := box.OpenAfterPrecomputation(nil, body[14:], shortNonce(prefixReady, n), &c.shared)
	if !ok {
		return nil, nil, fmt.Errorf("%w: READY", ErrBox)
	}
	c.step = clientDone
	s := &Session{shared: c.shared, sendPfx: prefixMsgC, recvPfx: prefixMsgS, nonce: c.nonce, peerNonce: n}
	return md, s, nil
}
