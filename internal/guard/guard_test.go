package guard

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/goroutines"
)

func TestEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:5555":       "guard-tcp://127.0.0.1:5555",
		"ipc:///tmp/x":               "guard-ipc:///tmp/x",
		"guard-tcp://127.0.0.1:5555": "guard-tcp://127.0.0.1:5555",
		"inproc://x":                 "guard-inproc://x",
	} {
		got, err := Endpoint(in)
		if err != nil || got != want {
			t.Errorf("Endpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"udp://127.0.0.1:1", "127.0.0.1:5555"} {
		if got, err := Endpoint(in); err == nil {
			t.Errorf("Endpoint(%q) = %q, want an error", in, got)
		}
	}
	Register() // idempotent
}

// The guard's greeting must be byte-identical to zmq4's, since zmq4's own
// greeting write is swallowed after a comparison with it.
func TestGreetingMatchesZmq4(t *testing.T) {
	_, ep := startRouter(t, context.Background(), "tcp://127.0.0.1:0")
	c := rawDial(t, ep)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	var g [greetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		t.Fatal(err)
	}
	if g != nullGreeting {
		t.Fatalf("zmq4 greets with\n% x\nguard greets with\n% x", g, nullGreeting)
	}
}

func TestRoundTrip(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	dealer := startDealer(t, ctx, ep, "d1")
	for range 3 {
		roundTrip(t, router, dealer, "d1", 2*time.Second)
	}
	// Multipart and large frames pass unchanged.
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := dealer.Send(zmq4.NewMsgFrom([]byte("a"), nil, big)); err != nil {
		t.Fatal(err)
	}
	msg, err := recvTimeout(router, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Frames) != 4 || string(msg.Frames[1]) != "a" || len(msg.Frames[2]) != 0 || string(msg.Frames[3]) != string(big) {
		t.Fatalf("multipart message mangled: %d frames", len(msg.Frames))
	}
	// The accept is counted after the connection is handed to zmq4: wait.
	expectStats(t, ctx, func(s Stats) bool { return s.Accepted == 1 && s.Dialed == 1 && s.Open == 2 })
}

// A 9-byte frame header announcing 2^62 bytes makes zmq4 call
// make([]byte, 1<<62) and crash (see TestControlPlainHugeFrameCrashes).
func TestHugeFrame(t *testing.T) {
	long := func(flags byte, size uint64) []byte {
		return binary.BigEndian.AppendUint64([]byte{flags | flagLong}, size)
	}
	cases := []struct {
		name    string
		payload []byte
		counter func(Stats) int64
	}{
		{"2^62", long(0, 1<<62), func(s Stats) int64 { return s.FrameTooLarge }},
		{"2^63+", long(0, 1<<63|5), func(s Stats) int64 { return s.FrameTooLarge }},
		{"second frame", append(frame(flagMore, []byte("x")), long(0, 1<<40)...), func(s Stats) int64 { return s.FrameTooLarge }},
		{"just over limit", long(0, 1<<20+1), func(s Stats) int64 { return s.FrameTooLarge }},
		{"many MORE frames", func() []byte {
			var b []byte
			for range 200 {
				b = append(b, frame(flagMore, []byte("x"))...)
			}
			return b
		}(), func(s Stats) int64 { return s.MessageTooLarge }},
		{"message total", func() []byte {
			var b []byte
			for range 5 {
				b = append(b, long(flagMore, 1<<20)...)
				b = append(b, make([]byte, 1<<20)...)
			}
			return b
		}(), func(s Stats) int64 { return s.MessageTooLarge }},
		{"reserved flags", frame(0x80, []byte("x")), func(s Stats) int64 { return s.BadFrames }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxFrameSize = 1 << 20
			cfg.MaxMessageSize = 4 << 20
			ctx := WithConfig(context.Background(), cfg)
			router, ep := startRouter(t, ctx, guardedTCP(t))
			c := rawDial(t, ep)
			rawHandshake(t, c, "evil")
			c.Write(tc.payload) // may fail: the guard closes early
			expectClosed(t, c, 2*time.Second)
			if got := tc.counter(StatsFrom(ctx)); got != 1 {
				t.Fatalf("counter = %d, stats %+v", got, StatsFrom(ctx))
			}
			dealer := startDealer(t, ctx, ep, "good")
			roundTrip(t, router, dealer, "good", 2*time.Second)
		})
	}
}

