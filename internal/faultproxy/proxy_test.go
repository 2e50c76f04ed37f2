package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/goroutines"
)

// testTimeout bounds every blocking step of a test.
const testTimeout = 10 * time.Second

// server is a loopback TCP server for tests that runs handler on every
// accepted connection and can be closed, waiting for its goroutines.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	ended chan struct{} // receives one value per handler that returned
}

func newServer(t testing.TB, handler func(c *net.TCPConn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(map[net.Conn]struct{}), ended: make(chan struct{}, 1024)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handler(c.(*net.TCPConn))
				_ = c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				select {
				case s.ended <- struct{}{}:
				default:
				}
			}()
		}
	}()
	t.Cleanup(s.Close)
	return s
}

func (s *server) Addr() string { return s.ln.Addr().String() }

func (s *server) Close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func echo(c *net.TCPConn) {
	buf := make([]byte, 64<<10)
	_, _ = io.CopyBuffer(c, c, buf)
	_ = c.CloseWrite()
}

func newEcho(t testing.TB) *server { return newServer(t, echo) }

func newProxy(t testing.TB, target string, opts ...Option) *Proxy {
	t.Helper()
	opts = append([]Option{WithLogf(t.Logf)}, opts...)
	p, err := New(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// echoRoundTrip writes data on c concurrently with reading len(data) bytes
// back and returns what was read.
func echoRoundTrip(t testing.TB, c net.Conn, data []byte) []byte {
	t.Helper()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	return got
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestForward(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	data := randBytes(4<<20+123, 1)
	got := echoRoundTrip(t, c, data)
	if !bytes.Equal(got, data) {
		t.Fatal("echoed data differs")
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseWrite: n=%d err=%v, want EOF", n, err)
	}
	n := int64(len(data))
	waitFor(t, "byte counters", func() bool { return p.BytesUp() == n && p.BytesDown() == n })
	waitFor(t, "connection teardown", func() bool { return p.Conns() == 0 })
}

func TestForwardManyConns(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	const conns = 8
	const size = 1 << 20
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		c := dial(t, p.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randBytes(size, uint64(i))
			go func() { _, _ = c.Write(data) }()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- errors.New("data differs")
			}
		}()
	}
	waitFor(t, "all conns open", func() bool { return p.Conns() == conns })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "byte counters", func() bool { return p.BytesUp() == conns*size && p.BytesDown() == conns*size })
}

func TestDelay(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	// Warm up the connection without delay.
	echoRoundTrip(t, c, []byte("warm"))

	const oneWay = 30 * time.Millisecond
	p.SetDelay(oneWay)
	if p.Delay() != oneWay {
		t.Fatalf("Delay() = %v", p.Delay())
	}
	for range 3 {
		start := time.Now()
		got := echoRoundTrip(t, c, []byte("ping"))
		rtt := time.Since(start)
		if string(got) != "ping" {
			t.Fatalf("got %q", got)
		}
		if rtt < 2*oneWay {
			t.Fatalf("round trip took %v, want >= %v", rtt, 2*oneWay)
		}
		t.Logf("round trip through %v one-way delay: %v", oneWay, rtt)
	}

	// Bulk data through the delay line arrives intact and in order.
	data := randBytes(16<<20, 2)
	if got := echoRoundTrip(t, c, data); !bytes.Equal(got, data) {
		t.Fatal("bulk data through delay line differs")
	}

	// Removing the delay applies to later bytes.
	p.SetDelay(0)
	echoRoundTrip(t, c, []byte("x"))
	start := time.Now()
	echoRoundTrip(t, c, []byte("y"))
	t.Logf("round trip after SetDelay(0): %v", time.Since(start))
}

func TestWithDelayOption(t *testing.T) {
	srv := newEcho(t)
	const oneWay = 20 * time.Millisecond
	p := newProxy(t, srv.Addr(), WithDelay(oneWay))
	c := dial(t, p.Addr())
	start := time.Now()
	echoRoundTrip(t, c, []byte("hello"))
	if rtt := time.Since(start); rtt < 2*oneWay {
		t.Fatalf("round trip took %v, want >= %v", rtt, 2*oneWay)
	}
}

