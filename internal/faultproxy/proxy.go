// Package faultproxy is an in-process TCP proxy for tests and benchmarks
// that need a misbehaving network between two endpoints on loopback.
//
// A Proxy listens on 127.0.0.1:0 and, for every accepted connection, dials
// the target address and forwards bytes in both directions. Faults can be
// switched on and off at any time from any goroutine:
//
//   - SetDelay adds a one-way latency to each direction (a delay line, not a
//     throughput limiter);
//   - Stall holds all bytes (connections stay open) until resumed;
//   - Cut resets every established connection on both sides;
//   - SetRefuse makes new connections close immediately, as if the server
//     were down;
//   - CorruptDownstream / CorruptUpstream flip one bit in chosen bytes of
//     the stream, at deterministic offsets.
//
// # Design
//
// Each proxied connection has two directions ("up" is client->target,
// "down" is target->client). Each direction is a pipe served by two
// goroutines: a reader and a writer, joined by a FIFO queue of timestamped
// chunks.
//
// The reader reads from its source socket into a pooled 256 KiB buffer,
// appending each read at the next free offset of that buffer, so small reads
// pack densely and large reads need no copy at all. Every read becomes a
// chunk {buffer, offset, length, release time = arrival + delay}; a read that
// directly follows the queue's last chunk in the same buffer, and arrives
// within coalesceWindow (1 ms) of that chunk's first byte, simply extends it.
// Buffers are reference counted and go back to a sync.Pool when the writer
// has sent their last chunk and the reader has moved on.
//
// The writer takes the head chunk as soon as its release time has come and
// writes it to the destination socket. Because the reader keeps reading
// while earlier chunks wait for their release, a delayed stream runs at the
// full speed of the endpoints: the delay line holds up to bandwidth*delay
// bytes instead of one buffer per round trip. Memory is bounded: a reader
// stops reading (so TCP pushes back on the sender) while its queue holds
// more than the queue limit (64 MiB by default, see WithQueueLimit) or more
// than 65536 chunks.
//
// With no delay the same path is used; it costs one lock and one channel
// signal per read and pipelines reading with writing, so loopback forwarding
// runs at several GB/s. Byte corruption and byte counting work on chunk
// lengths only, with no per-byte work except for the flipped bytes.
//
// End of stream is forwarded in order: when a reader sees EOF, the writer
// half-closes its destination (CloseWrite) after the queued bytes have been
// delivered (respecting delay and stall). A read error other than EOF (a
// reset) on either side resets both sides at once, as Cut does. A
// connection is torn down when both directions have finished. If the target
// cannot be dialed, the client connection is closed (the client sees EOF).
//
// Delay changes apply to bytes that arrive afterwards; bytes already queued
// keep their release time, and order is always preserved.
package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// bufSize is the size of the pooled read buffers.
	bufSize = 256 << 10
	// minRead is the least free space a reader wants in its current buffer
	// before it moves on to a fresh one.
	minRead = 32 << 10
	// coalesceWindow is how long after a chunk's first byte later reads may
	// still be appended to it (delaying the first byte by at most this).
	coalesceWindow = time.Millisecond
	// maxChunks bounds the number of queued chunks per direction.
	maxChunks = 1 << 16

	// DefaultQueueLimit is the default bound on bytes queued per direction
	// of each connection.
	DefaultQueueLimit = 64 << 20

	// FlipMask is XORed into every corrupted byte.
	FlipMask byte = 0x01
)

// Option configures a Proxy.
type Option func(*config)

type config struct {
	delay       time.Duration
	logf        func(string, ...any)
	queueLimit  int
	dialTimeout time.Duration
}

// WithDelay sets the initial one-way delay (see Proxy.SetDelay).
func WithDelay(oneWay time.Duration) Option {
	return func(c *config) { c.delay = oneWay }
}

// WithLogf sets a function that receives debug messages about connections.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(c *config) {
		if logf != nil {
			c.logf = logf
		}
	}
}

// WithQueueLimit sets how many bytes may be queued in each direction of
// each connection before the proxy stops reading (default 64 MiB).
func WithQueueLimit(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.queueLimit = n
		}
	}
}

// WithDialTimeout sets the timeout for dialing the target (default 10s).
func WithDialTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.dialTimeout = d
		}
	}
}

