package guard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Read phases: the handshake bytes are read (and checked) by the guard
// before zmq4 sees them. On accepted connections the listener does it
// eagerly; on dialed connections it happens lazily when zmq4 first asks for
// the greeting and then for the READY, so the usual ordering of the ZMTP
// handshake (each side sends before it waits) is kept.
const (
	phaseGreeting = iota // next: read the peer greeting
	phaseReady           // next: read the peer READY
	phaseStream          // handshake read; scan frames
)

// conn wraps a raw connection with the guard's checks. It is safe for one
// reader and any number of writers at a time.
type conn struct {
	raw     net.Conn
	set     *settings
	network string
	onClose func() // listener accounting; may be nil

	identity    []byte       // the peer's routing identity (accepted conns), claimed in settings
	onPeerClose func([]byte) // called with identity on close; may be nil

	rmu        sync.Mutex
	phase      int
	hsDeadline time.Time // dialed connections: end of the peer's handshake
	pending    []byte    // checked handshake bytes to replay to zmq4
	scan       frameScanner
	rbuf       []byte // read buffer for small reads (see Read)
	rdata      []byte // scanned bytes in rbuf not yet returned

	wmu     sync.Mutex
	swallow int        // bytes of zmq4's greeting still to drop (already sent)
	wout    outScanner // where zmq4's outgoing messages end
	wbuf    []byte     // small writes held until their message ends
	warr    [2][]byte  // backing array for flush's buffers

	cv *curveConn // CURVE state; nil: NULL mechanism

	adopted   atomic.Bool // zmq4 has read past the handshake
	orphan    atomic.Pointer[time.Timer]
	closed    atomic.Bool
	closeOnce sync.Once
}

// readBufSize is the read buffer for small reads; reads at least this
// large bypass it.
const readBufSize = 32 << 10

func newConn(raw net.Conn, set *settings, network string) *conn {
	set.add(cOpen, 1)
	return &conn{raw: raw, set: set, network: network, scan: newFrameScanner(set), wout: outScanner{greet: greetingLen}}
}

// Read implements net.Conn. It replays the checked handshake, then returns
// bytes from the network only after their frame headers passed the limits.
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()

	if len(c.pending) == 0 && c.phase != phaseStream {
		if err := c.readHandshake(); err != nil {
			return 0, err
		}
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if !c.adopted.Load() {
		c.adopted.Store(true)
		if t := c.orphan.Load(); t != nil {
			t.Stop()
		}
	}

	if c.cv != nil {
		return c.curveRead(p)
	}
	if len(c.rdata) > 0 {
		n := copy(p, c.rdata)
		c.rdata = c.rdata[n:]
		return n, nil
	}
	// zmq4 reads each frame header in 2- and 7-byte pieces: serve small
	// reads from a buffer, so a small message costs one system call rather
	// than several. Large reads (frame bodies) go straight into p. Either
	// way the bytes are scanned before zmq4 sees them.
	dst := p
	if len(p) < readBufSize {
		if c.rbuf == nil {
			c.rbuf = make([]byte, readBufSize)
		}
		dst = c.rbuf
	}
	if c.set.idle > 0 {
		c.raw.SetReadDeadline(time.Now().Add(c.set.idle))
	}
	n, err := c.raw.Read(dst)
	if n > 0 {
		if serr := c.scan.scan(dst[:n]); serr != nil {
			switch serr {
			case ErrFrameTooLarge:
				c.set.add(cFrameTooLarge, 1)
			case ErrMessageTooLarge:
				c.set.add(cMessageTooLarge, 1)
			default:
				c.set.add(cBadFrames, 1)
			}
			return 0, c.fail("read", serr)
		}
		if len(p) < readBufSize {
			c.rdata = c.rbuf[:n]
			n = copy(p, c.rdata)
			c.rdata = c.rdata[n:]
		}
	}
	if err != nil {
		if isTimeout(err) {
			if n > 0 {
				return n, nil // report the timeout on the next call
			}
			c.set.add(cIdleTimeouts, 1)
			return 0, c.fail("read", ErrIdle)
		}
		return n, c.fatal("read", err)
	}
	return n, nil
}

