package curve

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/box"
)

type pair struct{ pub, sec Key }

func newPair(t testing.TB) pair {
	pub, sec, err := box.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pair{*pub, *sec}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type rig struct {
	srv          *Server
	server, cl   pair
	client       *Client
	hello, welc  []byte
	init         []byte
	acc          *Accepted
	ready        []byte
	cSess, sSess *Session
}

// handshake runs a full handshake, failing the test on any error.
func handshake(t testing.TB, srv *Server, server, cl pair, now time.Time) *rig {
	t.Helper()
	r := &rig{srv: srv, server: server, cl: cl}
	var err error
	if r.client, err = NewClient(server.pub, cl.pub, cl.sec, rand.Reader); err != nil {
		t.Fatal(err)
	}
	if r.hello, err = r.client.Hello(); err != nil {
		t.Fatal(err)
	}
	if r.welc, err = srv.Welcome(r.hello, now); err != nil {
		t.Fatal(err)
	}
	if err = r.client.Welcome(r.welc); err != nil {
		t.Fatal(err)
	}
	if r.init, err = r.client.Initiate([]byte("\x0bSocket-Type\x00\x00\x00\x06DEALER")); err != nil {
		t.Fatal(err)
	}
	if r.acc, err = srv.Initiate(r.init, now); err != nil {
		t.Fatal(err)
	}
	if r.ready, r.sSess, err = r.acc.Ready([]byte("\x0bSocket-Type\x00\x00\x00\x06ROUTER")); err != nil {
		t.Fatal(err)
	}
	var md []byte
	if md, r.cSess, err = r.client.Ready(r.ready); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(md, []byte("ROUTER")) || !bytes.Contains(r.acc.Metadata, []byte("DEALER")) {
		t.Fatalf("metadata not carried: %q / %q", md, r.acc.Metadata)
	}
	return r
}

func TestSizes(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	r := handshake(t, NewServer(server.pub, server.sec, nil, rand.Reader), server, cl, t0)
	if len(r.hello) != HelloSize || len(r.welc) != WelcomeSize {
		t.Fatalf("HELLO %d, WELCOME %d bytes", len(r.hello), len(r.welc))
	}
	// Anti-amplification: the server never answers with more than it got.
	if len(r.welc) >= len(r.hello) {
		t.Fatal("WELCOME is not smaller than HELLO")
	}
	if !bytes.Equal(r.hello[8:80], make([]byte, 72)) {
		t.Fatal("HELLO padding is not 72 zero bytes")
	}
	if len(r.init) != InitiateMinSize+len("\x0bSocket-Type\x00\x00\x00\x06DEALER") {
		t.Fatalf("INITIATE %d bytes", len(r.init))
	}
}

func TestMessagesBothWays(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	var authorized Key
	srv := NewServer(server.pub, server.sec, func(k Key) error { authorized = k; return nil }, rand.Reader)
	r := handshake(t, srv, server, cl, t0)
	if authorized != cl.pub || r.acc.Client != cl.pub {
		t.Fatal("authorize did not see the client's long-term key")
	}
	for i, msg := range [][]byte{{0}, append([]byte{FlagMore}, "hello"...), append([]byte{0}, make([]byte, 100000)...)} {
		c := r.cSess.Seal(nil, msg)
		if len(c) != SealedSize(len(msg)-1) {
			t.Fatalf("sealed size %d for %d", len(c), len(msg)-1)
		}
		if bytes.Contains(c, []byte("hello")) {
			t.Fatal("plaintext visible in MESSAGE")
		}
		got, err := r.sSess.Open(nil, c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("client->server %d: %v", i, err)
		}
		s := r.sSess.Seal(nil, msg)
		got, err = r.cSess.Open([]byte("prefix"), s)
		if err != nil || !bytes.Equal(got[6:], msg) {
			t.Fatalf("server->client %d: %v", i, err)
		}
		// A session does not open its own messages (different prefixes).
		if _, err := r.cSess.Open(nil, c); err == nil {
			t.Fatal("a client opened its own MESSAGE")
		}
	}
}

func TestReplayAndReorder(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	r := handshake(t, NewServer(server.pub, server.sec, nil, rand.Reader), server, cl, t0)
	m1 := r.cSess.Seal(nil, []byte{0, 1})
	m2 := r.cSess.Seal(nil, []byte{0, 2})
	m3 := r.cSess.Seal(nil, []byte{0, 3})
	if _, err := r.sSess.Open(nil, m2); err != nil { // a gap is fine
		t.Fatal(err)
	}
	if _, err := r.sSess.Open(nil, m1); !errors.Is(err, ErrNonce) {
		t.Fatalf("reordered: %v, want ErrNonce", err)
	}
	if _, err := r.sSess.Open(nil, m2); !errors.Is(err, ErrNonce) {
		t.Fatalf("replayed: %v, want ErrNonce", err)
	}
	if _, err := r.sSess.Open(nil, m3); err != nil {
		t.Fatal(err)
	}
	// A replayed INITIATE nonce cannot be reused as a MESSAGE either.
	if _, err := r.sSess.Open(nil, m3); !errors.Is(err, ErrNonce) {
		t.Fatal(err)
	}
}

func TestTampered(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, nil, rand.Reader)
	r := handshake(t, srv, server, cl, t0)
	m := r.cSess.Seal(nil, []byte{0, 'x', 'y'})
	for i := range m {
		bad := bytes.Clone(m)
		bad[i] ^= 0x40
		if _, err := r.sSess.Open(nil, bad); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	if _, err := r.sSess.Open(nil, m[:MessageOverhead-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated MESSAGE: %v", err)
	}
	// Flags with reserved bits are refused even inside a valid box.
	if _, err := r.sSess.Open(nil, r.cSess.Seal(nil, []byte{0x80, 1})); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reserved flags: %v", err)
	}

	// Each handshake command, tampered anywhere, is refused.
	for i := range r.hello {
		bad := bytes.Clone(r.hello)
		bad[i] ^= 1
		if i >= 8 && i < 80 { // padding is not authenticated, by the RFC
			continue
		}
		if _, err := srv.Welcome(bad, t0); err == nil {
			t.Fatalf("HELLO byte %d flipped: accepted", i)
		}
	}
	for _, i := range []int{0, 9, 9 + 50, 9 + CookieSize + 2, 9 + CookieSize + 8 + 20, -1} {
		c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
		h, _ := c.Hello()
		w, err := srv.Welcome(h, t0)
		if err != nil {
			t.Fatal(err)
		}
		c.Welcome(w)
		in, _ := c.Initiate(nil)
		if i < 0 {
			i = len(in) - 1
		}
		in[i] ^= 1
		if _, err := srv.Initiate(in, t0); err == nil {
			t.Fatalf("INITIATE byte %d flipped: accepted", i)
		}
	}
	for i := range r.welc {
		c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
		h, _ := c.Hello()
		w, _ := srv.Welcome(h, t0)
		w[i] ^= 1
		if err := c.Welcome(w); err == nil {
			t.Fatalf("WELCOME byte %d flipped: accepted", i)
		}
	}
}

func TestTruncatedAndOversized(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, nil, rand.Reader)
	r := handshake(t, srv, server, cl, t0)
	for _, h := range [][]byte{r.hello[:HelloSize-1], append(bytes.Clone(r.hello), 0), nil, []byte("\x05HELLO")} {
		if _, err := srv.Welcome(h, t0); !errors.Is(err, ErrMalformed) {
			t.Fatalf("HELLO of %d bytes: %v", len(h), err)
		}
	}
	if _, err := srv.Initiate(r.init[:InitiateMinSize-1], t0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short INITIATE: %v", err)
	}
	c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	c.Hello()
	if err := c.Welcome(r.welc[:WelcomeSize-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short WELCOME: %v", err)
	}
	bad := bytes.Clone(r.hello)
	bad[6] = 2
	if _, err := srv.Welcome(bad, t0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("HELLO version 2: %v", err)
	}
}

func TestWrongServerKey(t *testing.T) {
	server, other, cl := newPair(t), newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, nil, rand.Reader)
	// The client pinned another key: the real server cannot open HELLO.
	c, _ := NewClient(other.pub, cl.pub, cl.sec, rand.Reader)
	h, _ := c.Hello()
	if _, err := srv.Welcome(h, t0); !errors.Is(err, ErrBox) {
		t.Fatalf("HELLO to the wrong key: %v", err)
	}
	// A man in the middle with its own key cannot produce a WELCOME the
	// client accepts.
	mitm := NewServer(other.pub, other.sec, nil, rand.Reader)
	c2, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	h2, _ := c2.Hello()
	if _, err := mitm.Welcome(h2, t0); err == nil {
		t.Fatal("an impostor opened a HELLO meant for another key")
	}
	// Even a WELCOME boxed with the impostor's key fails at the client.
	c3, _ := NewClient(other.pub, cl.pub, cl.sec, rand.Reader)
	h3, _ := c3.Hello()
	w3, _ := mitm.Welcome(h3, t0)
	c4, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	c4.Hello()
	if err := c4.Welcome(w3); !errors.Is(err, ErrServerKey) {
		t.Fatalf("foreign WELCOME: %v, want ErrServerKey", err)
	}
	// An ERROR instead of WELCOME is reported as such.
	c5, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	c5.Hello()
	var pe *PeerError
	if err := c5.Welcome(ErrorCommand("go away")); !errors.As(err, &pe) || pe.Reason != "go away" {
		t.Fatalf("ERROR: %v", err)
	}
}

