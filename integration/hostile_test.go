package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The hostile-peer table: one live zsend (in-process, tcp loopback) takes
// every kind of abuse in turn, over raw TCP and over raw zmq4 sockets.
// After each case a normal fetch must complete within 2s, and the server's
// goroutines, file descriptors, sessions and open files must come back to
// their baseline. Several cases also fetch while the abuse is going on.

const (
	hMaxSessions   = 16
	hMaxRequests   = 64
	hFrameLimit    = 64 << 10 // the sender's default Limits.MaxFrameSize
	hPeerTimeout   = 3 * time.Second
	hHeartbeat     = 500 * time.Millisecond
	hWriteStall    = 500 * time.Millisecond
	hHandshake     = time.Second
	hSettle        = 10 * time.Second
	goroutineSlack = 3 // the subtest's own goroutine, plus timer and runtime goroutines that come and go
	fdSlack        = 2
)

type hostileEnv struct {
	srv    *sender.Server
	ep     string // tcp://127.0.0.1:PORT
	addr   string // 127.0.0.1:PORT
	small  string // path of small.bin
	fifo   string // a FIFO inside the served tree
	baseG  int
	baseFD int
	curve  *receiver.CurveClient // the legitimate receiver's CURVE options (CURVE table only)
}

func newHostileEnv(t *testing.T) *hostileEnv {
	src := t.TempDir()
	small := writeRandom(t, src, "small.bin", 48<<10)
	const bigSize = 64 << 20
	big := writeRandom(t, src, "big.bin", bigSize)

	// A served tree with traps: a FIFO, a symlink to a file outside, a
	// symlink to a directory outside, a subdirectory.
	tree := filepath.Join(src, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, tree, "a.txt", 100)
	writeRandom(t, filepath.Join(tree, "sub"), "b.txt", 100)
	if err := syscall.Mkfifo(filepath.Join(tree, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	secret := writeRandom(t, outside, "secret", 100)
	if err := os.Symlink(secret, filepath.Join(tree, "link-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(tree, "dir-out")); err != nil {
		t.Fatal(err)
	}
	// Symbolic links that stay inside (served), and links into the tree
	// that leave it on the way (refused): PROTOCOL.md section 6.
	for link, target := range map[string]string{
		"link-in":  "a.txt",
		"sub-link": "sub",
		"abs-in":   filepath.Join(tree, "a.txt"),
		"up-in":    "../tree/a.txt",
	} {
		if err := os.Symlink(target, filepath.Join(tree, link)); err != nil {
			t.Fatal(err)
		}
	}

	ep, srv := serve(t, sender.Config{
		Paths:       []string{small, big, tree},
		PeerTimeout: hPeerTimeout,
		Heartbeat:   hHeartbeat,
		MaxSessions: hMaxSessions,
		MaxRequests: hMaxRequests,
		Limits:      sender.Limits{WriteStallTimeout: hWriteStall, HandshakeTimeout: hHandshake},
	})
	h := &hostileEnv{srv: srv, ep: ep, addr: strings.TrimPrefix(ep, "tcp://"), small: small, fifo: filepath.Join(tree, "fifo")}

	// Warm up (pools, the zmq4 reaper, timers), then take the baseline as
	// the lowest count seen over a quiet half second.
	h.fetchOK(t, "warm-up")
	h.baseG = stableGoroutines(t, 5*time.Second)
	h.baseFD = math.MaxInt
	for range 10 {
		time.Sleep(50 * time.Millisecond)
		h.baseFD = min(h.baseFD, openFDs(t))
	}
	t.Logf("baseline: %d goroutines, %d file descriptors", h.baseG, h.baseFD)
	return h
}

// fetchOK runs a normal receiver against the server and requires it to
// complete, verified, within 2s.
func (h *hostileEnv) fetchOK(t *testing.T, when string) {
	t.Helper()
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	res, err := receiver.Fetch(ctx, receiver.Config{Endpoint: h.ep, OutputDir: out, Timeout: 2 * time.Second, PeerID: "legit", Curve: h.curve}, "small.bin")
	if err != nil {
		t.Fatalf("%s: a normal fetch failed after %v: %v (server %+v)", when, time.Since(start).Round(time.Millisecond), err, h.srv.Stats())
	}
	sameFile(t, h.small, res[0].Path)
}

// fetchDuring runs fetchOK in the background; the returned func waits
// for it and reports its failure.
func (h *hostileEnv) fetchDuring(t *testing.T) func() {
	t.Helper()
	errc := make(chan string, 1)
	go func() {
		out, err := os.MkdirTemp("", "hostile-fetch")
		if err != nil {
			errc <- err.Error()
			return
		}
		defer os.RemoveAll(out)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		start := time.Now()
		_, err = receiver.Fetch(ctx, receiver.Config{Endpoint: h.ep, OutputDir: out, Timeout: 2 * time.Second, PeerID: "legit", Curve: h.curve}, "small.bin")
		if err != nil {
			errc <- fmt.Sprintf("a normal fetch during the abuse failed after %v: %v (server %+v)", time.Since(start).Round(time.Millisecond), err, h.srv.Stats())
			return
		}
		got, err1 := os.ReadFile(filepath.Join(out, "small.bin"))
		want, err2 := os.ReadFile(h.small)
		if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
			errc <- fmt.Sprintf("a normal fetch during the abuse got different content (%v, %v)", err1, err2)
			return
		}
		errc <- ""
	}()
	return func() {
		t.Helper()
		if msg := <-errc; msg != "" {
			t.Fatal(msg)
		}
	}
}

// settle waits until the server holds nothing for the hostile peers: no
// session, no open file, and goroutines and descriptors back to baseline.
func (h *hostileEnv) settle(t *testing.T) {
	t.Helper()
	start := time.Now()
	for {
		g, fds, st := runtime.NumGoroutine(), openFDs(t), h.srv.Stats()
		if g <= h.baseG+goroutineSlack && fds <= h.baseFD+fdSlack && st.Sessions == 0 && st.OpenFiles == 0 {
			t.Logf("settled in %v: %d goroutines, %d fds, %+v", time.Since(start).Round(time.Millisecond), g, fds, st)
			return
		}
		if time.Since(start) > hSettle {
			t.Fatalf("not back to baseline within %v: goroutines %d (baseline %d+%d), fds %d (baseline %d+%d), stats %+v\nfds:\n%s\ngoroutines:\n%s",
				hSettle, g, h.baseG, goroutineSlack, fds, h.baseFD, fdSlack, st, fdList(), goroutineDump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// guardDelta reports how much a process-wide guard counter grew during f.
func guardDelta(f func(), pick func(guard.Stats) int64) int64 {
	before := pick(guard.StatsFrom(context.Background()))
	f()
	return pick(guard.StatsFrom(context.Background())) - before
}

func eventually(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// sampleOpenFiles samples the server's open files every 100µs until the
// returned func is called, which returns the peak.
func sampleOpenFiles(h *hostileEnv) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if n := h.srv.Stats().OpenFiles; n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	return func() int64 { close(stop); <-done; return peak.Load() }
}

// floodNotReading writes msg over and over (up to 300000 times or 4s) and
// never reads; a normal fetch runs in the middle of the flood.
func floodNotReading(t *testing.T, h *hostileEnv, p *rawPeer, msg []byte) {
	t.Helper()
	const per = 2000
	batch := bytes.Repeat(msg, per)
	var wait func()
	stop := time.Now().Add(4 * time.Second)
	sent := 0
	for sent < 300000 && time.Now().Before(stop) {
		p.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := p.c.Write(batch); err != nil {
			t.Logf("flood write: %v", err)
			break
		}
		sent += per
		if wait == nil && sent >= 20000 {
			wait = h.fetchDuring(t)
		}
	}
	if wait == nil {
		wait = h.fetchDuring(t)
	}
	wait()
	t.Logf("%d messages sent without reading an answer", sent)
}

type hostileCase struct {
	name string
	run  func(t *testing.T, h *hostileEnv)
}

func TestHostilePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("hostile table takes about a minute")
	}
	h := newHostileEnv(t)
	cases := append(rawTCPCases(), zmqCases()...)
	if len(cases) < 20 {
		t.Fatalf("only %d hostile cases", len(cases))
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

// ---------------------------------------------------------------------
// Raw TCP: every byte chosen by the test.

func rawTCPCases() []hostileCase {
	return []hostileCase{
		{"tcp/garbage", func(t *testing.T, h *hostileEnv) {
			badVersion := zGreeting()
			badVersion[10] = 2 // ZMTP 2.0
			curve := zGreeting()
			copy(curve[12:32], "CURVE\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
			plain := zGreeting()
			copy(plain[12:32], "PLAIN\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
			asServer := zGreeting()
			asServer[32] = 7
			inputs := map[string][]byte{
				"random 4 KiB":      append([]byte{0x00}, randBytes(4096)...),
				"HTTP request":      []byte("GET / HTTP/1.1\r\nHost: zsend\r\n\r\n"),
				"64 zero bytes":     make([]byte, 64),
				"ZMTP 2.0":          append(badVersion, zReady("Socket-Type", "DEALER")...),
				"CURVE mechanism":   append(curve, zReady("Socket-Type", "DEALER")...),
				"PLAIN mechanism":   append(plain, zReady("Socket-Type", "DEALER")...),
				"as-server 7":       append(asServer, zReady("Socket-Type", "DEALER")...),
				"data before READY": append(zGreeting(), zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20})...),
			}
			for name, in := range inputs {
				p := dialRaw(t, h.addr)
				p.write(t, in)
				p.closedByServer(t, hHandshake+2*time.Second, name)
				p.close()
			}
		}},

		{"tcp/truncated-greetings-and-ready", func(t *testing.T, h *hostileEnv) {
			g := zGreeting()
			badProp := zCommand("READY", []byte{11, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0xff, 0xff, 0xff, 0x00, 'D'})
			noType := zReady("Identity", "x")
			hugeReady := []byte{zFlagCommand | zFlagLong, 0x40, 0, 0, 0, 0, 0, 0, 0}
			inputs := map[string][]byte{
				"signature only":                 g[:10],
				"half a greeting":                g[:30],
				"greeting, no READY":             g,
				"greeting, half a READY":         append(g, zReady("Socket-Type", "DEALER")[:9]...),
				"READY value running past end":   append(g, badProp...),
				"READY without Socket-Type":      append(g, noType...),
				"READY claiming 2^62 bytes":      append(g, hugeReady...),
				"READY of 100 KiB":               append(g, zReady("Socket-Type", "DEALER", "X-Pad", string(make([]byte, 100<<10)))...),
				"PUB socket (incompatible type)": append(g, zReady("Socket-Type", "PUB")...),
			}
			// Open them all, then fetch while they sit there.
			var peers []*rawPeer
			var names []string
			for name, in := range inputs {
				p := dialRaw(t, h.addr)
				p.write(t, in)
				peers, names = append(peers, p), append(names, name)
			}
			h.fetchOK(t, "with truncated handshakes pending")
			for i, p := range peers {
				// Each is closed by the handshake timeout or at once.
				p.closedByServer(t, hHandshake+hWriteStall+3*time.Second, names[i])
				p.close()
			}
		}},

		{"tcp/frame-header-2^62", func(t *testing.T, h *hostileEnv) {
			n := guardDelta(func() {
				for _, hdr := range [][]byte{
					{zFlagLong, 0x40, 0, 0, 0, 0, 0, 0, 0},                      // 2^62, last frame
					{zFlagLong | zFlagMore, 0x40, 0, 0, 0, 0, 0, 0, 0},          // 2^62 with MORE
					{zFlagLong | zFlagCommand, 0x40, 0, 0, 0, 0, 0, 0, 0},       // a 2^62 command
					{zFlagLong, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // 2^63-1
					{zFlagLong, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // 2^64-1
				} {
					p := dialRaw(t, h.addr)
					p.handshake(t)
					p.write(t, hdr)
					p.closedByServer(t, 3*time.Second, fmt.Sprintf("header % x", hdr))
					p.close()
				}
			}, func(s guard.Stats) int64 { return s.FrameTooLarge })
			if n < 5 {
				t.Fatalf("guard counted %d oversized frames, want 5", n)
			}
		}},

		{"tcp/oversized-frames", func(t *testing.T, h *hostileEnv) {
			// A frame exactly at the limit passes the transport; it is not
			// a ZSND message, so the server answers ERROR 400 and goes on.
			p := dialRaw(t, h.addr)
			p.handshake(t)
			p.write(t, zFrame(0, make([]byte, hFrameLimit)))
			m := p.expect(t, 3*time.Second)
			if e, ok := m.(*protocol.Error); !ok || e.Code != protocol.CodeBadRequest {
				t.Fatalf("frame at the limit: %T %+v", m, m)
			}
			// One byte more: the connection is closed before the body.
			n := guardDelta(func() {
				p.write(t, zFrame(0, make([]byte, hFrameLimit+1))[:9])
				p.closedByServer(t, 3*time.Second, "frame of limit+1")
			}, func(s guard.Stats) int64 { return s.FrameTooLarge })
			p.close()
			if n < 1 {
				t.Fatal("the guard did not count the oversized frame")
			}
			// A message whose frames are each allowed but whose total is not,
			// and a message of 1000 one-byte frames.
			for name, msg := range map[string][]byte{
				"5 frames of 64 KiB": zMsg(make([]byte, hFrameLimit), make([]byte, hFrameLimit), make([]byte, hFrameLimit), make([]byte, hFrameLimit), make([]byte, hFrameLimit)),
				"1000 frames":        zMsg(bytes.Split(bytes.Repeat([]byte("x,"), 1000), []byte(","))...),
			} {
				p := dialRaw(t, h.addr)
				p.handshake(t)
				p.c.SetWriteDeadline(time.Now().Add(3 * time.Second))
				p.c.Write(msg) // may fail half-way: the server closes early
				p.closedByServer(t, 3*time.Second, name)
				p.close()
			}
		}},

		{"tcp/reserved-flag-bits", func(t *testing.T, h *hostileEnv) {
			for _, fl := range []byte{0x08, 0x10, 0x80, 0xf8} {
				p := dialRaw(t, h.addr)
				p.handshake(t)
				p.write(t, []byte{fl, 6, 'Z', 'S', 'N', 'D', 1, 1})
				p.closedByServer(t, 3*time.Second, fmt.Sprintf("flags %#x", fl))
				p.close()
			}
		}},

		{"tcp/zmtp-commands", func(t *testing.T, h *hostileEnv) {
			// ZMTP commands other than a heartbeat are not ZSND messages: the
			// server ignores them and the connection stays usable.
			p := dialRaw(t, h.addr)
			defer p.close()
			p.handshake(t)
			p.write(t, zCommand("PING", []byte{0, 10, 'c', 't', 'x'}))
			p.write(t, zCommand("PONG", []byte("ctx")))
			p.write(t, zCommand("SUBSCRIBE", []byte("topic")))
			p.write(t, zCommand("CANCEL", []byte("topic")))
			p.write(t, zCommand("ERROR", []byte("\x05oops!")))
			p.write(t, zReady("Socket-Type", "DEALER"))
			p.write(t, zCommand("XYZZY", randBytes(200)))
			p.write(t, zFrame(zFlagCommand, nil))                          // empty command
			p.write(t, zFrame(zFlagCommand, []byte{200, 'A'}))             // name longer than the body
			p.write(t, zFrame(zFlagCommand|zFlagMore, []byte("\x04PING"))) // a command with MORE
			p.write(t, zFrame(0, []byte("tail")))
			p.write(t, zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20}))
			if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdWelcome {
				t.Fatalf("HELLO after commands: %T %+v", m, m)
			}
			p.write(t, zsnd(&protocol.Bye{Code: protocol.CodeOK}))
		}},

		{"tcp/half-frame-stall", func(t *testing.T, h *hostileEnv) {
			var peers []*rawPeer
			for i := range 20 {
				p := dialRaw(t, h.addr)
				p.handshake(t)
				if i%2 == 0 {
					// A session whose next message never completes.
					p.write(t, zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20}))
					p.expect(t, 3*time.Second)
				}
				switch i % 3 {
				case 0: // body cut short
					p.write(t, append([]byte{zFlagMore, 6}, "ZSN"...))
				case 1: // long header cut short
					p.write(t, []byte{zFlagLong, 0, 0, 0})
				case 2: // flags only
					p.write(t, []byte{zFlagMore})
				}
				peers = append(peers, p)
			}
			h.fetchOK(t, "with 20 half frames pending")
			// The server gives up on them by itself after its idle timeout.
			idle := hPeerTimeout + hHeartbeat
			peers[1].closedByServer(t, idle+2*time.Second, "half frame")
			for _, p := range peers {
				p.close()
			}
		}},

		{"tcp/200-idle-connections", func(t *testing.T, h *hostileEnv) {
			peers := make([]*rawPeer, 200)
			for i := range peers {
				peers[i] = dialRaw(t, h.addr)
			}
			h.fetchOK(t, "with 200 idle connections")
			// The guard closes them after the handshake timeout.
			for i, p := range peers {
				p.closedByServer(t, hHandshake+3*time.Second, fmt.Sprintf("idle connection %d", i))
				p.close()
			}
		}},

		{"tcp/2000-connects-and-disconnects", func(t *testing.T, h *hostileEnv) {
			stop := time.Now().Add(60 * time.Second)
			var churned atomic.Int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				hs := append(zGreeting(), zReady("Socket-Type", "DEALER")...)
				for i := 0; i < 2000 && time.Now().Before(stop); i++ {
					c, err := net.DialTimeout("tcp", h.addr, time.Second)
					if err != nil {
						continue
					}
					c.SetDeadline(time.Now().Add(time.Second))
					switch i % 4 {
					case 0: // close at once
					case 1: // reset at once
						c.(*net.TCPConn).SetLinger(0)
					case 2: // half a greeting, then reset
						c.Write(hs[:20])
						c.(*net.TCPConn).SetLinger(0)
					case 3: // a whole handshake, then gone
						c.Write(hs)
					}
					c.Close()
					churned.Add(1)
				}
			}()
			time.Sleep(100 * time.Millisecond)
			h.fetchOK(t, "during connection churn")
			<-done
			if n := churned.Load(); n < 2000 {
				t.Fatalf("only %d connections churned", n)
			}
		}},

		{"tcp/libzmq-style-slow-handshake", func(t *testing.T, h *hostileEnv) {
			p := dialRaw(t, h.addr)
			defer p.close()
			g := zGreeting()
			p.write(t, g[:10]) // libzmq sends its signature and waits
			wait := h.fetchDuring(t)
			p.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			sg := make([]byte, 64)
			if _, err := io.ReadFull(p.r, sg); err != nil {
				t.Fatalf("the server did not send its greeting to a partial one: %v", err)
			}
			rest := append(g[10:], zReady("Socket-Type", "DEALER", "Identity", "")...)
			for len(rest) > 0 {
				n := min(7, len(rest))
				p.write(t, rest[:n])
				rest = rest[n:]
				time.Sleep(25 * time.Millisecond)
			}
			fl, body, err := p.readFrame()
			if err != nil || fl&zFlagCommand == 0 || !strings.HasPrefix(string(body), "\x05READY") {
				t.Fatalf("server READY: %#x %q %v", fl, body, err)
			}
			p.write(t, zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20}))
			if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdWelcome {
				t.Fatalf("HELLO after a slow handshake: %T %+v", m, m)
			}
			p.write(t, zsnd(&protocol.Bye{Code: protocol.CodeOK}))
			wait()
		}},

		{"tcp/credit-max-then-stop-reading", func(t *testing.T, h *hostileEnv) {
			before := guard.StatsFrom(context.Background()).WriteStalls
			p := dialRaw(t, h.addr)
			p.handshake(t)
			p.write(t, zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MaxChunkSize}))
			p.expect(t, 3*time.Second)
			p.write(t, zsnd(&protocol.Credit{Limit: math.MaxUint64}))
			p.write(t, zsnd(&protocol.Get{Request: 1, Name: "big.bin"}))
			// Never read again. Let the buffers fill, then fetch: the
			// server is stuck writing to this peer until it evicts it.
			time.Sleep(300 * time.Millisecond)
			h.fetchOK(t, "while a peer has stopped reading")
			eventually(t, 5*time.Second, "the stalled peer evicted", func() bool {
				return guard.StatsFrom(context.Background()).WriteStalls > before
			})
		}},

		{"tcp/ping-flood-not-reading", func(t *testing.T, h *hostileEnv) {
			p := dialRaw(t, h.addr)
			p.handshake(t)
			p.write(t, zsnd(&protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20}))
			p.expect(t, 3*time.Second)
			floodNotReading(t, h, p, zsnd(&protocol.Ping{Token: 42}))
		}},

		{"tcp/sessionless-flood-not-reading", func(t *testing.T, h *hostileEnv) {
			// Every message outside a session earns an ERROR: a flood of
			// them from a peer that never reads.
			p := dialRaw(t, h.addr)
			p.handshake(t)
			floodNotReading(t, h, p, zsnd(&protocol.Get{Request: 1, Name: "small.bin"}))
		}},
	}
}

