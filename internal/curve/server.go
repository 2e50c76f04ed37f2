package curve

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/nacl/secretbox"
)

// CookieLifetime is how long a cookie key is used for new cookies; cookies
// under the previous key are still accepted, so a cookie lives between
// one and two lifetimes.
const CookieLifetime = 60 * time.Second

// maxSeenCookies bounds the replay cache; when it is full the cookie keys
// are replaced early (outstanding handshakes then fail and are retried).
const maxSeenCookies = 1 << 16

// Server is the server half of the handshake. It holds the long-term key
// pair, the cookie keys and the replay cache of used cookies, and no state
// per connection: Welcome and Initiate are independent calls. It is safe
// for concurrent use.
type Server struct {
	pub, sec  Key
	rand      io.Reader
	authorize func(client Key) error

	mu        sync.Mutex
	cur       Key               // cookie key for new cookies
	since     time.Time         // when cur was made
	prev      Key               // the key before cur
	prevSince time.Time         // when prev was made; zero: no prev
	seen      map[[16]byte]bool // nonces of cookies used, whose key may still be accepted
	seenCur   map[[16]byte]bool // those used since cur was made
}

// NewServer returns a server with the long-term pair (pub, sec).
// authorize is called with the client's long-term public key once its
// vouch is verified; a non-nil error refuses the client (Initiate reports
// it wrapped in ErrDenied). nil authorizes every client. rand supplies
// transient keys, cookie keys and nonces.
func NewServer(pub, sec Key, authorize func(client Key) error, rand io.Reader) *Server {
	return &Server{pub: pub, sec: sec, rand: rand, authorize: authorize}
}

// rotate replaces the cookie key when it is CookieLifetime old (or the
// clock went back), or at once when force. Called with s.mu held.
func (s *Server) rotate(now time.Time, force bool) error {
	if !force && !s.since.IsZero() && now.Sub(s.since) < CookieLifetime && !now.Before(s.since) {
		return nil
	}
	k, err := randomBytes(s.rand, 32)
	if err != nil {
		return err
	}
	s.prev, s.prevSince = s.cur, s.since
	if force {
		s.prevSince = time.Time{}
	}
	copy(s.cur[:], k)
	s.since = now
	// Cookies whose key is no longer accepted can never be replayed.
	s.seen, s.seenCur = s.seenCur, nil
	if s.prevSince.IsZero() {
		s.seen = nil
	}
	return nil
}

// cookieKeys returns the keys a cookie may be boxed under at now: the
// current one and, for 2*CookieLifetime after it was made, the previous.
func (s *Server) cookieKeys(now time.Time) []Key {
	keys := []Key{s.cur}
	if !s.prevSince.IsZero() && now.Sub(s.prevSince) < 2*CookieLifetime {
		keys = append(keys, s.prev)
	}
	return keys
}

// Welcome takes a HELLO command body and returns the WELCOME command
// body. It keeps nothing: the transient keys travel in the cookie.
func (s *Server) Welcome(hello []byte, now time.Time) ([]byte, error) {
	if len(hello) != HelloSize || !hasName(hello, cmdHello) {
		return nil, fmt.Errorf("%w: HELLO of %d bytes", ErrMalformed, len(hello))
	}
	if hello[6] != 1 || hello[7] != 0 {
		return nil, fmt.Errorf("%w: HELLO version %d.%d, want 1.0", ErrMalformed, hello[6], hello[7])
	}
	var clientT Key
	copy(clientT[:], hello[80:112])
	n := binary.BigEndian.Uint64(hello[112:120])
	sig, ok := box.Open(nil, hello[120:], shortNonce(prefixHello, n), &clientT, &s.sec)
	if !ok {
		return nil, fmt.Errorf("%w: HELLO (the client may have the wrong server key)", ErrBox)
	}
	if subtle.ConstantTimeCompare(sig, make([]byte, 64)) != 1 {
		return nil, fmt.Errorf("%w: HELLO signature is not zero", ErrMalformed)
	}
	tpub, tsec, err := box.GenerateKey(s.rand)
	if err != nil {
		return nil, fmt.Errorf("curve: generating a transient key: %w", err)
	}
	rnd, err := randomBytes(s.rand, 32)
	if err != nil {
		return nil, err
	}
	cookieNonce, welcomeNonce := rnd[:16], rnd[16:]

	s.mu.Lock()
	if err := s.rotate(now, false); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	ck := s.cur
	s.mu.Unlock()

	var cookiePlain [64]byte
	copy(cookiePlain[:32], clientT[:])
	copy(cookiePlain[32:], tsec[:])
	cookie := make([]byte, 0, CookieSize)
	cookie = append(cookie, cookieNonce...)
	cookie = secretbox.Seal(cookie, cookiePlain[:], longNonce(prefixCookie, cookieNonce), &ck)
	clear(cookiePlain[:])

	plain := make([]byte, 0, 32+CookieSize)
	plain = append(plain, tpub[:]...)
	plain = append(plain, cookie...)
	clear(tsec[:])

	w := make([]byte, 0, WelcomeSize)
	w = append(w, cmdWelcome...)
	w = append(w, welcomeNonce...)
	w = box.Seal(w, plain, longNonce(prefixWelcome, welcomeNonce), &clientT, &s.sec)
	return w, nil
}