func TestCut(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	echoRoundTrip(t, c, []byte("before cut"))
	if p.Conns() != 1 {
		t.Fatalf("Conns() = %d, want 1", p.Conns())
	}

	p.Cut()

	// The client side sees the connection end promptly.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 16))
	if err == nil || n != 0 {
		t.Fatalf("client read after Cut: n=%d err=%v, want error", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("client read after Cut timed out instead of failing")
	}
	// The server side sees it too: its echo handler returns.
	select {
	case <-srv.ended:
	case <-time.After(5 * time.Second):
		t.Fatal("server side connection not closed by Cut")
	}
	waitFor(t, "Conns() == 0", func() bool { return p.Conns() == 0 })

	// New connections still work.
	c2 := dial(t, p.Addr())
	data := randBytes(256<<10, 3)
	if got := echoRoundTrip(t, c2, data); !bytes.Equal(got, data) {
		t.Fatal("data after Cut differs")
	}
}

func TestStall(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	echoRoundTrip(t, c, []byte("warm"))
	// The proxy counts a chunk as delivered after its Write returns, which
	// may be after the client has already read the echo: wait for the
	// counters to settle before taking the baseline.
	waitFor(t, "warm-up counted", func() bool { return p.BytesUp() == 4 && p.BytesDown() == 4 })
	up0, down0 := p.BytesUp(), p.BytesDown()

	p.Stall(true)
	p.Stall(true) // idempotent
	data := randBytes(1<<20, 4)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read while stalled: n=%d err=%v, want timeout", n, err)
	}
	if p.BytesUp() != up0 || p.BytesDown() != down0 {
		t.Fatalf("bytes forwarded while stalled: up %d->%d down %d->%d", up0, p.BytesUp(), down0, p.BytesDown())
	}
	if p.Conns() != 1 {
		t.Fatalf("Conns() = %d while stalled, want 1", p.Conns())
	}

	p.Stall(false)
	p.Stall(false) // idempotent
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data after stall differs")
	}
}

func TestStallBackpressure(t *testing.T) {
	srv := newEcho(t)
	const limit = 1 << 20
	p := newProxy(t, srv.Addr(), WithQueueLimit(limit))
	c := dial(t, p.Addr())
	p.Stall(true)
	// Far more than the queue limit plus socket buffers: the write must
	// block while stalled.
	data := randBytes(32<<20, 5)
	wdone := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		wdone <- err
	}()
	select {
	case err := <-wdone:
		t.Fatalf("write of %d bytes finished while stalled (err=%v)", len(data), err)
	case <-time.After(300 * time.Millisecond):
	}
	p.Stall(false)
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data after backpressure differs")
	}
}

// diffOffsets returns the offsets where a and b differ, checking that each
// difference is exactly FlipMask.
func diffOffsets(t *testing.T, a, b []byte) []int64 {
	t.Helper()
	var offs []int64
	for i := range a {
		if a[i] != b[i] {
			if a[i]^b[i] != FlipMask {
				t.Errorf("byte %d: %#x vs %#x, not a FlipMask flip", i, a[i], b[i])
			}
			offs = append(offs, int64(i))
		}
	}
	return offs
}

func wantOffsets(after int64, count int) []int64 {
	var offs []int64
	for k := range int64(count) {
		offs = append(offs, after+k*(after+1))
	}
	return offs
}

