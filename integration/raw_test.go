package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/protocol"
)

// dealer is a raw zmq4 DEALER speaking ZSND by hand, for tests that need
// to misbehave. One goroutine receives for the dealer's whole life, so a
// recv that timed out leaves no goroutine behind to take the next message.
type dealer struct {
	sock zmq4.Socket
	in   chan zmq4.Msg
	errs chan error
}

func rawDealer(t *testing.T, ep string) *dealer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := zmq4.NewDealer(ctx, zmq4.WithDialerRetry(50*time.Millisecond), zmq4.WithDialerMaxRetries(40), zmq4.WithLogger(quietLog))
	if err := s.Dial(ep); err != nil {
		cancel()
		s.Close()
		t.Fatal(err)
	}
	d := &dealer{sock: s, in: make(chan zmq4.Msg, 1024), errs: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := s.Recv()
			if err != nil {
				d.errs <- err
				return
			}
			if m.Type == zmq4.CmdMsg {
				continue
			}
			select {
			case d.in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); s.Close(); <-done })
	return d
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
	m, err := d.recvWithin(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// recvWithin returns the next ZSND message, or an error after d or when
// the connection fails.
func (d *dealer) recvWithin(bound time.Duration) (protocol.Message, error) {
	decode := func(m zmq4.Msg) (protocol.Message, error) {
		msg, _, err := protocol.Decode(m.Frames)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		return msg, nil
	}
	select { // what arrived before a failure comes first
	case m := <-d.in:
		return decode(m)
	default:
	}
	select {
	case m := <-d.in:
		return decode(m)
	case err := <-d.errs:
		d.errs <- err // every later call sees it too
		// The reader queues every message before it reports the failure
		// that follows them, but this select may see both at once and
		// pick the failure: a message queued by now still comes first.
		select {
		case m := <-d.in:
			return decode(m)
		default:
		}
		return nil, fmt.Errorf("recv: %w", err)
	case <-time.After(bound):
		return nil, fmt.Errorf("no message within %v", bound)
	}
}