// Without the guard, one idle client blocks zmq4's accept loop for every
// later client (see TestControlPlainIdleClientBlocksAccept).
func TestIdleClientsDoNotBlockAccept(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	idle := make([]net.Conn, 20)
	for i := range idle {
		idle[i] = rawDial(t, ep)
	}
	time.Sleep(20 * time.Millisecond) // let the listener accept them all

	start := time.Now()
	dealer := startDealer(t, ctx, ep, "d1")
	roundTrip(t, router, dealer, "d1", time.Second)
	t.Logf("round trip with 20 idle clients connected: %v", time.Since(start))

	for _, c := range idle {
		expectClosed(t, c, 2*time.Second)
	}
	eventually(t, time.Second, "idle clients counted", func() bool {
		s := StatsFrom(ctx)
		return s.HandshakeTimeouts == 20 && s.Handshaking == 0 && s.Open == 2
	})
	roundTrip(t, router, dealer, "d1", time.Second)
}

func TestBadHandshakes(t *testing.T) {
	greeting := func(edit func(g []byte)) []byte {
		g := nullGreeting
		edit(g[:])
		return g[:]
	}
	plain := greeting(func(g []byte) { copy(g[12:32], "PLAIN\x00\x00\x00") })
	good := nullGreeting[:]
	cases := []struct {
		name    string
		send    []byte
		timeout bool // closed by the handshake timeout rather than refused
	}{
		{"truncated greeting", good[:30], true},
		{"greeting without READY", good, true},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789"), false},
		{"PLAIN mechanism", append(plain, ready("Socket-Type", "DEALER")...), false},
		{"ZMTP 2.0", greeting(func(g []byte) { g[10] = 2 }), false},
		{"as-server 7", greeting(func(g []byte) { g[32] = 7 }), false},
		{"message instead of READY", append(good, frame(0, []byte("hello"))...), false},
		{"PING instead of READY", append(good, frame(flagCommand, []byte("\x04PING\x00\x00"))...), false},
		{"READY with MORE", append(good, frame(flagCommand|flagMore, []byte("\x05READY"))...), false},
		{"READY without Socket-Type", append(good, ready("Identity", "x")...), false},
		{"READY property truncated", append(good, frame(flagCommand, []byte("\x05READY\x0bSocket-Type"))...), false},
		{"READY value overruns", append(good, frame(flagCommand, []byte("\x05READY\x0bSocket-Type\xff\xff\xff\xffDEALER"))...), false},
		{"READY empty property name", append(good, frame(flagCommand, []byte("\x05READY\x00\x00\x00\x00\x00"))...), false},
		{"READY too large", append(good, frame(flagCommand, append([]byte("\x05READY"), make([]byte, 1<<20)...))...), false},
		{"READY claims 2^62", append(good, binary.BigEndian.AppendUint64([]byte{flagCommand | flagLong}, 1<<62)...), false},
	}
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	var timeouts, failures int64
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, ep)
			// The guard may refuse and close before a large payload is
			// fully written (READY too large), so a reset or broken pipe
			// here is the refusal itself; expectClosed checks the close.
			if _, err := c.Write(tc.send); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatal(err)
			}
			expectClosed(t, c, 2*time.Second)
			if tc.timeout {
				timeouts++
			} else {
				failures++
			}
			eventually(t, time.Second, "handshake failure counted", func() bool {
				s := StatsFrom(ctx)
				return s.HandshakeTimeouts == timeouts && s.HandshakeFailures == failures
			})
		})
	}
	expectStats(t, ctx, func(s Stats) bool { return s.Accepted == 0 && s.Open == 0 })
	dealer := startDealer(t, ctx, ep, "good")
	roundTrip(t, router, dealer, "good", 2*time.Second)
}