// Proxy is a fault-injecting TCP proxy. All methods are safe for
// concurrent use.
type Proxy struct {
	target string
	cfg    config
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	delay  atomic.Int64 // time.Duration
	refuse atomic.Bool
	stall  atomic.Pointer[gate]

	up, down direction

	mu       sync.Mutex
	closed   bool
	closeErr error
	conns    map[*pconn]struct{}
}

// gate is a closed-on-resume channel; a non-nil Proxy.stall means stalled.
type gate struct{ ch chan struct{} }

// New starts a proxy listening on 127.0.0.1:0 that forwards every accepted
// connection to target.
func New(target string, opts ...Option) (*Proxy, error) {
	cfg := config{
		logf:        func(string, ...any) {},
		queueLimit:  DefaultQueueLimit,
		dialTimeout: 10 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		cfg:    cfg,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[*pconn]struct{}),
	}
	p.SetDelay(cfg.delay)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops the listener, resets all connections and waits for every
// goroutine of the proxy to finish. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return p.closeErr
	}
	p.closed = true
	p.closeErr = p.ln.Close()
	p.cancel()
	conns := p.snapshot()
	p.mu.Unlock()
	for _, c := range conns {
		c.abort()
	}
	p.wg.Wait()
	return p.closeErr
}

// SetDelay sets the latency added in each direction to bytes arriving from
// now on. Zero (or negative) disables it.
func (p *Proxy) SetDelay(oneWay time.Duration) {
	if oneWay < 0 {
		oneWay = 0
	}
	p.delay.Store(int64(oneWay))
}

// Delay returns the current one-way delay.
func (p *Proxy) Delay() time.Duration { return time.Duration(p.delay.Load()) }

// Cut abruptly closes (resets) both sides of every established connection.
// The listener keeps working: later connections are proxied as usual.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := p.snapshot()
	p.mu.Unlock()
	for _, c := range conns {
		c.abort()
	}
	if len(conns) > 0 {
		p.cfg.logf("faultproxy: cut %d connection(s)", len(conns))
	}
}

// Stall stops forwarding in both directions of all connections (bytes are
// held in the proxy, up to the queue limit, and connections stay open) when
// on is true, and resumes delivery, intact and in order, when on is false.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		if p.stall.Load() == nil {
			p.stall.Store(&gate{ch: make(chan struct{})})
		}
		return
	}
	if g := p.stall.Swap(nil); g != nil {
		close(g.ch)
	}
}

// SetRefuse makes the proxy close newly accepted connections at once (the
// client sees EOF), simulating a server that is down. Established
// connections are not affected.
func (p *Proxy) SetRefuse(on bool) { p.refuse.Store(on) }

// CorruptDownstream arranges for count bytes of the target->client stream to
// have a bit flipped (XOR FlipMask): after afterBytes more bytes have been
// received from the target, the next byte is corrupted, and so on, i.e. the
// corrupted bytes are at offsets base+afterBytes+k*(afterBytes+1) for
// k = 0..count-1, where base is the number of bytes the proxy has received
// in this direction (over all connections) when CorruptDownstream is called.
// With afterBytes == 0 the next count bytes are corrupted. Offsets are exact
// and deterministic when a single connection carries the traffic. A new call
// replaces any pending corruption; count <= 0 cancels it.
func (p *Proxy) CorruptDownstream(afterBytes int64, count int) {
	p.down.arm(afterBytes, count)
}

// CorruptUpstream is CorruptDownstream for the client->target stream.
func (p *Proxy) CorruptUpstream(afterBytes int64, count int) {
	p.up.arm(afterBytes, count)
}

// BytesDown returns the number of bytes delivered target->client.
func (p *Proxy) BytesDown() int64 { return p.down.delivered.Load() }

// BytesUp returns the number of bytes delivered client->target.
func (p *Proxy) BytesUp() int64 { return p.up.delivered.Load() }

// Conns returns the number of currently open proxied connections (accepted
// and connected to the target).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// snapshot returns the current connections; p.mu must be held.
func (p *Proxy) snapshot() []*pconn {
	conns := make([]*pconn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	return conns
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			p.cfg.logf("faultproxy: accept: %v", err)
			t := time.NewTimer(5 * time.Millisecond)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		client := nc.(*net.TCPConn)
		if p.refuse.Load() {
			p.cfg.logf("faultproxy: refused %v", client.RemoteAddr())
			// FIN first, so a client that already sent data still tends to
			// read EOF rather than a reset.
			_ = client.CloseWrite()
			_ = client.Close()
			continue
		}
		p.wg.Add(1)
		go p.handle(client)
	}
}