func TestWrongVouch(t *testing.T) {
	server, cl, other := newPair(t), newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, nil, rand.Reader)
	// The client claims the long-term key cl.pub but signs with another
	// secret: the vouch does not open.
	c, _ := NewClient(server.pub, cl.pub, other.sec, rand.Reader)
	h, _ := c.Hello()
	w, _ := srv.Welcome(h, t0)
	if err := c.Welcome(w); err != nil {
		t.Fatal(err)
	}
	in, _ := c.Initiate(nil)
	if _, err := srv.Initiate(in, t0); !errors.Is(err, ErrVouch) {
		t.Fatalf("wrong vouch: %v, want ErrVouch", err)
	}
	// A vouch lifted from another connection names another C'.
	r := handshake(t, srv, server, cl, t0)
	c2, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	h2, _ := c2.Hello()
	w2, _ := srv.Welcome(h2, t0)
	c2.Welcome(w2)
	// Build an INITIATE for c2's connection carrying r's vouch.
	plain, ok := box.OpenAfterPrecomputation(nil, r.init[9+CookieSize+8:], shortNonce(prefixInitiate, 2), &r.client.shared)
	if !ok {
		t.Fatal("cannot open own INITIATE")
	}
	forged := append([]byte(nil), cmdInitiate...)
	forged = append(forged, c2.cookie...)
	forged = append(forged, 0, 0, 0, 0, 0, 0, 0, 2)
	forged = box.SealAfterPrecomputation(forged, plain, shortNonce(prefixInitiate, 2), &c2.shared)
	if _, err := srv.Initiate(forged, t0); !errors.Is(err, ErrVouch) {
		t.Fatalf("lifted vouch: %v, want ErrVouch", err)
	}
}