// A ROUTER send holds a socket-wide mutex while it writes synchronously, so
// one DEALER that never reads freezes sends to everyone (see
// TestControlPlainStuckReaderBlocksRouter).
func TestWriteStallEvicts(t *testing.T) {
	cfg := testConfig()
	ctx := WithConfig(context.Background(), cfg)
	router, ep := startRouter(t, ctx, guardedTCP(t))
	dctx := context.Background()
	stuck := startDealer(t, dctx, ep, "stuck") // never reads after its hello
	healthy := startDealer(t, dctx, ep, "healthy")
	for _, d := range []zmq4.Socket{stuck, healthy} {
		if err := d.Send(zmq4.NewMsgString("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := recvTimeout(router, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// Flood the stuck dealer until the guard evicts it.
	payload := make([]byte, 1<<20)
	floodErr := make(chan error, 1)
	go func() {
		for range 1000 {
			if err := router.Send(zmq4.NewMsgFrom([]byte("stuck"), payload)); err != nil {
				floodErr <- err
				return
			}
		}
		floodErr <- nil
	}()
	eventually(t, 10*time.Second, "stuck peer's buffers full", func() bool {
		select {
		case err := <-floodErr:
			t.Fatalf("flood ended early: %v", err)
		default:
		}
		return StatsFrom(ctx).WriteStalls == 0 && stalledFor(router, 50*time.Millisecond)
	})

	// The router is now frozen on the stuck peer; a send to the healthy
	// one must go through once the stuck one is evicted.
	start := time.Now()
	sent := make(chan error, 1)
	go func() { sent <- router.Send(zmq4.NewMsgFrom([]byte("healthy"), []byte("still there"))) }()
	select {
	case err := <-floodErr:
		if !errors.Is(err, ErrWriteStall) {
			t.Fatalf("flood error %v, want ErrWriteStall", err)
		}
	case <-time.After(2*cfg.WriteStallTimeout + 1500*time.Millisecond):
		t.Fatal("stuck peer not evicted")
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Second):
		t.Fatal("send to the healthy peer still blocked")
	}
	t.Logf("healthy send completed %v after the router froze", time.Since(start))
	msg, err := recvTimeout(healthy, 2*time.Second)
	if err != nil || string(msg.Frames[0]) != "still there" {
		t.Fatalf("healthy dealer got %q, %v", msg.Frames, err)
	}
	if s := StatsFrom(ctx); s.WriteStalls != 1 {
		t.Fatalf("stats %+v", s)
	}
	roundTrip(t, router, healthy, "healthy", 2*time.Second)
}

// stalledFor reports whether a send probe to an unknown identity (which
// only needs the router's writer mutex) is still blocked after d.
func stalledFor(router zmq4.Socket, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		router.Send(zmq4.NewMsgFrom([]byte("nobody"), nil))
		close(done)
	}()
	select {
	case <-done:
		return false
	case <-time.After(d):
		return true
	}
}

// libzmq sends only the 10-byte signature, then waits for the peer's
// signature before it sends the rest of its greeting.
func TestLibzmqStyleGreeting(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	c := rawDial(t, ep)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	sig := []byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f} // libzmq's signature
	if _, err := c.Write(sig); err != nil {
		t.Fatal(err)
	}
	var peer [greetingLen]byte
	if _, err := io.ReadFull(c, peer[:10]); err != nil {
		t.Fatalf("server signature: %v", err)
	}
	rest := nullGreeting[10:]
	if _, err := c.Write(append(append([]byte(nil), rest...), ready("Socket-Type", "DEALER", "Identity", "lz")...)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, peer[10:]); err != nil {
		t.Fatal(err)
	}
	if peer != nullGreeting {
		t.Fatalf("server greeting % x", peer)
	}
	if flags, body, err := readFrame(c); err != nil || flags != flagCommand || string(body[:6]) != "\x05READY" {
		t.Fatalf("server READY %#x %q %v", flags, body, err)
	}
	if _, err := c.Write(frame(0, []byte("hello"))); err != nil {
		t.Fatal(err)
	}
	msg, err := recvTimeout(router, 2*time.Second)
	if err != nil || string(msg.Frames[0]) != "lz" || string(msg.Frames[1]) != "hello" {
		t.Fatalf("router got %q, %v", msg.Frames, err)
	}
	if err := router.Send(zmq4.NewMsgFrom([]byte("lz"), []byte("world"))); err != nil {
		t.Fatal(err)
	}
	if _, body, err := readFrame(c); err != nil || string(body) != "world" {
		t.Fatalf("reply %q %v", body, err)
	}
}

func TestIPC(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	ep, err := Endpoint("ipc://" + filepath.Join(t.TempDir(), "guard.sock"))
	if err != nil {
		t.Fatal(err)
	}
	router, ep := startRouter(t, ctx, ep)
	idle := rawDial(t, ep)
	dealer := startDealer(t, ctx, ep, "d1")
	roundTrip(t, router, dealer, "d1", time.Second)

	evil := rawDial(t, ep)
	rawHandshake(t, evil, "evil")
	evil.Write(binary.BigEndian.AppendUint64([]byte{flagLong}, 1<<62))
	expectClosed(t, evil, 2*time.Second)
	expectClosed(t, idle, 2*time.Second)
	roundTrip(t, router, dealer, "d1", time.Second)
	expectStats(t, ctx, func(s Stats) bool { return s.FrameTooLarge == 1 && s.HandshakeTimeouts == 1 })
}

