package guard

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"golang.org/x/crypto/nacl/box"

	"github.com/zsend/zsend/internal/curve"
)

type keyPair struct{ pub, sec [32]byte }

func genPair(t testing.TB) keyPair {
	pub, sec, err := box.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{*pub, *sec}
}

func curveServerCtx(t testing.TB, server keyPair, authorize func([32]byte) error) context.Context {
	c := testConfig()
	c.CurveServer = &CurveServer{PublicKey: server.pub, SecretKey: server.sec, Authorize: authorize}
	ctx, cancel := context.WithCancel(WithConfig(context.Background(), c))
	t.Cleanup(cancel)
	return ctx
}

func curveClientCtx(t testing.TB, serverPub [32]byte, client keyPair) context.Context {
	c := testConfig()
	c.CurveClient = &CurveClient{ServerKey: serverPub, PublicKey: client.pub, SecretKey: client.sec}
	ctx, cancel := context.WithCancel(WithConfig(context.Background(), c))
	t.Cleanup(cancel)
	return ctx
}

func curveEndpoints(t *testing.T) map[string]string {
	ipc, err := Endpoint("ipc://" + filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"tcp": guardedTCP(t), "ipc": ipc}
}

func TestCurveRoundTrip(t *testing.T) {
	for name, ep := range curveEndpoints(t) {
		t.Run(name, func(t *testing.T) {
			server, client := genPair(t), genPair(t)
			var seen [32]byte
			sctx := curveServerCtx(t, server, func(k [32]byte) error { seen = k; return nil })
			router, ep := startRouter(t, sctx, ep)
			dealer := startDealer(t, curveClientCtx(t, server.pub, client), ep, "d1")
			id := string(client.pub[:]) + "d1" // the guard prefixes a CURVE peer's identity with its key
			roundTrip(t, router, dealer, id, 5*time.Second)
			if seen != client.pub {
				t.Fatal("Authorize did not see the client's key")
			}
			// An empty last frame is delivered at once (nothing follows
			// it to push it out).
			dealer.Send(zmq4.NewMsgFrom([]byte("e"), nil))
			if msg, err := recvTimeout(router, 2*time.Second); err != nil || len(msg.Frames) != 3 || len(msg.Frames[2]) != 0 {
				t.Fatalf("empty last frame: %q, %v", msg.Frames, err)
			}
			router.Send(zmq4.NewMsgFrom([]byte(id), nil))
			if msg, err := recvTimeout(dealer, 2*time.Second); err != nil || len(msg.Frames) != 1 || len(msg.Frames[0]) != 0 {
				t.Fatalf("empty message to the dealer: %q, %v", msg.Frames, err)
			}
			// Multipart and large frames, both ways.
			big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
			if err := dealer.Send(zmq4.NewMsgFrom([]byte("a"), nil, big)); err != nil {
				t.Fatal(err)
			}
			msg, err := recvTimeout(router, 5*time.Second)
			if err != nil || len(msg.Frames) != 4 || !bytes.Equal(msg.Frames[3], big) || len(msg.Frames[2]) != 0 {
				t.Fatalf("router got %d frames, %v", len(msg.Frames), err)
			}
			go func() { // concurrently: the test's write stall timeout is short
				for i := range 50 {
					router.Send(zmq4.NewMsgFrom([]byte(id), []byte(fmt.Sprint(i)), big[:i*1000]))
				}
			}()
			for i := range 50 {
				msg, err := recvTimeout(dealer, 5*time.Second)
				if err != nil || string(msg.Frames[0]) != fmt.Sprint(i) || !bytes.Equal(msg.Frames[1], big[:i*1000]) {
					t.Fatalf("message %d: %v", i, err)
				}
			}
		})
	}
}