// Accepted is a client whose INITIATE was verified and authorized. Ready
// answers it.
type Accepted struct {
	// Client is the client's long-term public key.
	Client Key
	// Metadata is the client's ZMTP properties.
	Metadata []byte

	shared    [32]byte
	peerNonce uint64
	done      bool
}

// Initiate verifies an INITIATE command body: the cookie (made by this
// server under a cookie key still accepted, never used before), the box,
// and the vouch, which must name this connection's transient key and this
// server. Then it asks the authorize function about the client's key.
func (s *Server) Initiate(body []byte, now time.Time) (*Accepted, error) {
	if len(body) < InitiateMinSize || !hasName(body, cmdInitiate) {
		return nil, fmt.Errorf("%w: INITIATE of %d bytes", ErrMalformed, len(body))
	}
	cookie := body[9 : 9+CookieSize]
	var cn [16]byte
	copy(cn[:], cookie[:16])

	s.mu.Lock()
	if err := s.rotate(now, false); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	keys := s.cookieKeys(now)
	used := s.seen[cn] || s.seenCur[cn]
	s.mu.Unlock()
	if used {
		return nil, fmt.Errorf("%w: cookie used twice", ErrCookie)
	}

	var cookiePlain []byte
	for i := range keys {
		if p, ok := secretbox.Open(nil, cookie[16:], longNonce(prefixCookie, cookie[:16]), &keys[i]); ok {
			cookiePlain = p
			break
		}
	}
	if cookiePlain == nil {
		return nil, fmt.Errorf("%w: cookie does not open (forged, or its key was retired)", ErrCookie)
	}
	var clientT, serverTSec Key
	copy(clientT[:], cookiePlain[:32])
	copy(serverTSec[:], cookiePlain[32:])
	clear(cookiePlain)
	defer clear(serverTSec[:])

	a := &Accepted{}
	box.Precompute(&a.shared, &clientT, &serverTSec)
	n := binary.BigEndian.Uint64(body[9+CookieSize : 9+CookieSize+8])
	plain, ok := box.OpenAfterPrecomputation(nil, body[9+CookieSize+8:], shortNonce(prefixInitiate, n), &a.shared)
	if !ok {
		return nil, fmt.Errorf("%w: INITIATE", ErrBox)
	}
	if len(plain) < 32+16+80 {
		return nil, fmt.Errorf("%w: INITIATE box of %d bytes", ErrMalformed, len(plain))
	}
	copy(a.Client[:], plain[:32])
	// The vouch: Box[C',S](C->S').
	vouch, ok := box.Open(nil, plain[48:128], longNonce(prefixVouch, plain[32:48]), &a.Client, &serverTSec)
	if !ok {
		return nil, fmt.Errorf("%w: vouch does not open", ErrVouch)
	}
	if subtle.ConstantTimeCompare(vouch[:32], clientT[:]) != 1 || subtle.ConstantTimeCompare(vouch[32:], s.pub[:]) != 1 {
		return nil, fmt.Errorf("%w: vouch names another connection or server", ErrVouch)
	}
	a.Metadata = plain[128:]
	a.peerNonce = n

	// Mark the cookie used only now that the INITIATE proved to come from
	// its client: a forged one cannot burn a real client's cookie.
	s.mu.Lock()
	if s.seen[cn] || s.seenCur[cn] {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: cookie used twice", ErrCookie)
	}
	if len(s.seen)+len(s.seenCur) >= maxSeenCookies {
		if err := s.rotate(now, true); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		// Every outstanding cookie is void now, this one included.
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: replay cache full, cookie keys replaced", ErrCookie)
	}
	if s.seenCur == nil {
		s.seenCur = make(map[[16]byte]bool)
	}
	s.seenCur[cn] = true
	s.mu.Unlock()

	if s.authorize != nil {
		if err := s.authorize(a.Client); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrDenied, err)
		}
	}
	return a, nil
}

// Ready returns the READY command body carrying metadata and the Session
// for MESSAGEs. It may be called once.
func (a *Accepted) Ready(metadata []byte) ([]byte, *Session, error) {
	if a.done {
		return nil, nil, ErrState
	}
	a.done = true
	const nonce = 1
	b := make([]byte, 0, ReadyMinSize+len(metadata))
	b = append(b, cmdReady...)
	b = binary.BigEndian.AppendUint64(b, nonce)
	b = box.SealAfterPrecomputation(b, metadata, shortNonce(prefixReady, nonce), &a.shared)
	return b, &Session{shared: a.shared, sendPfx: prefixMsgS, recvPfx: prefixMsgC, nonce: nonce + 1, peerNonce: a.peerNonce}, nil
}
