package guard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

var quiet = log.New(io.Discard, "", 0)

// testConfig has short timeouts so the tests stay fast.
func testConfig() Config {
	return Config{
		HandshakeTimeout:  300 * time.Millisecond,
		WriteStallTimeout: 300 * time.Millisecond,
	}
}

// startRouter starts a ROUTER listening on ep (a plain zmq4 endpoint such as
// "tcp://127.0.0.1:0" or a guarded one) and returns it with the endpoint
// dealers should dial.
func startRouter(t testing.TB, ctx context.Context, ep string) (zmq4.Socket, string) {
	t.Helper()
	r := zmq4.NewRouter(ctx, zmq4.WithLogger(quiet), zmq4.WithID(zmq4.SocketIdentity("router")))
	if err := r.Listen(ep); err != nil {
		t.Fatalf("listen %s: %v", ep, err)
	}
	t.Cleanup(func() { r.Close() })
	scheme, _, _ := strings.Cut(ep, "://")
	switch scheme {
	case SchemeIPC, "ipc":
		return r, ep
	}
	return r, scheme + "://" + r.Addr().String()
}

// guardedTCP returns the guarded form of tcp://127.0.0.1:0.
func guardedTCP(t testing.TB) string {
	t.Helper()
	ep, err := Endpoint("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// startDealer dials ep with a DEALER of identity id.
func startDealer(t testing.TB, ctx context.Context, ep, id string) zmq4.Socket {
	t.Helper()
	d := zmq4.NewDealer(ctx, zmq4.WithLogger(quiet), zmq4.WithID(zmq4.SocketIdentity(id)))
	if err := d.Dial(ep); err != nil {
		t.Fatalf("dial %s: %v", ep, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// recvTimeout receives one message or fails after d. The Recv goroutine is
// released when the socket is closed.
func recvTimeout(s zmq4.Socket, d time.Duration) (zmq4.Msg, error) {
	type result struct {
		msg zmq4.Msg
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := s.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		return r.msg, r.err
	case <-time.After(d):
		return zmq4.Msg{}, fmt.Errorf("no message within %v", d)
	}
}

// roundTrip sends a request from the dealer and a reply from the router,
// all within d.
func roundTrip(t testing.TB, router, dealer zmq4.Socket, id string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	if err := dealer.Send(zmq4.NewMsgString("ping " + id)); err != nil {
		t.Fatalf("dealer send: %v", err)
	}
	msg, err := recvTimeout(router, time.Until(deadline))
	if err != nil {
		t.Fatalf("router recv: %v", err)
	}
	if len(msg.Frames) != 2 || string(msg.Frames[0]) != id || string(msg.Frames[1]) != "ping "+id {
		t.Fatalf("router got %q", msg.Frames)
	}
	if err := router.Send(zmq4.NewMsgFrom([]byte(id), []byte("pong"))); err != nil {
		t.Fatalf("router send: %v", err)
	}
	msg, err = recvTimeout(dealer, time.Until(deadline))
	if err != nil {
		t.Fatalf("dealer recv: %v", err)
	}
	if len(msg.Frames) != 1 || string(msg.Frames[0]) != "pong" {
		t.Fatalf("dealer got %q", msg.Frames)
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// --- raw ZMTP peers ---

// ready builds a READY command frame with the given properties (name, value
// pairs).
func ready(props ...string) []byte {
	body := []byte("\x05READY")
	for i := 0; i+1 < len(props); i += 2 {
		body = append(body, byte(len(props[i])))
		body = append(body, props[i]...)
		body = binary.BigEndian.AppendUint32(body, uint32(len(props[i+1])))
		body = append(body, props[i+1]...)
	}
	return frame(flagCommand, body)
}

// frame encodes one ZMTP frame.
func frame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		hdr := []byte{flags | flagLong}
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(len(body)))
		return append(hdr, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// rawDial opens a raw connection to a zmq4 endpoint.
func rawDial(t testing.TB, ep string) net.Conn {
	t.Helper()
	scheme, addr, _ := strings.Cut(ep, "://")
	network := "tcp"
	if scheme == SchemeIPC || scheme == "ipc" {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readFrame reads one ZMTP frame.
func readFrame(r io.Reader) (flags byte, body []byte, err error) {
	var hdr [9]byte
	if _, err = io.ReadFull(r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	size := uint64(hdr[1])
	if hdr[0]&flagLong != 0 {
		if _, err = io.ReadFull(r, hdr[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(hdr[1:])
	}
	if size > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", size)
	}
	body = make([]byte, size)
	_, err = io.ReadFull(r, body)
	return hdr[0], body, err
}

// rawHandshake performs a client NULL handshake as a DEALER of identity id.
func rawHandshake(t testing.TB, c net.Conn, id string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(append(nullGreeting[:], ready("Socket-Type", "DEALER", "Identity", id)...)); err != nil {
		t.Fatal(err)
	}
	var g [greetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		t.Fatalf("read server greeting: %v", err)
	}
	if g != nullGreeting {
		t.Fatalf("server greeting % x", g)
	}
	flags, body, err := readFrame(c)
	if err != nil || flags != flagCommand || string(body[:6]) != "\x05READY" {
		t.Fatalf("server READY: flags %#x body %q err %v", flags, body, err)
	}
}

// expectClosed reads (and discards) until the peer closes c, failing if
// that takes longer than d.
func expectClosed(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", d)
	}
}

// expectStats waits (briefly: counters settle right after the closes the
// test observes) until the counters of ctx satisfy ok.
func expectStats(t testing.TB, ctx context.Context, ok func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // a bound for a loaded machine; success returns at once
	for !ok(StatsFrom(ctx)) {
		if time.Now().After(deadline) {
			t.Fatalf("unexpected stats %+v", StatsFrom(ctx))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