func TestDenied(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, func(Key) error { return errors.New("not listed") }, rand.Reader)
	c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	h, _ := c.Hello()
	w, _ := srv.Welcome(h, t0)
	c.Welcome(w)
	in, _ := c.Initiate(nil)
	if _, err := srv.Initiate(in, t0); !errors.Is(err, ErrDenied) {
		t.Fatalf("denied client: %v", err)
	}
}

func TestCookies(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	srv := NewServer(server.pub, server.sec, nil, rand.Reader)
	start := func(now time.Time) []byte {
		c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
		h, _ := c.Hello()
		w, err := srv.Welcome(h, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Welcome(w); err != nil {
			t.Fatal(err)
		}
		in, _ := c.Initiate(nil)
		return in
	}
	// Replay: the same INITIATE twice.
	in := start(t0)
	if _, err := srv.Initiate(in, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Initiate(in, t0.Add(time.Second)); !errors.Is(err, ErrCookie) {
		t.Fatalf("replayed INITIATE: %v, want ErrCookie", err)
	}
	// A cookie survives one rotation...
	in = start(t0.Add(10 * time.Second))
	srv.Welcome(mustHello(t, server, cl), t0.Add(CookieLifetime+time.Second)) // rotates
	if _, err := srv.Initiate(in, t0.Add(CookieLifetime+2*time.Second)); err != nil {
		t.Fatalf("cookie after one rotation: %v", err)
	}
	// ...and the replay cache survives it too.
	if _, err := srv.Initiate(in, t0.Add(CookieLifetime+3*time.Second)); !errors.Is(err, ErrCookie) {
		t.Fatalf("replay after rotation: %v", err)
	}
	// Expired: two lifetimes later.
	in = start(t0.Add(CookieLifetime + 5*time.Second))
	if _, err := srv.Initiate(in, t0.Add(4*CookieLifetime)); !errors.Is(err, ErrCookie) {
		t.Fatalf("expired cookie: %v, want ErrCookie", err)
	}
	// Forged: a cookie from another server.
	other := NewServer(server.pub, server.sec, nil, rand.Reader)
	c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	h, _ := c.Hello()
	w, _ := other.Welcome(h, t0)
	c.Welcome(w)
	in, _ = c.Initiate(nil)
	if _, err := srv.Initiate(in, t0); !errors.Is(err, ErrCookie) {
		t.Fatalf("foreign cookie: %v, want ErrCookie", err)
	}
}

func mustHello(t *testing.T, server, cl pair) []byte {
	c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	h, err := c.Hello()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestOrder(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	c, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
	if _, err := c.Initiate(nil); !errors.Is(err, ErrState) {
		t.Fatal(err)
	}
	if _, _, err := c.Ready(nil); !errors.Is(err, ErrState) {
		t.Fatal(err)
	}
	c.Hello()
	if _, err := c.Hello(); !errors.Is(err, ErrState) {
		t.Fatal(err)
	}
}

// Fuzz targets: every decoder, seeded with valid encodings.

func fuzzRig(f *testing.F) (*rig, pair, pair) {
	server, cl := newPair(f), newPair(f)
	return handshake(f, NewServer(server.pub, server.sec, nil, rand.Reader), server, cl, t0), server, cl
}

func FuzzWelcome(f *testing.F) { // server side: HELLO decoder
	r, server, _ := fuzzRig(f)
	f.Add(r.hello)
	f.Fuzz(func(t *testing.T, b []byte) {
		srv := NewServer(server.pub, server.sec, nil, rand.Reader)
		srv.Welcome(b, t0)
	})
}

func FuzzClientWelcome(f *testing.F) {
	r, _, _ := fuzzRig(f)
	f.Add(r.welc)
	f.Add(ErrorCommand("x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := *r.client
		c.step = clientHelloSent
		c.Welcome(b)
	})
}

func FuzzInitiate(f *testing.F) {
	r, _, _ := fuzzRig(f)
	f.Add(r.init)
	f.Fuzz(func(t *testing.T, b []byte) {
		r.srv.Initiate(b, t0)
	})
}

func FuzzClientReady(f *testing.F) {
	r, _, _ := fuzzRig(f)
	f.Add(r.ready)
	f.Add(ErrorCommand("denied"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := *r.client
		c.step = clientInitiated
		c.Ready(b)
	})
}

func FuzzOpen(f *testing.F) {
	r, _, _ := fuzzRig(f)
	f.Add(r.cSess.Seal(nil, []byte{0, 1, 2, 3}))
	f.Add(r.cSess.Seal(nil, []byte{FlagMore}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := *r.sSess
		plain, err := s.Open(nil, b)
		if err == nil && (len(plain) != len(b)-MessageOverhead+1) {
			t.Fatalf("opened %d bytes from %d", len(plain), len(b))
		}
	})
}

// A cookie is accepted for less than two cookie lifetimes after its key was
// made, whatever happens in between.
func TestCookieLifetimeBound(t *testing.T) {
	server, cl := newPair(t), newPair(t)
	for _, c := range []struct {
		after time.Duration
		ok    bool
	}{{time.Second, true}, {CookieLifetime + time.Second, true}, {2*CookieLifetime - time.Second, true}, {2*CookieLifetime + time.Second, false}, {time.Hour, false}} {
		srv := NewServer(server.pub, server.sec, nil, rand.Reader)
		cli, _ := NewClient(server.pub, cl.pub, cl.sec, rand.Reader)
		h, _ := cli.Hello()
		w, _ := srv.Welcome(h, t0)
		cli.Welcome(w)
		in, _ := cli.Initiate(nil)
		_, err := srv.Initiate(in, t0.Add(c.after))
		if (err == nil) != c.ok {
			t.Errorf("INITIATE %v after the cookie: %v, want ok=%v", c.after, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrCookie) {
			t.Errorf("%v: %v, want ErrCookie", c.after, err)
		}
	}
}