func TestMaxConns(t *testing.T) {
	cfg := testConfig()
	cfg.MaxConns = 3
	cfg.HandshakeTimeout = 5 * time.Second
	ctx := WithConfig(context.Background(), cfg)
	_, ep := startRouter(t, ctx, guardedTCP(t))
	for range 3 {
		c := rawDial(t, ep)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		var g [greetingLen]byte
		if _, err := io.ReadFull(c, g[:]); err != nil {
			t.Fatal(err)
		}
	}
	extra := rawDial(t, ep)
	expectClosed(t, extra, 2*time.Second)
	expectStats(t, ctx, func(s Stats) bool { return s.Rejected == 1 && s.Handshaking == 3 && s.Open == 3 })
}

// When zmq4.Open fails after the guard's checks (here: a PUB peer for a
// ROUTER), zmq4 drops the connection without closing it; the guard closes it.
func TestOrphanClosed(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	c := rawDial(t, ep)
	c.Write(append(nullGreeting[:], ready("Socket-Type", "PUB")...))
	expectClosed(t, c, 3*time.Second)
	eventually(t, time.Second, "orphan counted", func() bool {
		s := StatsFrom(ctx)
		return s.Orphaned == 1 && s.Open == 0
	})
	dealer := startDealer(t, ctx, ep, "d1")
	roundTrip(t, router, dealer, "d1", time.Second)
}

