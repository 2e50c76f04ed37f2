package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/goroutines"
	"github.com/zsend/zsend/protocol"
)

// This file holds hand-written peers for the hostile tests: a raw ZMTP 3.0
// client on a plain net.Conn (every byte chosen by the test) and a thin
// wrapper around a raw zmq4 DEALER.

// peers tracks the hand-written peers a hostile case opened, so the table
// can close them before it checks that the server released everything
// (t.Cleanup would run only after that check).
var peers struct {
	mu     sync.Mutex
	closes []func()
}

func trackPeer(close func()) {
	peers.mu.Lock()
	peers.closes = append(peers.closes, close)
	peers.mu.Unlock()
}

// closePeers closes every tracked peer.
func closePeers() {
	peers.mu.Lock()
	closes := peers.closes
	peers.closes = nil
	peers.mu.Unlock()
	for _, c := range closes {
		c()
	}
}

// ---- ZMTP 3.0 wire pieces (RFC 23), built by hand ----

const (
	zFlagMore    = 0x01
	zFlagLong    = 0x02
	zFlagCommand = 0x04
)

// zGreeting is a ZMTP 3.0 NULL greeting, as-server 0.
func zGreeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:32], "NULL")
	return g
}

// zFrame encodes one frame, choosing the short or long form.
func zFrame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		b := []byte{flags | zFlagLong}
		b = binary.BigEndian.AppendUint64(b, uint64(len(body)))
		return append(b, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// zCommand encodes a ZMTP command frame: a name and its body.
func zCommand(name string, body []byte) []byte {
	b := append([]byte{byte(len(name))}, name...)
	return zFrame(zFlagCommand, append(b, body...))
}

// zReady encodes a READY command with the given property name/value pairs.
func zReady(props ...string) []byte {
	var b []byte
	for i := 0; i+1 < len(props); i += 2 {
		b = append(b, byte(len(props[i])))
		b = append(b, props[i]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(props[i+1])))
		b = append(b, props[i+1]...)
	}
	return zCommand("READY", b)
}

// zMsg encodes a multipart message: MORE on every frame but the last.
func zMsg(frames ...[]byte) []byte {
	var b []byte
	for i, f := range frames {
		var fl byte
		if i < len(frames)-1 {
			fl = zFlagMore
		}
		b = append(b, zFrame(fl, f)...)
	}
	return b
}

// zsnd encodes a ZSND message at version 1 as ZMTP bytes.
func zsnd(m protocol.Message) []byte { return zMsg(protocol.Encode(protocol.Version1, m)...) }

// ---- raw TCP peer ----

// rawPeer is a TCP connection to the server driven byte by byte.
type rawPeer struct {
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawPeer {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	trackPeer(func() { c.Close() })
	return &rawPeer{c: c, r: bufio.NewReader(c)}
}

func (p *rawPeer) close() { p.c.Close() }

func (p *rawPeer) write(t *testing.T, b []byte) {
	t.Helper()
	p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// readFrame reads one ZMTP frame (flags, body); bodies above 16 MiB are an
// error, so a broken server cannot make the test allocate without bound.
func (p *rawPeer) readFrame() (byte, []byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	size := uint64(hdr[1])
	if hdr[0]&zFlagLong != 0 {
		var l [8]byte
		l[0] = hdr[1]
		if _, err := io.ReadFull(p.r, l[1:]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(l[:])
	}
	if size > 16<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", size)
	}
	body := make([]byte, size)
	_, err := io.ReadFull(p.r, body)
	return hdr[0], body, err
}

// handshake sends a NULL greeting and a DEALER READY, and reads the
// server's greeting and READY.
func (p *rawPeer) handshake(t *testing.T, props ...string) {
	t.Helper()
	if len(props) == 0 {
		props = []string{"Socket-Type", "DEALER"}
	}
	p.write(t, append(zGreeting(), zReady(props...)...))
	p.readHandshake(t)
}

func (p *rawPeer) readHandshake(t *testing.T) {
	t.Helper()
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer p.c.SetReadDeadline(time.Time{})
	g := make([]byte, 64)
	if _, err := io.ReadFull(p.r, g); err != nil {
		t.Fatalf("server greeting: %v", err)
	}
	if g[0] != 0xff || g[9] != 0x7f || g[10] != 3 {
		t.Fatalf("server greeting % x", g[:12])
	}
	fl, body, err := p.readFrame()
	if err != nil || fl&zFlagCommand == 0 || !strings.HasPrefix(string(body), "\x05READY") {
		t.Fatalf("server READY: flags %#x body %q err %v", fl, body, err)
	}
}

// recv returns the next application message (ZMTP commands are skipped).
func (p *rawPeer) recv(d time.Duration) ([][]byte, error) {
	p.c.SetReadDeadline(time.Now().Add(d))
	defer p.c.SetReadDeadline(time.Time{})
	var frames [][]byte
	for {
		fl, body, err := p.readFrame()
		if err != nil {
			return nil, err
		}
		if fl&zFlagCommand != 0 {
			continue
		}
		frames = append(frames, body)
		if fl&zFlagMore == 0 {
			return frames, nil
		}
	}
}

// expect returns the next ZSND message, failing the test after d.
func (p *rawPeer) expect(t *testing.T, d time.Duration) protocol.Message {
	t.Helper()
	frames, err := p.recv(d)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	m, _, err := protocol.Decode(frames)
	if err != nil {
		t.Fatalf("server sent an undecodable message: %v", err)
	}
	return m
}

// closedByServer reads and discards until the server closes the
// connection; it fails the test if that takes longer than d.
func (p *rawPeer) closedByServer(t *testing.T, d time.Duration, why string) {
	t.Helper()
	p.c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, p.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server kept the connection open for %v", why, d)
	}
}

// ---- raw zmq4 DEALER ----

var quietLog = log.New(io.Discard, "", 0)

// zpeer is a raw zmq4 DEALER speaking ZSND by hand. If reading, one
// goroutine receives into in until the socket is closed.
type zpeer struct {
	sock   zmq4.Socket
	cancel context.CancelFunc
	in     chan zmq4.Msg
	done   chan struct{}
	once   sync.Once
}

func dialZ(t *testing.T, ep string, reading bool, opts ...zmq4.Option) *zpeer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts = append([]zmq4.Option{zmq4.WithLogger(quietLog), zmq4.WithDialerRetry(50 * time.Millisecond),
		zmq4.WithDialerMaxRetries(40)}, opts...)
	s := zmq4.NewDealer(ctx, opts...)
	if err := s.Dial(ep); err != nil {
		cancel()
		s.Close()
		t.Fatalf("dial %s: %v", ep, err)
	}
	p := &zpeer{sock: s, cancel: cancel, done: make(chan struct{})}
	if reading {
		p.in = make(chan zmq4.Msg, 1024)
		go func() {
			defer close(p.done)
			for {
				m, err := s.Recv()
				if err != nil {
					return
				}
				if m.Type == zmq4.CmdMsg {
					continue
				}
				select {
				case p.in <- m:
				case <-ctx.Done():
					return
				}
			}
		}()
	} else {
		close(p.done)
	}
	t.Cleanup(p.close)
	trackPeer(p.close)
	return p
}