// readHandshake reads the next handshake step (dialed connections only)
// under the handshake deadline.
func (c *conn) readHandshake() error {
	c.raw.SetReadDeadline(c.hsDeadline)
	var err error
	switch {
	case c.cv != nil:
		err = c.curveClientStep()
	case c.phase == phaseGreeting:
		c.pending, err = readGreeting(c.raw)
	case c.phase == phaseReady:
		c.pending, err = readReady(c.raw, nil, min(c.set.maxFrame, maxReadySize))
	}
	if err != nil {
		return c.handshakeFailed(err)
	}
	c.phase++
	c.raw.SetReadDeadline(time.Time{})
	return nil
}

// handshakeFailed counts err, closes the connection and returns the error
// to give zmq4.
func (c *conn) handshakeFailed(err error) error {
	switch {
	case isTimeout(err):
		c.set.add(cHandshakeTimeouts, 1)
		return c.fail("read", ErrHandshakeTimeout)
	case errors.Is(err, ErrHandshake):
		c.set.add(cHandshakeFailures, 1)
		return c.fail("read", err)
	default: // the peer closed or reset the connection
		c.set.add(cHandshakeFailures, 1)
		return c.fatal("read", err)
	}
}

// Write implements net.Conn.
//
// zmq4 writes every frame as two writes (header, then body), so a small
// message would cost several system calls and several TCP segments. Write
// follows the outgoing framing instead and holds small pieces until the
// message they belong to is complete, then sends the message with one
// write (a writev when its last piece is large). Nothing is ever held
// across messages: when zmq4's Send returns, its message has been handed
// to the kernel, as without the guard.
//
// Each underlying write gets a deadline of the write stall timeout (see
// flush).
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()

	n := 0
	if c.swallow > 0 {
		k := min(c.swallow, len(p))
		off := greetingLen - c.swallow
		if !bytes.Equal(p[:k], nullGreeting[off:off+k]) {
			// zmq4 greets with another mechanism than the one the guard
			// already announced: the connection cannot work.
			return 0, c.fail("write", badHandshake("local socket does not use the NULL mechanism"))
		}
		c.swallow -= k
		c.wout.feed(p[:k])
		p = p[k:]
		n = k
	}
	if len(p) == 0 {
		return n, nil
	}
	if c.cv != nil {
		if err := c.curveWrite(p); err != nil {
			return n, err
		}
		return n + len(p), nil
	}
	end := c.wout.feed(p)
	fits := len(p) <= coalesceMax && len(c.wbuf)+len(p) <= coalesceBuf
	if !end && fits {
		c.wbuf = append(c.wbuf, p...)
		return n + len(p), nil
	}
	bufs := net.Buffers(c.warr[:0])
	switch {
	case len(c.wbuf) == 0:
		bufs = append(bufs, p)
	case fits:
		c.wbuf = append(c.wbuf, p...)
		bufs = append(bufs, c.wbuf)
	default:
		bufs = append(bufs, c.wbuf, p)
	}
	err := c.flush(bufs)
	c.wbuf = c.wbuf[:0]
	clear(c.warr[:]) // p is not ours to keep
	if err != nil {
		return n, err
	}
	return n + len(p), nil
}

// Held writes: pieces up to coalesceMax bytes are copied and held while
// the held bytes stay within coalesceBuf; anything else flushes.
const (
	coalesceMax = 8 << 10
	coalesceBuf = 16 << 10
)