func equalOffsets(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCorruptDownstream(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	// Some clean traffic first: offsets count from the arming point.
	clean := randBytes(12345, 6)
	if got := echoRoundTrip(t, c, clean); !bytes.Equal(got, clean) {
		t.Fatal("clean data differs")
	}

	for _, tc := range []struct {
		after int64
		count int
	}{
		{1000, 5},
		{0, 3},
		{300 << 10, 4}, // spans many reads
		{7, 1},
	} {
		p.CorruptDownstream(tc.after, tc.count)
		data := randBytes(2<<20, uint64(tc.after))
		got := echoRoundTrip(t, c, data)
		offs := diffOffsets(t, data, got)
		if want := wantOffsets(tc.after, tc.count); !equalOffsets(offs, want) {
			t.Fatalf("after=%d count=%d: corrupted offsets %v, want %v", tc.after, tc.count, offs, want)
		}
	}
	// Exhausted: nothing more is corrupted.
	data := randBytes(1<<20, 99)
	if got := echoRoundTrip(t, c, data); !bytes.Equal(got, data) {
		t.Fatal("data corrupted after corruption was used up")
	}
	// Cancel.
	p.CorruptDownstream(10, 5)
	p.CorruptDownstream(10, 0)
	if got := echoRoundTrip(t, c, data); !bytes.Equal(got, data) {
		t.Fatal("data corrupted after corruption was cancelled")
	}
}

func TestCorruptUpstream(t *testing.T) {
	received := make(chan []byte, 1)
	srv := newServer(t, func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(testTimeout))
		b, _ := io.ReadAll(c)
		received <- b
	})
	p := newProxy(t, srv.Addr())
	const after, count = 4096, 6
	p.CorruptUpstream(after, count)
	c := dial(t, p.Addr())
	data := randBytes(1<<20, 7)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	select {
	case got = <-received:
	case <-time.After(testTimeout):
		t.Fatal("server did not receive data")
	}
	if len(got) != len(data) {
		t.Fatalf("server got %d bytes, want %d", len(got), len(data))
	}
	offs := diffOffsets(t, data, got)
	if want := wantOffsets(after, count); !equalOffsets(offs, want) {
		t.Fatalf("corrupted offsets %v, want %v", offs, want)
	}
}

func TestRefuse(t *testing.T) {
	srv := newEcho(t)
	p := newProxy(t, srv.Addr())
	p.SetRefuse(true)
	for range 3 {
		c := dial(t, p.Addr())
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		n, err := c.Read(make([]byte, 1))
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("read on refused conn: n=%d err=%v, want EOF", n, err)
		}
		t.Logf("EOF after %v", time.Since(start))
		_ = c.Close()
	}
	if p.Conns() != 0 {
		t.Fatalf("Conns() = %d, want 0", p.Conns())
	}
	p.SetRefuse(false)
	c := dial(t, p.Addr())
	if got := echoRoundTrip(t, c, []byte("back up")); string(got) != "back up" {
		t.Fatalf("got %q", got)
	}
}

func TestTargetDown(t *testing.T) {
	// A listener that is closed at once gives an address nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	p := newProxy(t, addr)
	c := dial(t, p.Addr())
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read with target down: n=%d err=%v, want EOF", n, err)
	}
}

func TestServerReset(t *testing.T) {
	srv := newServer(t, func(c *net.TCPConn) {
		_, _ = io.ReadFull(c, make([]byte, 4))
		_ = c.SetLinger(0) // RST
	})
	p := newProxy(t, srv.Addr())
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read after server reset: %v, want connection error", err)
	}
	t.Logf("client saw: %v", err)
	waitFor(t, "Conns() == 0", func() bool { return p.Conns() == 0 })
}

func TestCloseNoLeak(t *testing.T) {
	settle := func() int {
		runtime.GC()
		return runtime.NumGoroutine()
	}
	before, _ := goroutines.Stable(5 * time.Second)

	srv := newEcho(t)
	p, err := New(srv.Addr(), WithDelay(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var clients []net.Conn
	for i := range 4 {
		c, err := net.DialTimeout("tcp", p.Addr(), testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		_ = c.SetDeadline(time.Now().Add(testTimeout))
		// Leave bytes in flight in the delay line (and, for some, stalled).
		if _, err := c.Write(randBytes(64<<10, uint64(i))); err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			p.Stall(true)
		}
	}
	waitFor(t, "conns open", func() bool { return p.Conns() == 4 })

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if p.Conns() != 0 {
		t.Fatalf("Conns() = %d after Close", p.Conns())
	}
	// Clients see their connections end.
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			_, err := c.Read(make([]byte, 64<<10))
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("client conn still open after Close")
				}
				break
			}
		}
		_ = c.Close()
	}
	// New connections are refused.
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		_ = c.Close()
		t.Fatal("dial succeeded after Close")
	}
	srv.Close()

	deadline := time.Now().Add(5 * time.Second)
	after := settle()
	for after > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		after = settle()
	}
	if after > before {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		_, _ = os.Stderr.Write(buf[:n])
		t.Fatalf("goroutines: %d before, %d after Close", before, after)
	}
}