// A DEALER is protected against a hostile server too.
func TestDialHostileServer(t *testing.T) {
	serve := func(t *testing.T, behave func(c net.Conn)) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		t.Cleanup(func() { ln.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			behave(c)
		}()
		return SchemeTCP + "://" + ln.Addr().String()
	}
	handshake := func(c net.Conn) bool {
		c.Write(append(nullGreeting[:], ready("Socket-Type", "ROUTER")...))
		var g [greetingLen]byte
		if _, err := io.ReadFull(c, g[:]); err != nil {
			return false
		}
		_, _, err := readFrame(c)
		return err == nil
	}

	t.Run("huge frame", func(t *testing.T) {
		ctx := WithConfig(context.Background(), testConfig())
		ep := serve(t, func(c net.Conn) {
			if handshake(c) {
				c.Write(binary.BigEndian.AppendUint64([]byte{flagLong}, 1<<62))
				io.Copy(io.Discard, c)
			}
		})
		d := startDealer(t, ctx, ep, "d")
		if _, err := recvTimeout(d, 2*time.Second); err == nil {
			t.Fatal("Recv succeeded")
		}
		eventually(t, time.Second, "frame counted", func() bool {
			s := StatsFrom(ctx)
			return s.FrameTooLarge == 1 && s.Open == 0
		})
	})
	t.Run("silent server", func(t *testing.T) {
		ctx := WithConfig(context.Background(), testConfig())
		ep := serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		d := zmq4.NewDealer(ctx, zmq4.WithLogger(quiet))
		defer d.Close()
		start := time.Now()
		err := d.Dial(ep)
		if !errors.Is(err, ErrHandshakeTimeout) {
			t.Fatalf("Dial: %v", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("Dial took %v", el)
		}
		if s := StatsFrom(ctx); s.HandshakeTimeouts != 1 || s.Open != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("malformed READY", func(t *testing.T) {
		ctx := WithConfig(context.Background(), testConfig())
		ep := serve(t, func(c net.Conn) {
			c.Write(append(nullGreeting[:], frame(flagCommand, []byte("\x05READY\x0bSocket-Type"))...))
			io.Copy(io.Discard, c)
		})
		d := zmq4.NewDealer(ctx, zmq4.WithLogger(quiet))
		defer d.Close()
		if err := d.Dial(ep); !errors.Is(err, ErrHandshake) {
			t.Fatalf("Dial: %v", err)
		}
		if s := StatsFrom(ctx); s.HandshakeFailures != 1 || s.Open != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func TestGoroutinesReturnToBaseline(t *testing.T) {
	baseline, _ := goroutines.Stable(5 * time.Second)
	ctx := WithConfig(context.Background(), testConfig())
	var during int
	func() {
		router := zmq4.NewRouter(ctx, zmq4.WithLogger(quiet))
		defer router.Close()
		if err := router.Listen(guardedTCP(t)); err != nil {
			t.Fatal(err)
		}
		ep := SchemeTCP + "://" + router.Addr().String()
		var raws []net.Conn
		for range 5 { // idle clients, some still in the handshake at Close
			raws = append(raws, rawDial(t, ep))
		}
		evil := rawDial(t, ep)
		rawHandshake(t, evil, "evil")
		evil.Write(binary.BigEndian.AppendUint64([]byte{flagLong}, 1<<62))
		for i := range 3 {
			id := string(rune('a' + i))
			d := zmq4.NewDealer(ctx, zmq4.WithLogger(quiet), zmq4.WithID(zmq4.SocketIdentity(id)))
			defer d.Close()
			if err := d.Dial(ep); err != nil {
				t.Fatal(err)
			}
			roundTrip(t, router, d, id, 2*time.Second)
		}
		during = runtime.NumGoroutine()
		// The idle clients stay connected: Close must end their handshakes.
		if s := StatsFrom(ctx); s.Handshaking != int64(len(raws)) {
			t.Fatalf("stats %+v", s)
		}
	}()
	eventually(t, 3*time.Second, "guard connections closed", func() bool { return StatsFrom(ctx).Open == 0 })
	var n int
	eventually(t, 3*time.Second, "goroutines back to baseline", func() bool {
		n = runtime.NumGoroutine()
		return n <= baseline
	})
	t.Logf("goroutines: baseline %d, with sockets open %d, after close %d", baseline, during, n)
}

func TestIdleTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.IdleTimeout = 300 * time.Millisecond
	ctx := WithConfig(context.Background(), cfg)
	router, ep := startRouter(t, ctx, guardedTCP(t))
	quietPeer := rawDial(t, ep)
	rawHandshake(t, quietPeer, "quiet")
	dealer := startDealer(t, context.Background(), ep, "busy")
	start := time.Now()
	for time.Since(start) < 4*cfg.IdleTimeout { // busy peer keeps talking
		roundTrip(t, router, dealer, "busy", time.Second)
		time.Sleep(cfg.IdleTimeout / 3)
	}
	expectClosed(t, quietPeer, time.Second)
	expectStats(t, ctx, func(s Stats) bool { return s.IdleTimeouts == 1 && s.Open == 1 })
}

// A peer that reads slowly but steadily is not evicted: the stall deadline
// is renewed whenever the kernel accepts more bytes.
func TestSlowReaderKept(t *testing.T) {
	cfg := testConfig()
	cfg.WriteStallTimeout = 200 * time.Millisecond
	ctx := WithConfig(context.Background(), cfg)
	router, ep := startRouter(t, ctx, guardedTCP(t))
	c := rawDial(t, ep)
	c.(*net.TCPConn).SetReadBuffer(16 << 10)
	rawHandshake(t, c, "slow")
	c.Write(frame(0, []byte("hello")))
	if _, err := recvTimeout(router, 2*time.Second); err != nil {
		t.Fatal(err)
	}

	const size = 6 << 20 // more than the socket buffers hold
	start := time.Now()
	sent := make(chan time.Duration, 1)
	go func() {
		if err := router.Send(zmq4.NewMsgFrom([]byte("slow"), make([]byte, size))); err != nil {
			t.Errorf("send: %v", err)
		}
		sent <- time.Since(start)
	}()
	// Reads of at most 64 KiB every 5 ms: the peer is never silent for
	// anywhere near the 200 ms window, but the whole send spans many.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < size; {
		n, err := c.Read(buf[:min(len(buf), size-got)])
		if err != nil {
			t.Fatalf("after %d bytes: %v (stats %+v)", got, err, StatsFrom(ctx))
		}
		got += n
		time.Sleep(5 * time.Millisecond)
	}
	took := <-sent
	if took < 2*cfg.WriteStallTimeout {
		t.Fatalf("send took only %v; the test did not span several stall windows", took)
	}
	t.Logf("6 MiB send to a slow reader took %v with a %v stall window", took, cfg.WriteStallTimeout)
	if s := StatsFrom(ctx); s.WriteStalls != 0 {
		t.Fatalf("slow reader evicted: %+v", s)
	}
}

// zmq4's accept loop retries Accept on any error until its context is
// cancelled: after Close, Accept must fail, and fail slowly while the
// context is still live.
func TestAcceptAfterClose(t *testing.T) {
	ctx, cancel := context.WithCancel(WithConfig(context.Background(), testConfig()))
	defer cancel()
	ln, err := guarded{network: "tcp"}.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	start := time.Now()
	for range 3 {
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Fatalf("3 failing Accepts took only %v: zmq4's loop would spin", el)
	}
	cancel()
	start = time.Now()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after cancel: %v", err)
	}
	if el := time.Since(start); el > 50*time.Millisecond {
		t.Fatalf("Accept after cancel took %v", el)
	}

	// Cancelling the socket context alone closes the listener too.
	ctx2, cancel2 := context.WithCancel(context.Background())
	ln2, err := guarded{network: "tcp"}.Listen(ctx2, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cancel2()
	if _, err := ln2.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after context cancel: %v", err)
	}
}
