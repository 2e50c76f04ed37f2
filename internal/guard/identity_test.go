package guard

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// A peer announcing the routing identity of a live connection is refused
// in the handshake, so it can never receive that connection's traffic;
// once the first connection is gone the identity is free again.
func TestDuplicateIdentityRefused(t *testing.T) {
	ctx := WithConfig(context.Background(), testConfig())
	router, ep := startRouter(t, ctx, guardedTCP(t))
	first := startDealer(t, ctx, ep, "victim")
	roundTrip(t, router, first, "victim", 2*time.Second)

	c := rawDial(t, ep)
	if _, err := c.Write(append(nullGreeting[:], ready("Socket-Type", "DEALER", "Identity", "victim")...)); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c, 2*time.Second)
	expectStats(t, ctx, func(s Stats) bool { return s.DuplicateIdentity == 1 })
	// The victim still gets its replies, and only it.
	roundTrip(t, router, first, "victim", 2*time.Second)

	first.Close()
	eventually(t, 2*time.Second, "the identity is released", func() bool {
		c := rawDial(t, ep)
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write(append(nullGreeting[:], ready("Socket-Type", "DEALER", "Identity", "victim")...))
		var g [greetingLen]byte
		if _, err := ioReadFull(c, g[:]); err != nil {
			return false
		}
		_, _, err := readFrame(c)
		return err == nil
	})
}

// A peer without an identity gets one from the guard (a zero byte and 16
// random bytes), which the close hook then reports.
func TestIdentityAssigned(t *testing.T) {
	var mu sync.Mutex
	var closed [][]byte
	ctx := WithCloseHook(WithConfig(context.Background(), testConfig()), func(id []byte) {
		mu.Lock()
		closed = append(closed, id)
		mu.Unlock()
	})
	router, ep := startRouter(t, ctx, guardedTCP(t))
	d := zmq4.NewDealer(context.Background(), zmq4.WithLogger(quiet))
	defer d.Close()
	c := rawDial(t, ep)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write(append(nullGreeting[:], ready("Socket-Type", "DEALER")...))
	var g [greetingLen]byte
	ioReadFull(c, g[:])
	readFrame(c)
	c.Write(frame(0, []byte("hi")))
	msg, err := recvTimeout(router, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := msg.Frames[0]
	if len(id) != 17 || id[0] != 0 {
		t.Fatalf("assigned identity %x", id)
	}
	c.Close()
	eventually(t, 2*time.Second, "close hook reports the assigned identity", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(closed) == 1 && string(closed[0]) == string(id)
	})
}

// The CURVE peer hook gives the client key of each routing identity
// before any of its messages is received.
func TestCurvePeerHook(t *testing.T) {
	server, client := genPair(t), genPair(t)
	var mu sync.Mutex
	keys := map[string][32]byte{}
	ctx := WithCurvePeerHook(curveServerCtx(t, server, nil), func(id []byte, k [32]byte) {
		mu.Lock()
		keys[string(id)] = k
		mu.Unlock()
	})
	router, ep := startRouter(t, ctx, guardedTCP(t))
	dealer := startDealer(t, curveClientCtx(t, server.pub, client), ep, "node-1")
	dealer.Send(zmq4.NewMsgString("x"))
	msg, err := recvTimeout(router, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if keys[string(msg.Frames[0])] != client.pub {
		t.Fatalf("hook saw %v for %q", keys, msg.Frames[0])
	}
	mu.Unlock()
	// The routing identity is the client's key, then its own identity.
	if id := msg.Frames[0]; len(id) != 32+len("node-1") || [32]byte(id[:32]) != client.pub || string(id[32:]) != "node-1" {
		t.Fatalf("routing identity %q", id)
	}
	// Another key announcing the same identity is another routing id:
	// both connect, and each gets only its own replies.
	other := genPair(t)
	dealer2 := startDealer(t, curveClientCtx(t, server.pub, other), ep, "node-1")
	dealer2.Send(zmq4.NewMsgString("y"))
	msg2, err := recvTimeout(router, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg2.Frames[0]) == string(msg.Frames[0]) {
		t.Fatal("two keys share a routing identity")
	}
	router.Send(zmq4.NewMsgFrom(msg2.Frames[0], []byte("for-other")))
	router.Send(zmq4.NewMsgFrom(msg.Frames[0], []byte("for-client")))
	if m, err := recvTimeout(dealer, 2*time.Second); err != nil || string(m.Frames[0]) != "for-client" {
		t.Fatalf("first dealer got %q, %v", m.Frames, err)
	}
	if m, err := recvTimeout(dealer2, 2*time.Second); err != nil || string(m.Frames[0]) != "for-other" {
		t.Fatalf("second dealer got %q, %v", m.Frames, err)
	}
}
