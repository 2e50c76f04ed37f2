package integration

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/curve"
	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The hostile table for CURVE: one live zsend with CURVE on (listed client
// keys only) takes abuse of the CurveZMQ handshake and of MESSAGE boxing.
// After each case a normal CURVE fetch completes within 2s and goroutines
// and descriptors return to their baseline (as in TestHostilePeers).

type curveKeys struct {
	server, client, stranger *zcert.Cert
}

func newCurveHostileEnv(t *testing.T) (*hostileEnv, curveKeys) {
	k := curveKeys{server: newCert(t), client: newCert(t), stranger: newCert(t)}
	src := t.TempDir()
	small := writeRandom(t, src, "small.bin", 48<<10)
	ep, srv := serve(t, sender.Config{
		Paths:       []string{small},
		PeerTimeout: hPeerTimeout,
		Heartbeat:   hHeartbeat,
		MaxSessions: hMaxSessions,
		MaxRequests: hMaxRequests,
		Limits:      sender.Limits{WriteStallTimeout: hWriteStall, HandshakeTimeout: hHandshake},
		Curve:       curveServer(k.server, k.client),
	})
	h := &hostileEnv{srv: srv, ep: ep, addr: strings.TrimPrefix(ep, "tcp://"), small: small, curve: curveClient(k.server, k.client)}
	h.fetchOK(t, "warm-up")
	h.baseG, h.baseFD = math.MaxInt, math.MaxInt
	for range 10 {
		time.Sleep(50 * time.Millisecond)
		h.baseG = min(h.baseG, runtime.NumGoroutine())
		h.baseFD = min(h.baseFD, openFDs(t))
	}
	t.Logf("baseline: %d goroutines, %d file descriptors", h.baseG, h.baseFD)
	return h, k
}

// curveGreeting is a ZMTP 3.0 CURVE greeting, as-server 0.
func curveGreeting() []byte {
	g := zGreeting()
	copy(g[12:32], "CURVE\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	return g
}

// curvePeer is a raw CURVE client: the pure state machine over a TCP
// connection whose every byte the test chooses.
type curvePeer struct {
	*rawPeer
	cl   *curve.Client
	sess *curve.Session
}

// startCurve dials and exchanges greetings; it returns the peer ready to
// send HELLO.
func startCurve(t *testing.T, h *hostileEnv, server [32]byte, pub, sec [32]byte) *curvePeer {
	t.Helper()
	p := dialRaw(t, h.addr)
	cl, err := curve.NewClient(server, pub, sec, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.write(t, curveGreeting())
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	g := make([]byte, 64)
	if _, err := io.ReadFull(p.r, g); err != nil {
		t.Fatalf("server greeting: %v", err)
	}
	if !strings.HasPrefix(string(g[12:32]), "CURVE") || g[32] != 1 {
		t.Fatalf("server greeting % x", g)
	}
	return &curvePeer{rawPeer: p, cl: cl}
}

// command reads one command frame.
func (p *curvePeer) command(t *testing.T) []byte {
	t.Helper()
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fl, body, err := p.readFrame()
	if err != nil || fl&zFlagCommand == 0 {
		t.Fatalf("server command: flags %#x, %v", fl, err)
	}
	return body
}

// hello sends HELLO and takes the WELCOME.
func (p *curvePeer) hello(t *testing.T) {
	t.Helper()
	h, _ := p.cl.Hello()
	p.write(t, zFrame(zFlagCommand, h))
	if err := p.cl.Welcome(p.command(t)); err != nil {
		t.Fatalf("WELCOME: %v", err)
	}
}

func (p *curvePeer) initiate(t *testing.T) []byte {
	t.Helper()
	ini, err := p.cl.Initiate(zReady("Socket-Type", "DEALER")[2+6:])
	if err != nil {
		t.Fatal(err)
	}
	return ini
}

// handshake completes the handshake as a DEALER.
func (p *curvePeer) handshake(t *testing.T) {
	t.Helper()
	p.hello(t)
	p.write(t, zFrame(zFlagCommand, p.initiate(t)))
	_, sess, err := p.cl.Ready(p.command(t))
	if err != nil {
		t.Fatalf("READY: %v", err)
	}
	p.sess = sess
	p.c.SetReadDeadline(time.Time{})
}

// sealed returns the MESSAGE frames of a ZSND message.
func (p *curvePeer) sealed(m protocol.Message) [][]byte {
	frames := protocol.Encode(protocol.Version1, m)
	var out [][]byte
	for i, f := range frames {
		flags := byte(0)
		if i < len(frames)-1 {
			flags = curve.FlagMore
		}
		out = append(out, zFrame(0, p.sess.Seal(nil, append([]byte{flags}, f...))))
	}
	return out
}

func join(frames [][]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	return b
}

var zsndHello = &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20, PeerID: "hostile"}

// expectWelcome reads MESSAGEs until a ZSND WELCOME is opened.
func (p *curvePeer) expectWelcome(t *testing.T) {
	t.Helper()
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer p.c.SetReadDeadline(time.Time{})
	var frames [][]byte
	for {
		_, body, err := p.readFrame()
		if err != nil {
			t.Fatalf("reading MESSAGE: %v", err)
		}
		plain, err := p.sess.Open(nil, body)
		if err != nil {
			t.Fatalf("opening MESSAGE: %v", err)
		}
		frames = append(frames, plain[1:])
		if plain[0]&curve.FlagMore == 0 {
			break
		}
	}
	m, _, err := protocol.Decode(frames)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*protocol.Welcome); !ok {
		t.Fatalf("got %T, want WELCOME", m)
	}
}

func curveDelta(f func(), pick func(guard.Stats) int64) int64 { return guardDelta(f, pick) }

func TestHostileCurvePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile table")
	}
	h, k := newCurveHostileEnv(t)
	closedIn := hHandshake + 2*time.Second
	cases := []hostileCase{
		{"curve/null-client", func(t *testing.T, h *hostileEnv) {
			p := dialRaw(t, h.addr)
			p.write(t, append(zGreeting(), zReady("Socket-Type", "DEALER")...))
			p.closedByServer(t, closedIn, "NULL client")
		}},
		{"curve/plain-client", func(t *testing.T, h *hostileEnv) {
			g := zGreeting()
			copy(g[12:32], "PLAIN\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
			p := dialRaw(t, h.addr)
			p.write(t, g)
			p.closedByServer(t, closedIn, "PLAIN client")
		}},
		{"curve/curve-client-vs-null-server", func(t *testing.T, h *hostileEnv) {
			// Our CURVE receiver against a NULL zsend: refused in the
			// handshake, final at once (exit code 8 in zrecv).
			ctx, cancel := context.WithCancel(context.Background())
			srv, err := sender.Listen(ctx, sender.Config{Endpoint: "tcp://127.0.0.1:0", Paths: []string{h.small}})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx) }()
			defer func() { cancel(); <-done }() // gone before the baseline check
			ep := srv.Endpoint()
			_, err = fetch(t, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Curve: h.curve, Timeout: 10 * time.Second}, "small.bin")
			if !errors.Is(err, receiver.ErrServerKey) {
				t.Fatalf("CURVE client vs NULL server: %v", err)
			}
		}},
		{"curve/truncated-hello", func(t *testing.T, h *hostileEnv) {
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			hello, _ := p.cl.Hello()
			p.write(t, zFrame(zFlagCommand, hello)[:100])
			p.closedByServer(t, closedIn, "half a HELLO")
		}},
		{"curve/malformed-hello", func(t *testing.T, h *hostileEnv) {
			mk := func(mut func([]byte) []byte) []byte {
				cl, _ := curve.NewClient(k.server.Public, k.client.Public, k.client.Secret, rand.Reader)
				b, _ := cl.Hello()
				return mut(b)
			}
			inputs := map[string][]byte{
				"short":       zFrame(zFlagCommand, mk(func(b []byte) []byte { return b[:199] })),
				"long":        zFrame(zFlagCommand, mk(func(b []byte) []byte { return append(b, 0) })),
				"version 2":   zFrame(zFlagCommand, mk(func(b []byte) []byte { b[6] = 2; return b })),
				"other name":  zFrame(zFlagCommand, mk(func(b []byte) []byte { copy(b, "\x05HELLP"); return b })),
				"box flipped": zFrame(zFlagCommand, mk(func(b []byte) []byte { b[150] ^= 1; return b })),
				"data frame":  zFrame(0, mk(func(b []byte) []byte { return b })),
				"random 200":  zFrame(zFlagCommand, randBytes(200)),
				"wrong srv key": zFrame(zFlagCommand, func() []byte {
					cl, _ := curve.NewClient(k.stranger.Public, k.client.Public, k.client.Secret, rand.Reader)
					b, _ := cl.Hello()
					return b
				}()),
			}
			for name, in := range inputs {
				p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
				p.write(t, in)
				p.closedByServer(t, closedIn, name)
			}
		}},
		{"curve/oversized-commands", func(t *testing.T, h *hostileEnv) {
			huge := []byte{zFlagCommand | zFlagLong, 0x40, 0, 0, 0, 0, 0, 0, 0} // 2^62 bytes
			// As HELLO.
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.write(t, huge)
			p.closedByServer(t, closedIn, "HELLO claiming 2^62 bytes")
			// As INITIATE, after a good HELLO: 100 KiB of metadata.
			p = startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.hello(t)
			p.write(t, zFrame(zFlagCommand, append([]byte("\x08INITIATE"), make([]byte, 100<<10)...)))
			p.closedByServer(t, closedIn, "INITIATE of 100 KiB")
			// As MESSAGE, after the handshake.
			p = startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.handshake(t)
			p.write(t, []byte{zFlagLong, 0x40, 0, 0, 0, 0, 0, 0, 0})
			p.closedByServer(t, closedIn, "MESSAGE claiming 2^62 bytes")
		}},
		{"curve/hello-flood", func(t *testing.T, h *hostileEnv) {
			// Many connections each send a valid HELLO (a fresh transient
			// key every time) and never INITIATE; the server keeps no
			// state for them and drops them at the handshake timeout.
			// A fetch runs in the middle.
			var wait func()
			for i := range 300 {
				p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
				hello, _ := p.cl.Hello()
				p.write(t, zFrame(zFlagCommand, hello))
				if i == 100 {
					wait = h.fetchDuring(t)
				}
			}
			wait()
			// And many HELLOs on one connection: the second is not an
			// INITIATE.
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			var flood []byte
			for range 50 {
				cl, _ := curve.NewClient(k.server.Public, k.client.Public, k.client.Secret, rand.Reader)
				b, _ := cl.Hello()
				flood = append(flood, zFrame(zFlagCommand, b)...)
			}
			p.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			p.c.Write(flood)
			p.closedByServer(t, closedIn, "HELLO flood on one connection")
		}},
		{"curve/unlisted-client-key", func(t *testing.T, h *hostileEnv) {
			n := curveDelta(func() {
				p := startCurve(t, h, k.server.Public, k.stranger.Public, k.stranger.Secret)
				p.hello(t)
				p.write(t, zFrame(zFlagCommand, p.initiate(t)))
				body := p.command(t)
				if _, _, err := p.cl.Ready(body); !errors.Is(err, curve.ErrPeer) {
					t.Fatalf("unlisted key: %v, want an ERROR command", err)
				}
				p.closedByServer(t, closedIn, "unlisted key")
			}, func(s guard.Stats) int64 { return s.CurveDenied })
			if n != 1 {
				t.Fatalf("CurveDenied grew by %d", n)
			}
			if h.srv.Stats().Sessions != 0 {
				t.Fatal("a refused key got a session")
			}
		}},
		{"curve/listed-key-wrong-vouch", func(t *testing.T, h *hostileEnv) {
			// Claims the listed client's public key without its secret.
			p := startCurve(t, h, k.server.Public, k.client.Public, k.stranger.Secret)
			p.hello(t)
			p.write(t, zFrame(zFlagCommand, p.initiate(t)))
			p.closedByServer(t, closedIn, "wrong vouch")
		}},
		{"curve/message-before-initiate", func(t *testing.T, h *hostileEnv) {
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.hello(t)
			p.write(t, zFrame(0, append([]byte("\x07MESSAGE"), randBytes(60)...)))
			p.closedByServer(t, closedIn, "MESSAGE before INITIATE")
		}},
		{"curve/forged-cookie", func(t *testing.T, h *hostileEnv) {
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.hello(t)
			ini := p.initiate(t)
			copy(ini[9:9+curve.CookieSize], randBytes(curve.CookieSize))
			p.write(t, zFrame(zFlagCommand, ini))
			p.closedByServer(t, closedIn, "forged cookie")
		}},
		{"curve/replayed-cookie", func(t *testing.T, h *hostileEnv) {
			// A complete, valid HELLO+INITIATE recorded from one
			// connection and replayed on another: the cookie was used.
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			hello, _ := p.cl.Hello()
			p.write(t, zFrame(zFlagCommand, hello))
			if err := p.cl.Welcome(p.command(t)); err != nil {
				t.Fatal(err)
			}
			ini := p.initiate(t)
			p.write(t, zFrame(zFlagCommand, ini))
			p.command(t) // READY
			q := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			q.write(t, append(zFrame(zFlagCommand, hello), zFrame(zFlagCommand, ini)...))
			q.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			q.readFrame() // the WELCOME to the replayed HELLO
			q.closedByServer(t, closedIn, "replayed INITIATE")
		}},
		{"curve/expired-cookie-of-another-server", func(t *testing.T, h *hostileEnv) {
			// A cookie made under a cookie key this server does not hold
			// (a restarted server: all its keys are new), with a box that
			// is otherwise valid for the connection. Expiry by time is
			// unit-tested with an injected clock (internal/curve).
			other := curve.NewServer(k.server.Public, k.server.Secret, nil, rand.Reader)
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			hello, _ := p.cl.Hello()
			p.write(t, zFrame(zFlagCommand, hello))
			p.command(t) // this server's WELCOME, ignored
			w, err := other.Welcome(hello, time.Now().Add(-time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.cl.Welcome(w); err != nil {
				t.Fatal(err)
			}
			p.write(t, zFrame(zFlagCommand, p.initiate(t)))
			p.closedByServer(t, closedIn, "cookie of another server")
		}},
		{"curve/replayed-message", func(t *testing.T, h *hostileEnv) {
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.handshake(t)
			msg := join(p.sealed(zsndHello))
			p.write(t, msg)
			p.expectWelcome(t)
			n := curveDelta(func() {
				p.write(t, msg)
				p.closedByServer(t, closedIn, "replayed MESSAGE")
			}, func(s guard.Stats) int64 { return s.CurveErrors })
			if n < 1 {
				t.Fatal("no CURVE error counted")
			}
		}},
		{"curve/reordered-message", func(t *testing.T, h *hostileEnv) {
			p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
			p.handshake(t)
			frames := p.sealed(zsndHello)
			p.write(t, append(frames[1], frames[0]...))
			p.closedByServer(t, closedIn, "reordered MESSAGEs")
		}},
		{"curve/tampered-and-truncated-message", func(t *testing.T, h *hostileEnv) {
			for name, mut := range map[string]func([]byte) []byte{
				"flipped box":    func(b []byte) []byte { b[len(b)-1] ^= 1; return b },
				"flipped nonce":  func(b []byte) []byte { b[2+15] ^= 1; return b },
				"truncated":      func(b []byte) []byte { b[1] = 20; return b[:22] },
				"more flag":      func(b []byte) []byte { b[0] |= zFlagMore; return b },
				"wrong name":     func(b []byte) []byte { copy(b[2:], "\x07MASSAGE"); return b },
				"server's nonce": func(b []byte) []byte { return b }, // placeholder: replaced below
			} {
				p := startCurve(t, h, k.server.Public, k.client.Public, k.client.Secret)
				p.handshake(t)
				f := p.sealed(&protocol.Ping{Token: 1})[0]
				if name == "server's nonce" {
					// A frame boxed with the server-to-client prefix.
					f = zFrame(0, append([]byte("\x07MESSAGE"), append(binary.BigEndian.AppendUint64(nil, 9), randBytes(40)...)...))
				}
				p.write(t, mut(f))
				p.closedByServer(t, closedIn, name)
			}
		}},
	}
	if len(cases) < 12 {
		t.Fatalf("only %d CURVE hostile cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			func() {
				defer closePeers()
				c.run(t, h)
			}()
			h.fetchOK(t, "after "+c.name)
			h.settle(t)
		})
	}
}