func (p *Proxy) handle(client *net.TCPConn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: p.cfg.dialTimeout}
	sc, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		p.cfg.logf("faultproxy: dial %s: %v", p.target, err)
		_ = client.Close()
		return
	}
	server := sc.(*net.TCPConn)
	c := &pconn{p: p, client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.abort()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	p.cfg.logf("faultproxy: open %v -> %v", client.RemoteAddr(), server.RemoteAddr())

	c.run()

	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.cfg.logf("faultproxy: closed %v -> %v", client.RemoteAddr(), server.RemoteAddr())
}

// direction holds the proxy-wide state of one direction: delivered bytes
// and pending corruption.
type direction struct {
	delivered atomic.Int64

	mu        sync.Mutex
	ingress   int64 // bytes received from sources in this direction
	next      int64 // ingress offset of the next byte to corrupt
	every     int64 // afterBytes
	remaining int   // bytes still to corrupt
}

func (d *direction) arm(afterBytes int64, count int) {
	if afterBytes < 0 {
		afterBytes = 0
	}
	d.mu.Lock()
	d.every = afterBytes
	d.next = d.ingress + afterBytes
	d.remaining = max(count, 0)
	d.mu.Unlock()
}

// ingest accounts for b, just received, and corrupts the bytes of b that
// fall on pending corruption offsets.
func (d *direction) ingest(b []byte) {
	d.mu.Lock()
	start := d.ingress
	end := start + int64(len(b))
	for d.remaining > 0 && d.next < end {
		b[d.next-start] ^= FlipMask
		d.remaining--
		d.next += d.every + 1
	}
	d.ingress = end
	d.mu.Unlock()
}

// pconn is one proxied connection.
type pconn struct {
	p              *Proxy
	client, server *net.TCPConn
	done           chan struct{} // closed by abort
	abortOnce      sync.Once
}

// abort resets both sides and wakes every goroutine of the connection.
func (c *pconn) abort() {
	c.abortOnce.Do(func() {
		close(c.done)
		for _, tc := range []*net.TCPConn{c.client, c.server} {
			_ = tc.SetLinger(0)
			_ = tc.Close()
		}
	})
}

func (c *pconn) run() {
	up := newPipe(c, c.client, c.server, &c.p.up)
	down := newPipe(c, c.server, c.client, &c.p.down)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); up.readLoop() }()
	go func() { defer wg.Done(); down.readLoop() }()
	go func() { defer wg.Done(); up.writeLoop() }()
	down.writeLoop()
	<-up.wdone
	// Both directions are finished (or the connection was aborted).
	_ = c.client.Close()
	_ = c.server.Close()
	wg.Wait()
	up.drain()
	down.drain()
}

// buffer is a pooled read buffer shared by the chunks read into it.
type buffer struct {
	b    []byte
	refs atomic.Int32
}

var bufPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, bufSize)} }}

func getBuffer() *buffer {
	b := bufPool.Get().(*buffer)
	b.refs.Store(1)
	return b
}

func (b *buffer) unref() {
	if b.refs.Add(-1) == 0 {
		bufPool.Put(b)
	}
}

// chunk is a run of bytes waiting in a pipe.
type chunk struct {
	buf     *buffer
	off, n  int
	first   time.Time // release time of the first read in the chunk
	release time.Time // release time of the whole chunk
}

// pipe forwards one direction of a connection.
type pipe struct {
	c        *pconn
	dir      *direction
	src, dst *net.TCPConn
	limit    int

	wake  chan struct{} // reader -> writer: data or EOF queued
	space chan struct{} // writer -> reader: queue shrank
	wdone chan struct{} // closed when the writer exits

	mu     sync.Mutex
	q      []chunk
	head   int
	queued int  // bytes in q[head:]
	eof    bool // reader finished
	dead   bool // writer failed; discard everything
}

