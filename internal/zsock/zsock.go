// Package zsock holds what sender and receiver both need around zmq4
// sockets: endpoint parsing, the guarded transport, and a receive loop that
// gives Recv a context (zmq4's Recv has none) and drops ZMTP command
// messages such as a libzmq peer's heartbeat PING, which zmq4 passes up.
package zsock

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/endpoint"
	"github.com/zsend/zsend/internal/guard"
)

// Endpoint validates a user endpoint (tcp://host:port or ipc://path, see
// endpoint.Check; port 0 is accepted for binding; or inproc://name, within
// one process, for library users) and returns the form that routes it
// through the guarded transport (inproc goes through the guard's own
// in-process transport, a Unix socket pair per connection). That form is
// internal: show users their own endpoint, and errors through PlainError.
func Endpoint(ep string) (string, error) {
	if !strings.HasPrefix(ep, "inproc://") || len(ep) == len("inproc://") {
		if err := endpoint.Check(ep, true); err != nil {
			return "", err
		}
	}
	return guard.Endpoint(ep) // registers the guarded transports
}

// PlainError strips zmq4's wrapping from a Listen or Dial error, which
// quotes the internal guarded endpoint (guard-tcp://, guard-ipc://), and
// keeps the system's own error (for example "listen unix /run/x.sock:
// bind: address already in use"). Other errors are returned unchanged.
func PlainError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op
	}
	return err
}

// Inbound is one message from the socket, or the error that ended it.
type Inbound struct {
	Frames [][]byte
	Err    error
}

// RecvLoop reads sock until ctx is done or Recv fails, and delivers
// application messages on the returned channel, which it closes when it
// stops. A Recv error is delivered once, then the loop stops. Closing the
// socket is what unblocks a pending Recv; callers close it after cancelling.
// If stamp is not nil it is set to the Unix nanosecond time of every
// arrival and of every hand-over to the caller, so liveness is judged by
// arrival, not by how fast the caller processes (a receiver busy on a slow
// disk is not a dead sender, even once the channel has filled up).
func RecvLoop(ctx context.Context, sock zmq4.Socket, depth int, stamp *atomic.Int64) <-chan Inbound {
	out := make(chan Inbound, depth)
	go func() {
		defer close(out)
		defer drain(ctx, sock)
		for {
			msg, err := sock.Recv()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				select {
				case out <- Inbound{Err: err}:
				case <-ctx.Done():
				}
				return
			}
			if stamp != nil {
				stamp.Store(time.Now().UnixNano())
			}
			if msg.Type == zmq4.CmdMsg {
				continue
			}
			select {
			case out <- Inbound{Frames: msg.Frames}:
			case <-ctx.Done():
				return
			}
			if stamp != nil {
				// Stamp the hand-over too: while the caller was busy this
				// loop waited above and received nothing, and that wait is
				// the caller's, not the peer's silence.
				stamp.Store(time.Now().UnixNano())
			}
		}
	}()
	return out
}

// drain empties zmq4's internal receive queue once ctx is done. zmq4's
// per-connection reader sends each message into a 10-slot channel without
// watching for cancellation; if the channel is full when the socket is
// cancelled, the reader blocks there for good (one goroutine and one
// connection leaked per peer). One receive lets it see the cancellation
// and exit. With its context done, Recv returns at once, taking a queued
// message or not (select picks at random), so a bounded number of calls
// empties the queue with overwhelming probability.
func drain(ctx context.Context, sock zmq4.Socket) {
	<-ctx.Done()
	for range 256 {
		sock.Recv()
	}
}