// close closes the socket and waits for the reading goroutine.
func (p *zpeer) close() {
	p.once.Do(func() {
		p.cancel()
		p.sock.Close()
		<-p.done
	})
}

func (p *zpeer) sendFrames(t *testing.T, frames ...[]byte) {
	t.Helper()
	if err := p.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func (p *zpeer) send(t *testing.T, m protocol.Message) {
	t.Helper()
	p.sendFrames(t, protocol.Encode(protocol.Version1, m)...)
}

// recv returns the next message's frames, or nil after d.
func (p *zpeer) recv(d time.Duration) [][]byte {
	select {
	case m := <-p.in:
		return m.Frames
	case <-time.After(d):
		return nil
	}
}

// expect returns the next ZSND message, failing the test after d.
func (p *zpeer) expect(t *testing.T, d time.Duration) protocol.Message {
	t.Helper()
	frames := p.recv(d)
	if frames == nil {
		t.Fatalf("no message from the server within %v", d)
	}
	m, _, err := protocol.Decode(frames)
	if err != nil {
		t.Fatalf("server sent an undecodable message: %v", err)
	}
	return m
}

// expectError waits for an ERROR with the given request and code.
func (p *zpeer) expectError(t *testing.T, req uint32, code protocol.Code, what string) *protocol.Error {
	t.Helper()
	frames := p.recv(3 * time.Second)
	if frames == nil {
		t.Fatalf("%s: no answer within 3s, want ERROR %d", what, code)
	}
	m, _, err := protocol.Decode(frames)
	if err != nil {
		t.Fatalf("%s: the server's answer is undecodable: %v", what, err)
	}
	e, ok := m.(*protocol.Error)
	if !ok || e.Request != req || e.Code != code {
		t.Fatalf("%s: got %T %+v, want ERROR request %d code %d", what, m, m, req, code)
	}
	return e
}

// silent checks that nothing arrives for d.
func (p *zpeer) silent(t *testing.T, d time.Duration, what string) {
	t.Helper()
	if frames := p.recv(d); frames != nil {
		m, _, err := protocol.Decode(frames)
		t.Fatalf("%s: unexpected message %T %+v (%v)", what, m, m, err)
	}
}

// hello opens a session and returns the WELCOME.
func (p *zpeer) hello(t *testing.T, maxChunk uint32) *protocol.Welcome {
	t.Helper()
	p.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: maxChunk, PeerID: "hostile"})
	m := p.expect(t, 3*time.Second)
	w, ok := m.(*protocol.Welcome)
	if !ok {
		t.Fatalf("HELLO answered with %T %+v", m, m)
	}
	return w
}

// ---- process resources ----

// openFDs counts this process's open file descriptors.
func openFDs(t testing.TB) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(es)
}

func fdList() string {
	es, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range es {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&b, "%s -> %s\n", e.Name(), l)
	}
	return b.String()
}

// stableGoroutines is goroutines.Stable, logging a count that never
// settled.
func stableGoroutines(t testing.TB, bound time.Duration) int {
	t.Helper()
	n, settled := goroutines.Stable(bound)
	if !settled {
		t.Logf("goroutine count never settled within %v; baseline %d (lowest seen)", bound, n)
	}
	return n
}

func goroutineDump() string {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	s := string(buf[:n])
	if len(s) > 64<<10 {
		s = s[:64<<10] + "\n...(truncated)"
	}
	return s
}