func newPipe(c *pconn, src, dst *net.TCPConn, dir *direction) *pipe {
	return &pipe{
		c:     c,
		dir:   dir,
		src:   src,
		dst:   dst,
		limit: c.p.cfg.queueLimit,
		wake:  make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		wdone: make(chan struct{}),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (pp *pipe) full() bool {
	return pp.queued >= pp.limit || len(pp.q)-pp.head >= maxChunks
}

func (pp *pipe) readLoop() {
	cur := getBuffer()
	off := 0
	defer func() { cur.unref() }()
	for {
		pp.mu.Lock()
		for pp.full() && !pp.dead {
			pp.mu.Unlock()
			select {
			case <-pp.space:
			case <-pp.wdone:
				return
			case <-pp.c.done:
				return
			}
			pp.mu.Lock()
		}
		dead := pp.dead
		pp.mu.Unlock()
		if dead {
			return
		}
		if len(cur.b)-off < minRead {
			cur.unref()
			cur = getBuffer()
			off = 0
		}
		n, err := pp.src.Read(cur.b[off:])
		if n > 0 {
			pp.dir.ingest(cur.b[off : off+n])
			release := time.Now().Add(time.Duration(pp.c.p.delay.Load()))
			pp.mu.Lock()
			if pp.dead {
				pp.mu.Unlock()
				return
			}
			pp.enqueue(cur, off, n, release)
			pp.mu.Unlock()
			signal(pp.wake)
			off += n
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				select {
				case <-pp.c.done:
				default:
					// A reset (or other failure) on one side is passed on
					// as a reset of the whole connection.
					pp.c.p.cfg.logf("faultproxy: read %v: %v", pp.src.RemoteAddr(), err)
					pp.c.abort()
				}
			}
			pp.mu.Lock()
			pp.eof = true
			pp.mu.Unlock()
			signal(pp.wake)
			return
		}
	}
}

// enqueue appends cur.b[off:off+n] to the queue; pp.mu must be held.
func (pp *pipe) enqueue(cur *buffer, off, n int, release time.Time) {
	pp.queued += n
	if pp.head < len(pp.q) {
		t := &pp.q[len(pp.q)-1]
		if t.buf == cur && t.off+t.n == off && release.Sub(t.first) <= coalesceWindow {
			t.n += n
			if release.After(t.release) {
				t.release = release
			}
			return
		}
	}
	cur.refs.Add(1)
	pp.q = append(pp.q, chunk{buf: cur, off: off, n: n, first: release, release: release})
}

// pop removes the head chunk; pp.mu must be held and the queue non-empty.
func (pp *pipe) pop() chunk {
	ch := pp.q[pp.head]
	pp.q[pp.head] = chunk{}
	pp.head++
	pp.queued -= ch.n
	switch {
	case pp.head == len(pp.q):
		pp.q = pp.q[:0]
		pp.head = 0
	case pp.head >= 256 && pp.head*2 >= len(pp.q):
		n := copy(pp.q, pp.q[pp.head:])
		clear(pp.q[n:])
		pp.q = pp.q[:n]
		pp.head = 0
	}
	return ch
}

func (pp *pipe) writeLoop() {
	defer close(pp.wdone)
	p := pp.c.p
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if g := p.stall.Load(); g != nil {
			select {
			case <-g.ch:
			case <-pp.c.done:
				return
			}
			continue
		}
		pp.mu.Lock()
		if pp.head == len(pp.q) {
			eof := pp.eof
			pp.mu.Unlock()
			if eof {
				_ = pp.dst.CloseWrite()
				return
			}
			select {
			case <-pp.wake:
			case <-pp.c.done:
				return
			}
			continue
		}
		if wait := time.Until(pp.q[pp.head].release); wait > 0 {
			pp.mu.Unlock()
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-pp.c.done:
				return
			}
			continue
		}
		ch := pp.pop()
		pp.mu.Unlock()
		signal(pp.space)
		_, err := pp.dst.Write(ch.buf.b[ch.off : ch.off+ch.n])
		ch.buf.unref()
		if err != nil {
			select {
			case <-pp.c.done:
			default:
				p.cfg.logf("faultproxy: write %v: %v", pp.dst.RemoteAddr(), err)
			}
			pp.mu.Lock()
			pp.dead = true
			pp.mu.Unlock()
			pp.drain()
			// Wake the reader: it will stop reading this direction.
			_ = pp.src.CloseRead()
			return
		}
		pp.dir.delivered.Add(int64(ch.n))
	}
}

// drain drops every queued chunk.
func (pp *pipe) drain() {
	pp.mu.Lock()
	for pp.head < len(pp.q) {
		ch := pp.pop()
		ch.buf.unref()
	}
	pp.mu.Unlock()
}