// flush writes bufs (writev). When a write's deadline expires it goes on if the
// window showed progress: bytes accepted by the kernel, or (on Linux)
// bytes consumed by the peer, seen as a shrinking send queue. Without the
// second test a peer that reads steadily but slowly would look stuck,
// because the kernel wakes a blocked writer only once a third of the send
// buffer is free. A window without progress closes the connection.
func (c *conn) flush(bufs net.Buffers) error {
	queued := -1 // bytes the peer had not consumed at the end of the last window; -1: unknown
	for len(bufs) > 0 {
		if c.set.writeStall > 0 {
			c.raw.SetWriteDeadline(time.Now().Add(c.set.writeStall))
		}
		m, err := bufs.WriteTo(c.raw) // consumes what was written
		if err == nil {
			continue
		}
		if !isTimeout(err) {
			return c.fatal("write", err)
		}
		q := unconsumed(c.raw)
		// Progress, or no baseline yet to tell whether the peer consumed.
		if m > 0 || (q >= 0 && (queued < 0 || q < queued)) {
			queued = q
			continue
		}
		c.set.add(cWriteStalls, 1)
		return c.fail("write", ErrWriteStall)
	}
	return nil
}

// outScanner follows the ZMTP framing of what zmq4 writes (greeting, then
// frames), to tell where each message ends. zmq4's own writes are trusted:
// no limits are checked here.
type outScanner struct {
	greet int     // greeting bytes still to come
	hdr   [9]byte // frame header so far
	hn    int     // bytes in hdr
	body  uint64  // body bytes of the current frame still to come
	last  bool    // the current frame ends its message (a command, or no MORE flag)
}

// feed advances over p and reports whether p ends exactly where a message
// (or the greeting) ends.
func (s *outScanner) feed(p []byte) bool {
	end := false
	for len(p) > 0 {
		switch {
		case s.greet > 0:
			k := min(s.greet, len(p))
			s.greet -= k
			p = p[k:]
			end = s.greet == 0
		case s.body > 0:
			k := s.body
			if uint64(len(p)) < k {
				k = uint64(len(p))
			}
			s.body -= k
			p = p[k:]
			end = s.body == 0 && s.last
		default:
			s.hdr[s.hn] = p[0]
			s.hn++
			p = p[1:]
			end = false
			need := 2
			if s.hdr[0]&flagLong != 0 {
				need = 9
			}
			if s.hn < need {
				continue
			}
			if need == 2 {
				s.body = uint64(s.hdr[1])
			} else {
				s.body = binary.BigEndian.Uint64(s.hdr[1:9])
			}
			s.hn = 0
			s.last = s.hdr[0]&flagMore == 0 || s.hdr[0]&flagCommand != 0
			end = s.body == 0 && s.last
		}
	}
	return end
}

// fail closes the connection and returns a non-timeout *net.OpError
// carrying reason.
func (c *conn) fail(op string, reason error) error {
	c.Close()
	return c.opError(op, reason)
}

// fatal closes the connection after the I/O error err and returns err in a
// form zmq4 treats as "connection gone": io.EOF, or a net.Error that is
// not a timeout.
func (c *conn) fatal(op string, err error) error {
	c.Close()
	if err == io.EOF {
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) && !ne.Timeout() {
		return err
	}
	return c.opError(op, err)
}

func (c *conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: c.network, Source: c.raw.LocalAddr(), Addr: c.raw.RemoteAddr(), Err: err}
}

// Close implements net.Conn; it is idempotent.
func (c *conn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		err = c.raw.Close()
		if t := c.orphan.Load(); t != nil {
			t.Stop()
		}
		c.set.add(cOpen, -1)
		if c.onClose != nil {
			c.onClose()
		}
		if c.onPeerClose != nil && c.identity != nil {
			c.onPeerClose(c.identity)
		}
		// After the hook: a new connection may take the identity only
		// once the hook has forgotten this one.
		if c.identity != nil {
			c.set.releaseIdentity(c.identity, c)
		}
	})
	return err
}

// watchAdoption closes the connection if zmq4 has not read past the
// handshake within d (zmq4.Open failed and zmq4 dropped it unclosed).
func (c *conn) watchAdoption(d time.Duration) {
	t := time.AfterFunc(d, func() {
		if !c.adopted.Load() && !c.closed.Load() {
			c.set.add(cOrphaned, 1)
			c.Close()
		}
	})
	c.orphan.Store(t)
	if c.adopted.Load() || c.closed.Load() {
		t.Stop()
	}
}

func (c *conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