// ---------------------------------------------------------------------
// Raw zmq4 sockets: ZSND messages that a real receiver would never send.

func hello() *protocol.Hello {
	return &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20, PeerID: "hostile"}
}

func zmqCases() []hostileCase {
	return []hostileCase{
		{"zmq/unknown-commands", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			// Without a session every message but HELLO, BYE and ERROR gets
			// 400 "no session", whatever its command octet (5.2.1).
			for _, c := range []byte{0x00, 0x05, 0x14, 0x7f, 0xff} {
				p.sendFrames(t, protocol.CommandFrame(1, protocol.Command(c)), []byte{1, 2, 3})
				e := p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("command %#x without a session", c))
				if !strings.HasPrefix(e.Message, "no session") {
					t.Fatalf("command %#x without a session: %q", c, e.Message)
				}
			}
			p.hello(t, 1<<20)
			p.sendFrames(t, protocol.CommandFrame(1, 0x7f), nil)
			p.expectError(t, 0, protocol.CodeUnknownCommand, "unknown command in a session")
			p.send(t, &protocol.Ping{Token: 1})
			p.expectError(t, 0, protocol.CodeBadRequest, "PING after the session was dropped")
		}},

		{"zmq/wrong-protocol-versions", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			// HELLO's command frame must say version 1.
			f := protocol.Encode(1, hello())
			f[0] = protocol.CommandFrame(2, protocol.CmdHello)
			// One that does not gets 505 naming the server's range (4).
			checkRange := func(e *protocol.Error, what string) {
				t.Helper()
				lo, hi, ok := protocol.ParseVersionMessage(e.Message)
				if !ok || lo != protocol.MinVersion || hi != protocol.MaxVersion {
					t.Fatalf("%s: 505 message %q does not name the range %d..%d", what, e.Message, protocol.MinVersion, protocol.MaxVersion)
				}
			}
			for _, v := range []uint8{0, 2, 255} {
				f[0] = protocol.CommandFrame(v, protocol.CmdHello)
				p.sendFrames(t, f...)
				checkRange(p.expectError(t, 0, protocol.CodeVersion, fmt.Sprintf("HELLO at frame version %d", v)), "HELLO frame")
			}
			above := protocol.MaxVersion + 1
			for _, r := range [][2]uint8{{above, 9}, {0, 0}, {9, 9}, {above, 255}} {
				p.send(t, &protocol.Hello{MinVersion: r[0], MaxVersion: r[1], MaxChunk: 1 << 20})
				checkRange(p.expectError(t, 0, protocol.CodeVersion, fmt.Sprintf("HELLO %d..%d", r[0], r[1])), "HELLO range")
			}
			// Without a session, a message at another version is only a
			// message without a session.
			f = protocol.Encode(1, &protocol.Ping{Token: 7})
			f[0] = protocol.CommandFrame(9, protocol.CmdPing)
			p.sendFrames(t, f...)
			p.expectError(t, 0, protocol.CodeBadRequest, "PING at version 9 without a session")
			if st := h.srv.Stats(); st.Sessions != 0 {
				t.Fatalf("sessions after refused HELLOs: %+v", st)
			}
			// In a session, any message at another version drops it.
			for _, v := range []uint8{0, 2, 9, 255} {
				p.hello(t, 1<<20)
				f := protocol.Encode(1, &protocol.Ping{Token: 7})
				f[0] = protocol.CommandFrame(v, protocol.CmdPing)
				p.sendFrames(t, f...)
				checkRange(p.expectError(t, 0, protocol.CodeVersion, fmt.Sprintf("PING at version %d", v)), "PING")
				p.send(t, &protocol.Ping{Token: 8})
				p.expectError(t, 0, protocol.CodeBadRequest, "the session must be gone")
			}
		}},

		{"zmq/hello-min-above-max", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			for _, r := range [][2]uint8{{1, 0}, {2, 1}, {255, 1}} {
				p.send(t, &protocol.Hello{MinVersion: r[0], MaxVersion: r[1], MaxChunk: 1 << 20})
				p.expectError(t, 0, protocol.CodeVersion, fmt.Sprintf("HELLO %d..%d", r[0], r[1]))
			}
			// Chunk sizes the server cannot honour.
			for _, c := range []uint32{0, 1, protocol.MinChunkSize - 1} {
				p.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: c})
				p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("HELLO max-chunk %d", c))
			}
			if st := h.srv.Stats(); st.Sessions != 0 {
				t.Fatalf("sessions after refused HELLOs: %+v", st)
			}
		}},

		{"zmq/messages-before-hello", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			for _, m := range []protocol.Message{
				&protocol.Get{Request: 1, Name: "small.bin"},
				&protocol.Credit{Limit: math.MaxUint64},
				&protocol.Cancel{Request: 1},
				&protocol.Ping{Token: 1},
				&protocol.Pong{Token: 1},
			} {
				p.send(t, m)
				p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("%v before HELLO", m.Command()))
			}
			// BYE and ERROR end a session; without one there is nothing to
			// answer (and answering an ERROR could start a loop).
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
			p.silent(t, 300*time.Millisecond, "BYE without a session")
			p.send(t, &protocol.Error{Code: protocol.CodeBadRequest, Message: "x"})
			p.silent(t, 300*time.Millisecond, "ERROR without a session")
			// By the command octet alone, whatever the version or content
			// (PROTOCOL.md 5.2.1).
			for _, frames := range map[string][][]byte{
				"ERROR at version 9":       {protocol.CommandFrame(9, protocol.CmdError), {0, 0, 0, 0}},
				"ERROR, a 2000-octet text": {protocol.CommandFrame(1, protocol.CmdError), make([]byte, 2000)},
				"BYE at version 0":         {protocol.CommandFrame(0, protocol.CmdBye), {0, 1}},
				"BYE with no body":         {protocol.CommandFrame(1, protocol.CmdBye)},
				"ERROR with three frames":  {protocol.CommandFrame(1, protocol.CmdError), {1}, {2}},
			} {
				p.sendFrames(t, frames...)
			}
			p.silent(t, 300*time.Millisecond, "malformed BYE or ERROR without a session")
			if st := h.srv.Stats(); st.Sessions != 0 || st.OpenFiles != 0 {
				t.Fatalf("state created before HELLO: %+v", st)
			}
		}},

		{"zmq/get-bad-names", func(t *testing.T, h *hostileEnv) {
			// If the server blocks opening the FIFO, give it a writer at the
			// end so the rest of the table can run.
			defer func() {
				if f, err := os.OpenFile(h.fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}()
			p := dialZ(t, h.ep, true)
			p.hello(t, 1<<20)
			p.send(t, &protocol.Credit{Limit: 1 << 30})
			long := strings.Repeat("d/", 2000) + "x" // 4001 octets, valid
			cases := []struct {
				name string
				code protocol.Code
			}{
				{"../small.bin", protocol.CodeRefused},
				{"tree/../small.bin", protocol.CodeRefused},
				{"tree/../../../../etc/passwd", protocol.CodeRefused},
				{"/etc/passwd", protocol.CodeRefused},
				{"//etc/passwd", protocol.CodeRefused},
				{"tree/./a.txt", protocol.CodeRefused},
				{"tree//a.txt", protocol.CodeRefused},
				{"tree/a.txt/", protocol.CodeRefused},
				{"tree\\a.txt", protocol.CodeRefused},
				{"small.bin\x00.txt", protocol.CodeRefused},
				{"tree/a\x01.txt", protocol.CodeRefused},
				{"", protocol.CodeRefused},
				{strings.Repeat("x", 256), protocol.CodeRefused},
				{"tree/link-out", protocol.CodeRefused},       // symlink to a file outside
				{"tree/dir-out/secret", protocol.CodeRefused}, // through a symlinked directory
				{"tree/fifo", protocol.CodeRefused},           // must not block the server
				{"tree/sub", protocol.CodeRefused},            // a directory
				{"tree", protocol.CodeRefused},                // the served directory itself
				{"nope.bin", protocol.CodeNotFound},
				{"small.bin/x", protocol.CodeNotFound},
				{"tree/sub/nope", protocol.CodeNotFound},
				{long, protocol.CodeNotFound},
			}
			for i, c := range cases {
				req := uint32(i + 1)
				// The decoder refuses invalid UTF-8 before the server sees it;
				// every name here is valid UTF-8, so each reaches the lookup.
				p.send(t, &protocol.Get{Request: req, Name: c.name})
				e := p.expectError(t, req, c.code, fmt.Sprintf("GET %.60q", c.name))
				if len(e.Message) > protocol.MaxTextLen {
					t.Fatalf("GET %.60q: error message of %d octets", c.name, len(e.Message))
				}
			}
			// The session survived all of it.
			p.send(t, &protocol.Get{Request: 1000, Name: "tree/sub/b.txt"})
			if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdFile {
				t.Fatalf("GET after refusals: %T %+v", m, m)
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/thousands-of-gets", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			p.hello(t, 1<<20)
			// No credit: the first GET stays in progress, the rest queue.
			const n = 5000
			for i := range n {
				p.send(t, &protocol.Get{Request: uint32(i + 1), Name: "small.bin"})
			}
			files, refused := 0, 0
			start := time.Now()
			last := time.Now() // of the last answer (PINGs are not answers)
			for time.Since(last) < time.Second {
				frames := p.recv(time.Second)
				if frames == nil {
					break
				}
				m, _, err := protocol.Decode(frames)
				if err != nil {
					t.Fatalf("undecodable answer: %v", err)
				}
				switch m := m.(type) {
				case *protocol.File:
					files++
					last = time.Now()
				case *protocol.Error:
					if m.Code != protocol.CodeTooMany {
						t.Fatalf("GET answered %+v", m)
					}
					refused++
					last = time.Now()
				case *protocol.Ping:
				default:
					t.Fatalf("unexpected %T %+v after %v (%d FILE, %d refused)", m, m, time.Since(start), files, refused)
				}
			}
			if accepted := n - refused; files != 1 || accepted != hMaxRequests {
				t.Fatalf("%d FILE, %d refused: the server holds %d requests of one session, limit %d", files, refused, accepted, hMaxRequests)
			}
			if st := h.srv.Stats(); st.OpenFiles != 1 {
				t.Fatalf("open files %d for one session", st.OpenFiles)
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/credit-max-then-stop-reading", func(t *testing.T, h *hostileEnv) {
			// A zmq4 DEALER that never calls Recv: zmq4 reads 10 messages
			// ahead, then the kernel buffers fill.
			before := guard.StatsFrom(context.Background()).WriteStalls
			p := dialZ(t, h.ep, false)
			p.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MaxChunkSize})
			p.send(t, &protocol.Credit{Limit: math.MaxUint64})
			p.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
			time.Sleep(300 * time.Millisecond)
			h.fetchOK(t, "while a zmq4 peer has stopped reading")
			eventually(t, 5*time.Second, "the stalled peer evicted", func() bool {
				return guard.StatsFrom(context.Background()).WriteStalls > before
			})
		}},

		{"zmq/ping-flood", func(t *testing.T, h *hostileEnv) {
			// PINGs far faster than any heartbeat: a trickle is answered,
			// the session stays usable, and others are served.
			p := dialZ(t, h.ep, true)
			p.hello(t, 1<<20)
			const n = 20000
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				for i := range n {
					if p.sock.Send(zmq4.NewMsgFrom(protocol.Encode(1, &protocol.Ping{Token: uint64(i)})...)) != nil {
						return
					}
				}
			}()
			wait := h.fetchDuring(t)
			start := time.Now()
			<-sent
			p.send(t, &protocol.Get{Request: 1, Name: "nope"})
			pongs := 0
			for {
				m := p.expect(t, 5*time.Second)
				if _, ok := m.(*protocol.Pong); ok {
					pongs++
					continue
				}
				if e, ok := m.(*protocol.Error); ok && e.Request == 1 && e.Code == protocol.CodeNotFound {
					break
				}
			}
			wait()
			seconds := int(time.Since(start)/time.Second) + 2
			if pongs == 0 || pongs > 50*seconds {
				t.Fatalf("%d PONGs for %d PINGs in less than %ds", pongs, n, seconds)
			}
			t.Logf("%d PONGs for %d PINGs", pongs, n)
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/duplicate-routing-ids", func(t *testing.T, h *hostileEnv) {
			// A second connection announcing a live routing id is refused
			// in the handshake (zmq4 alone would deliver the first one's
			// traffic to both); the first keeps its session and transfer.
			id := zmq4.WithID(zmq4.SocketIdentity("same-id"))
			a := dialZ(t, h.ep, true, id)
			a.hello(t, 1<<20)
			ctx, cancel := context.WithCancel(context.Background())
			b := zmq4.NewDealer(ctx, zmq4.WithLogger(quietLog), id)
			if err := b.Dial(h.ep); err == nil {
				t.Fatal("a second connection with a live routing id completed the handshake")
			}
			b.Close()
			cancel()
			a.send(t, &protocol.Credit{Limit: 1 << 30})
			a.send(t, &protocol.Get{Request: 2, Name: "small.bin"})
			wait := h.fetchDuring(t)
			for {
				m := a.expect(t, 5*time.Second)
				if m.Command() == protocol.CmdEnd {
					break
				}
				if m.Command() == protocol.CmdError {
					t.Fatalf("first connection: %+v", m)
				}
			}
			wait()
			a.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/symlinks", func(t *testing.T, h *hostileEnv) {
			// Section 6: a symbolic link below a served directory is
			// followed when it is relative and every step of its
			// resolution stays inside the directory; otherwise 403.
			p := dialZ(t, h.ep, true)
			p.hello(t, 1<<20)
			p.send(t, &protocol.Credit{Limit: 1 << 30})
			for i, c := range []struct {
				name string
				code protocol.Code // 0: served
			}{
				{"tree/link-in", 0},
				{"tree/sub-link/b.txt", 0},
				{"tree/abs-in", protocol.CodeRefused},
				{"tree/up-in", protocol.CodeRefused},
				{"tree/link-out", protocol.CodeRefused},
				{"tree/dir-out/secret", protocol.CodeRefused},
				{"tree/sub-link", protocol.CodeRefused}, // a directory
			} {
				req := uint32(i + 1)
				p.send(t, &protocol.Get{Request: req, Name: c.name})
				if c.code != 0 {
					p.expectError(t, req, c.code, "GET "+c.name)
					continue
				}
				for {
					m := p.expect(t, 3*time.Second)
					if e, ok := m.(*protocol.Error); ok {
						t.Fatalf("GET %s: %+v", c.name, e)
					}
					if e, ok := m.(*protocol.End); ok && e.Request == req {
						break
					}
				}
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/duplicate-request-ids", func(t *testing.T, h *hostileEnv) {
			// Request ids are unique among outstanding requests (5.2.3): a
			// GET that reuses the id of the request in progress or of a
			// queued one drops the session with 400.
			p := dialZ(t, h.ep, true)
			for _, dup := range []uint32{1, 2} {
				p.hello(t, 1<<20)
				p.send(t, &protocol.Get{Request: 1, Name: "small.bin"}) // in progress (no credit)
				if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdFile {
					t.Fatalf("GET 1: %T %+v", m, m)
				}
				p.send(t, &protocol.Get{Request: 2, Name: "small.bin"}) // queued
				p.send(t, &protocol.Get{Request: dup, Name: "small.bin"})
				p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("GET reusing id %d", dup))
				eventually(t, time.Second, "the session dropped", func() bool { return h.srv.Stats().Sessions == 0 })
			}
			// Once a request is over its id is free again.
			p.hello(t, 1<<20)
			p.send(t, &protocol.Credit{Limit: 1 << 20})
			for range 2 {
				p.send(t, &protocol.Get{Request: 7, Name: "small.bin"})
				for p.expect(t, 3*time.Second).Command() != protocol.CmdEnd {
				}
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/second-hello-resets", func(t *testing.T, h *hostileEnv) {
			// A second HELLO ends the session as if every request were
			// cancelled and starts a new one from nothing: no credit, no
			// requests (5.2.2). Nothing of the old session follows WELCOME.
			p := dialZ(t, h.ep, true)
			p.hello(t, 1<<20)
			p.send(t, &protocol.Credit{Limit: 8 << 20})
			p.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
			p.send(t, &protocol.Get{Request: 2, Name: "big.bin"})
			for p.expect(t, 3*time.Second).Command() != protocol.CmdChunk {
			}
			p.send(t, hello())
			for {
				m := p.expect(t, 3*time.Second)
				if m.Command() == protocol.CmdWelcome {
					break
				}
				if m.Command() != protocol.CmdChunk && m.Command() != protocol.CmdPing {
					t.Fatalf("before the new WELCOME: %T %+v", m, m)
				}
			}
			// No credit yet: FILE, then nothing; request 2 is gone too.
			p.send(t, &protocol.Get{Request: 3, Name: "small.bin"})
			if f, ok := p.expect(t, 3*time.Second).(*protocol.File); !ok || f.Request != 3 {
				t.Fatal("no FILE for the new session's GET")
			}
			deadline := time.Now().Add(500 * time.Millisecond)
			for {
				frames := p.recv(time.Until(deadline))
				if frames == nil {
					break
				}
				if m, _, _ := protocol.Decode(frames); m == nil || m.Command() != protocol.CmdPing {
					t.Fatalf("after the new WELCOME, without credit: %T %+v", m, m)
				}
			}
			p.send(t, &protocol.Credit{Limit: 1 << 20})
			for {
				m := p.expect(t, 3*time.Second)
				if e, ok := m.(*protocol.End); ok {
					if e.Request != 3 {
						t.Fatalf("END for request %d", e.Request)
					}
					break
				}
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/server-only-commands", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			var hash protocol.Hash
			for _, m := range []protocol.Message{
				&protocol.Welcome{Version: 1, ChunkSize: 1 << 20, PeerID: "fake"},
				&protocol.File{Request: 1, Size: 10, Name: "small.bin"},
				&protocol.Chunk{Request: 1, Offset: 0, Hash: hash, Data: []byte("0123456789")},
				&protocol.End{Request: 1, Size: 10, Hash: hash},
			} {
				p.send(t, m)
				p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("%v without a session", m.Command()))
				p.hello(t, 1<<20)
				p.send(t, m)
				p.expectError(t, 0, protocol.CodeBadRequest, fmt.Sprintf("%v in a session", m.Command()))
				eventually(t, time.Second, "the session dropped", func() bool { return h.srv.Stats().Sessions == 0 })
			}
		}},

		{"zmq/malformed-messages", func(t *testing.T, h *hostileEnv) {
			p := dialZ(t, h.ep, true)
			good := protocol.Encode(1, &protocol.Get{Request: 1, Name: "small.bin"})
			inputs := map[string][][]byte{
				"one frame":             {good[0]},
				"four frames":           {good[0], good[1], []byte("x"), []byte("y")},
				"empty frames":          {{}, {}},
				"short command frame":   {[]byte("ZSND"), good[1]},
				"long command frame":    {[]byte("ZSND\x01\x02\x00"), good[1]},
				"wrong signature":       {[]byte("ZMTP\x01\x02"), good[1]},
				"truncated header":      {good[0], good[1][:10]},
				"trailing header bytes": {good[0], append(append([]byte{}, good[1]...), 0)},
				"request 0":             protocol.Encode(1, &protocol.Get{Request: 0, Name: "small.bin"}),
				"name length past end":  {good[0], append(append([]byte{}, good[1][:28]...), 0xff, 0xff, 'a')},
				"invalid UTF-8 name":    {good[0], append(append([]byte{}, good[1][:28]...), 0, 2, 0xc3, 0x28)},
				"header over 8 KiB":     {good[0], make([]byte, protocol.MaxHeaderLen+1)},
				"name of 4097 octets":   protocol.Encode(1, &protocol.Get{Request: 1, Name: strings.Repeat("n", protocol.MaxNameLen+1)}),
				"HELLO peer id of 2000": {protocol.CommandFrame(1, protocol.CmdHello), append([]byte{1, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0x07, 0xd0}, make([]byte, 2000)...)},
			}
			for name, frames := range inputs {
				p.sendFrames(t, frames...)
				p.expectError(t, 0, protocol.CodeBadRequest, name)
			}
			// The same inside a session drops it.
			for name, frames := range inputs {
				p.hello(t, 1<<20)
				p.sendFrames(t, frames...)
				p.expectError(t, 0, protocol.CodeBadRequest, name+" in a session")
				eventually(t, time.Second, "the session dropped", func() bool { return h.srv.Stats().Sessions == 0 })
			}
		}},

		{"zmq/get-cancel-churn", func(t *testing.T, h *hostileEnv) {
			// GET then CANCEL as fast as possible, asking each time to resume
			// at the end of the file (so the producer goes straight to the
			// whole-file hash): the session must never hold more than one
			// source file, whatever its earlier producers are still doing.
			p := dialZ(t, h.ep, true)
			p.hello(t, protocol.MinChunkSize) // a chunk size no one else uses
			p.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
			f, ok := p.expect(t, 3*time.Second).(*protocol.File)
			if !ok {
				t.Fatal("no FILE")
			}
			p.send(t, &protocol.Cancel{Request: 1})
			peak := sampleOpenFiles(h)
			const n = 100
			for i := range n {
				req := uint32(i + 2)
				p.send(t, &protocol.Get{Request: req, Name: "big.bin", Offset: f.Size, Tag: f.Tag})
				p.send(t, &protocol.Cancel{Request: req})
			}
			for p.recv(500*time.Millisecond) != nil {
			}
			if n := peak(); n > 1 {
				t.Fatalf("one session held %d source files open at once", n)
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},

		{"zmq/hello-replaces-session-churn", func(t *testing.T, h *hostileEnv) {
			// Each HELLO replaces the session and aborts its transfer while
			// its producer is reading ahead.
			p := dialZ(t, h.ep, true)
			peak := sampleOpenFiles(h)
			for i := range 100 {
				p.send(t, hello())
				for p.expect(t, 3*time.Second).Command() != protocol.CmdWelcome {
				}
				p.send(t, &protocol.Credit{Limit: 3 << 20})
				p.send(t, &protocol.Get{Request: uint32(i + 1), Name: "big.bin"})
				for p.expect(t, 3*time.Second).Command() != protocol.CmdChunk {
				}
			}
			p.send(t, &protocol.Bye{Code: protocol.CodeOK})
			for p.recv(300*time.Millisecond) != nil {
			}
			if n := peak(); n > 1 {
				t.Fatalf("one identity held %d source files open at once", n)
			}
		}},

		{"tcp/session-flood-then-vanish", func(t *testing.T, h *hostileEnv) {
			// Fill every session slot from connections that then disappear
			// without BYE, and whose READY carries no Identity. The guard
			// gives each an identity of its own and reports its close, so
			// the slots free at once and a legitimate receiver gets in.
			for i := range hMaxSessions + 8 {
				p := dialRaw(t, h.addr)
				p.handshake(t)
				p.write(t, zsnd(hello()))
				m := p.expect(t, 3*time.Second)
				if m.Command() != protocol.CmdWelcome && m.Command() != protocol.CmdError {
					t.Fatalf("HELLO %d: %T %+v", i, m, m)
				}
				p.close()
			}
			eventually(t, 2*time.Second, "sessions of vanished identity-less peers dropped", func() bool {
				return h.srv.Stats().Sessions == 0
			})
			h.fetchOK(t, "after every session slot was held by a vanished peer")
		}},

		{"zmq/session-flood-then-vanish", func(t *testing.T, h *hostileEnv) {
			// The same with zmq4 peers, which announce an Identity: the
			// guard reports each closed connection and its session goes at
			// once, long before the peer timeout.
			for i := range hMaxSessions + 8 {
				p := dialZ(t, h.ep, true)
				p.send(t, hello())
				if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdWelcome && m.Command() != protocol.CmdError {
					t.Fatalf("HELLO %d: %T %+v", i, m, m)
				}
				p.close()
			}
			deadline := time.Now().Add(2 * time.Second)
			for h.srv.Stats().Sessions != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("sessions of closed connections still held: %+v", h.srv.Stats())
				}
				time.Sleep(5 * time.Millisecond)
			}
			h.fetchOK(t, "after a flood of vanished peers")
		}},

		{"zmq/identity-impersonation", func(t *testing.T, h *hostileEnv) {
			// A peer that announces the routing id of a live session is
			// refused in the ZMTP handshake (zmq4 alone would send it that
			// session's traffic); the owner keeps working.
			id := zmq4.WithID(zmq4.SocketIdentity("victim"))
			v := dialZ(t, h.ep, true, id)
			v.hello(t, 1<<20)
			v.send(t, &protocol.Credit{Limit: 1 << 30})
			if n := guardDelta(func() {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				x := zmq4.NewDealer(ctx, zmq4.WithLogger(quietLog), id)
				defer x.Close()
				if err := x.Dial(h.ep); err == nil {
					t.Fatal("a second peer with a live routing id completed the handshake")
				}
			}, func(s guard.Stats) int64 { return s.DuplicateIdentity }); n != 1 {
				t.Fatalf("DuplicateIdentity grew by %d", n)
			}
			v.send(t, &protocol.Get{Request: 1, Name: "small.bin"})
			got := map[protocol.Command]int{}
			for {
				m := v.expect(t, 5*time.Second)
				got[m.Command()]++
				if m.Command() == protocol.CmdEnd || m.Command() == protocol.CmdError {
					break
				}
			}
			if got[protocol.CmdEnd] != 1 {
				t.Fatalf("victim's transfer: %v", got)
			}
			v.send(t, &protocol.Bye{Code: protocol.CodeOK})
		}},
	}
}