func TestCurveWireIsEncrypted(t *testing.T) {
	server, client := genPair(t), genPair(t)
	router, ep := startRouter(t, curveServerCtx(t, server, nil), guardedTCP(t))
	// A relay that records both directions.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var rec recorder
	go rec.relay(ln, ep[len(SchemeTCP)+3:])
	dealer := startDealer(t, curveClientCtx(t, server.pub, client), SchemeTCP+"://"+ln.Addr().String(), "secret-identity")
	secret := []byte("the database password is hunter2")
	dealer.Send(zmq4.NewMsgFrom(secret))
	msg, err := recvTimeout(router, 5*time.Second)
	if err != nil || !bytes.Equal(msg.Frames[1], secret) {
		t.Fatalf("router got %q, %v", msg.Frames, err)
	}
	router.Send(zmq4.NewMsgFrom(append(client.pub[:], "secret-identity"...), secret))
	if _, err := recvTimeout(dealer, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	wire := rec.bytes()
	for _, s := range []string{"hunter2", "secret-identity", "DEALER", "ROUTER", "Socket-Type"} {
		if bytes.Contains(wire, []byte(s)) {
			t.Errorf("%q in plaintext on the wire", s)
		}
	}
	if !bytes.Contains(wire, []byte("CURVE")) || !bytes.Contains(wire, []byte("\x07MESSAGE")) {
		t.Error("no CURVE greeting or MESSAGE on the wire")
	}
}

func TestCurveMechanismMismatch(t *testing.T) {
	server, client := genPair(t), genPair(t)
	// NULL client, CURVE server.
	_, ep := startRouter(t, curveServerCtx(t, server, nil), guardedTCP(t))
	d := zmq4.NewDealer(context.Background(), zmq4.WithLogger(quiet))
	defer d.Close()
	if err := d.Dial(ep); err == nil || !errors.Is(err, ErrMechanism) {
		t.Fatalf("NULL dealer to CURVE router: %v, want ErrMechanism", err)
	}
	// CURVE client, NULL server.
	ctx := WithConfig(context.Background(), testConfig())
	_, ep2 := startRouter(t, ctx, guardedTCP(t))
	d2 := zmq4.NewDealer(curveClientCtx(t, server.pub, client), zmq4.WithLogger(quiet))
	defer d2.Close()
	if err := d2.Dial(ep2); err == nil || !errors.Is(err, ErrMechanism) {
		t.Fatalf("CURVE dealer to NULL router: %v, want ErrMechanism", err)
	}
	eventually(t, 2*time.Second, "the NULL router counts a handshake failure", func() bool {
		return StatsFrom(ctx).HandshakeFailures >= 1
	})
}

func TestCurveWrongServerKey(t *testing.T) {
	server, other, client := genPair(t), genPair(t), genPair(t)
	_, ep := startRouter(t, curveServerCtx(t, server, nil), guardedTCP(t))
	d := zmq4.NewDealer(curveClientCtx(t, other.pub, client), zmq4.WithLogger(quiet))
	defer d.Close()
	err := d.Dial(ep)
	if !errors.Is(err, ErrServerKey) {
		t.Fatalf("dial with the wrong server key: %v, want ErrServerKey", err)
	}
}

func TestCurveClientRefused(t *testing.T) {
	server, client := genPair(t), genPair(t)
	sctx := curveServerCtx(t, server, func([32]byte) error { return errors.New("not listed") })
	_, ep := startRouter(t, sctx, guardedTCP(t))
	d := zmq4.NewDealer(curveClientCtx(t, server.pub, client), zmq4.WithLogger(quiet))
	defer d.Close()
	if err := d.Dial(ep); !errors.Is(err, ErrClientRefused) {
		t.Fatalf("refused client: %v, want ErrClientRefused", err)
	}
	if StatsFrom(sctx).CurveDenied != 1 {
		t.Fatalf("stats %+v", StatsFrom(sctx))
	}
}

// A raw CURVE client (the pure state machine over a socket) for hostile
// tests: it completes the handshake and then sends what it likes.
func rawCurveClient(t *testing.T, ep string, server [32]byte, client keyPair) (net.Conn, *curve.Session) {
	t.Helper()
	c := rawDial(t, ep)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cl, _ := curve.NewClient(server, client.pub, client.sec, rand.Reader)
	c.Write(curveClientGreeting[:])
	g := make([]byte, greetingLen)
	if _, err := ioReadFull(c, g); err != nil {
		t.Fatal(err)
	}
	h, _ := cl.Hello()
	c.Write(appendFrame(nil, flagCommand, h))
	w, err := readCommand(c, 512)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Welcome(w); err != nil {
		t.Fatal(err)
	}
	ini, _ := cl.Initiate([]byte("\x0bSocket-Type\x00\x00\x00\x06DEALER\x08Identity\x00\x00\x00\x03raw"))
	c.Write(appendFrame(nil, flagCommand, ini))
	r, err := readCommand(c, 4096)
	if err != nil {
		t.Fatal(err)
	}
	_, sess, err := cl.Ready(r)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c, sess
}

func TestCurveReplayedMessageCloses(t *testing.T) {
	server, client := genPair(t), genPair(t)
	sctx := curveServerCtx(t, server, nil)
	router, ep := startRouter(t, sctx, guardedTCP(t))
	c, sess := rawCurveClient(t, ep, server.pub, client)
	m1 := appendFrame(nil, 0, sess.Seal(nil, []byte{0, 'h', 'i'}))
	c.Write(m1)
	msg, err := recvTimeout(router, 5*time.Second)
	if err != nil || string(msg.Frames[1]) != "hi" {
		t.Fatalf("router got %q, %v", msg.Frames, err)
	}
	c.Write(m1) // replayed
	expectClosed(t, c, 2*time.Second)
	expectStats(t, sctx, func(s Stats) bool { return s.CurveErrors == 1 })
}

func ioReadFull(c net.Conn, b []byte) (int, error) { return io.ReadFull(c, b) }

// recorder relays one TCP connection and keeps every byte seen.
type recorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recorder) relay(ln net.Listener, target string) {
	for {
		a, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", target)
		if err != nil {
			a.Close()
			return
		}
		go func() { io.Copy(io.MultiWriter(b, r), a); b.Close() }()
		go func() { io.Copy(io.MultiWriter(a, r), b); a.Close() }()
	}
}

// TestBufClasses: getBuf gives a buffer of at least the size asked, at
// most a quarter (or 4 KiB) larger; putBuf keeps exactly those buffers.
func TestBufClasses(t *testing.T) {
	prev := 0
	for _, n := range []int{0, 1, 4096, 4097, 5120, 5121, 65536, 1<<20 + 42, 1<<20 + 1<<18, 1<<20 + 1<<18 + 1, 16 << 20} {
		i, size := bufClass(n)
		if size < n || (n > minBuf && size > n+n/4) || (n <= minBuf && size != minBuf) {
			t.Errorf("bufClass(%d) = %d, %d", n, i, size)
		}
		if i < prev || i >= len(bufPools) {
			t.Errorf("bufClass(%d) index %d (previous %d, pools %d)", n, i, prev, len(bufPools))
		}
		prev = i
		if b := getBuf(n); cap(b) < n || len(b) != 0 {
			t.Errorf("getBuf(%d): len %d cap %d", n, len(b), cap(b))
		}
		if j, s2 := bufClass(size); j != i || s2 != size {
			t.Errorf("bufClass(%d) (a class size) = %d, %d; want %d, %d", size, j, s2, i, size)
		}
	}
	if _, size := bufClass(1<<20 + 42); size != 1<<20+1<<18 {
		t.Errorf("a 1 MiB chunk's frame takes a %d-byte buffer, want 1.25 MiB", size)
	}
}
