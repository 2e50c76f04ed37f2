package integration

import (
	"context"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/protocol"
)

// dealer is a raw zmq4 DEALER speaking ZSND by hand, for tests that need
// to misbehave.
type dealer struct {
	sock zmq4.Socket
}

func rawDealer(t *testing.T, ep string) *dealer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := zmq4.NewDealer(ctx, zmq4.WithDialerRetry(50*time.Millisecond), zmq4.WithDialerMaxRetries(40))
	if err := s.Dial(ep); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); cancel() })
	return &dealer{sock: s}
}

func (d *dealer) send(t *testing.T, m protocol.Message) {
	t.Helper()
	if err := d.sock.Send(zmq4.NewMsgFrom(protocol.Encode(protocol.Version1, m)...)); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next ZSND message, failing the test after a bound.
func (d *dealer) recv(t *testing.T) protocol.Message {
	t.Helper()
	type res struct {
		m   zmq4.Msg
		err error
	}
	c := make(chan res, 1)
	go func() { m, err := d.sock.Recv(); c <- res{m, err} }()
	select {
	case r := <-c:
		if r.err != nil {
			t.Fatalf("recv: %v", r.err)
		}
		m, _, err := protocol.Decode(r.m.Frames)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
	return nil
}
