package guard

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// listener accepts raw connections in its own goroutine, runs the server
// half of the ZMTP handshake for each in another goroutine, and hands only
// handshaken connections to zmq4's Accept.
type listener struct {
	raw         net.Listener
	set         *settings
	network     string
	ctx         context.Context        // the zmq4 socket's context
	onPeerClose func([]byte)           // see WithCloseHook; may be nil
	onCurvePeer func([]byte, [32]byte) // see WithCurvePeerHook; may be nil
	stop        func() bool            // cancels the close-on-context-done hook

	ready chan *conn // handshaken connections; unbuffered
	done  chan struct{}

	mu      sync.Mutex
	closed  bool
	shaking map[*conn]struct{} // connections in the pre-handshake
	active  int                // open connections (for MaxConns)

	wg        sync.WaitGroup // accept loop and handshakes
	closeOnce sync.Once
	closeErr  error
}

func newListener(ctx context.Context, raw net.Listener, set *settings, network string) *listener {
	l := &listener{
		raw:         raw,
		set:         set,
		network:     network,
		onPeerClose: closeHookFrom(ctx),
		onCurvePeer: curvePeerHookFrom(ctx),
		ctx:         ctx,
		ready:       make(chan *conn),
		done:        make(chan struct{}),
		shaking:     make(map[*conn]struct{}),
	}
	// zmq4 cancels the socket context before it closes the listener.
	l.stop = context.AfterFunc(ctx, func() { l.Close() })
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// acceptLoop accepts raw connections until the listener is closed.
func (l *listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.raw.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (for example EMFILE): back off as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-l.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0

		c := newConn(raw, l.set, l.network)
		c.onClose = l.release
		if !l.admit(c) {
			select {
			case <-l.done:
			default:
				l.set.add(cRejected, 1)
			}
			c.onClose = nil
			c.Close()
			continue
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// admit registers c as open and in the handshake, unless the listener is
// closed or full.
func (l *listener) admit(c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || (l.set.maxConns > 0 && l.active >= l.set.maxConns) {
		return false
	}
	l.active++
	l.shaking[c] = struct{}{}
	l.set.add(cHandshaking, 1)
	return true
}

// release is called once when an admitted connection closes.
func (l *listener) release() {
	l.mu.Lock()
	l.active--
	l.mu.Unlock()
}

// handshake runs the server half of the NULL handshake on c: write the
// greeting first (a libzmq peer sends only its signature until it has seen
// ours), read and check the peer's greeting and READY, then hand c to zmq4.
func (l *listener) handshake(c *conn) {
	defer l.wg.Done()
	err := l.preHandshake(c)

	l.mu.Lock()
	delete(l.shaking, c)
	l.mu.Unlock()
	l.set.add(cHandshaking, -1)

	if err != nil {
		select {
		case <-l.done: // closed by Close: not the peer's fault
			c.Close()
		default:
			c.handshakeFailed(err)
		}
		return
	}
	c.phase = phaseStream
	c.swallow = greetingLen

	select {
	case l.ready <- c:
		l.set.add(cAccepted, 1)
		c.watchAdoption(l.set.orphan)
	case <-l.done:
		c.Close()
	}
}

func (l *listener) preHandshake(c *conn) error {
	if l.set.handshake > 0 {
		c.raw.SetDeadline(time.Now().Add(l.set.handshake))
	}
	if l.set.curveServer != nil {
		if err := l.curveHandshake(c); err != nil {
			return err
		}
	} else {
		if _, err := c.raw.Write(nullGreeting[:]); err != nil {
			return err
		}
		buf, err := readGreeting(c.raw)
		if err != nil {
			return err
		}
		if c.pending, err = readReady(c.raw, buf, min(l.set.maxFrame, maxReadySize)); err != nil {
			return err
		}
	}
	// Routing identities: zmq4 routes by the peer's READY Identity and,
	// with two live peers of one identity, sends to both. The guard gives
	// a peer without one an identity of its own (so every connection has
	// a known identity, for the close hook and for CURVE key lookups), and
	// refuses a peer announcing the identity of a live connection.
	//
	// A CURVE peer's identity is prefixed with its 32-byte long-term key,
	// so that peers of different keys can never share a routing identity:
	// a peer that takes over an identity right after its owner left could
	// otherwise receive what the application still sends to that owner.
	frame := c.pending[greetingLen:]
	id := readyIdentity(frame)
	rewrite := len(id) == 0
	if rewrite {
		id = newIdentity()
	}
	if c.cv != nil {
		k := c.cv.accepted.Client
		id = append(k[:], id...)
		rewrite = true
	}
	if rewrite {
		ready, err := withIdentity(frame, id)
		if err != nil {
			return err
		}
		c.pending = append(c.pending[:greetingLen:greetingLen], ready...)
	}
	if !l.set.claimIdentity(id, c) {
		l.set.add(cDuplicateIdentity, 1)
		return badHandshake("routing identity %q is in use by a live connection", id)
	}
	c.identity, c.onPeerClose = id, l.onPeerClose
	if c.cv != nil && l.onCurvePeer != nil {
		l.onCurvePeer(id, c.cv.accepted.Client)
	}
	if l.set.handshake > 0 {
		c.raw.SetDeadline(time.Time{})
	}
	return nil
}

// Accept returns the next handshaken connection. After Close it returns an
// error wrapping net.ErrClosed; zmq4's accept loop retries on any error
// until its context is cancelled, so while that context is still live
// Accept waits a little before failing, to keep the loop from spinning.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
	default:
		select {
		case c := <-l.ready:
			if l.ctx.Err() == nil {
				return c, nil
			}
			// The socket is closing: zmq4 might register c after it
			// closed its connections and never close it.
			c.Close()
		case <-l.done:
		}
	}
	if l.ctx.Err() == nil {
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-l.ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return nil, &net.OpError{Op: "accept", Net: l.network, Addr: l.raw.Addr(), Err: net.ErrClosed}
}

// Close stops accepting, closes the connections that zmq4 does not own yet
// and waits for the listener's goroutines. Connections already handed to
// zmq4 are zmq4's to close.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.stop()
		l.closeErr = l.raw.Close()
		l.mu.Lock()
		l.closed = true
		shaking := make([]*conn, 0, len(l.shaking))
		for c := range l.shaking {
			shaking = append(shaking, c)
		}
		l.mu.Unlock()
		for _, c := range shaking {
			c.Close() // calls l.release, which takes l.mu
		}
		l.wg.Wait()
	})
	return l.closeErr
}

// Addr returns the listener's network address.
func (l *listener) Addr() net.Addr { return l.raw.Addr() }
