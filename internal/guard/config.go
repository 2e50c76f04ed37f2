package guard

import (
	"cmp"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zsend/zsend/internal/curve"
)

// Defaults applied to zero Config fields.
const (
	DefaultMaxFrameSize      = 8 << 20
	DefaultMessageFrames     = 128
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultWriteStallTimeout = 10 * time.Second
	DefaultMaxConns          = 1024

	// maxReadySize bounds the peer's READY command (its metadata).
	maxReadySize = 64 << 10
)

// Config holds the limits of the guarded transports. Zero values mean the
// documented defaults; for the fields that say so, a negative value turns
// the limit off.
type Config struct {
	// MaxFrameSize is the largest ZMTP frame body accepted from the peer
	// (default 8 MiB). It is checked on the raw byte stream before zmq4
	// sees the length.
	MaxFrameSize int64
	// MaxMessageSize is the largest sum of frame bodies of one multipart
	// message (default 4*MaxFrameSize; negative: no limit).
	MaxMessageSize int64
	// MaxMessageFrames is the largest number of frames in one message
	// (default 128; negative: no limit).
	MaxMessageFrames int
	// HandshakeTimeout bounds the peer's greeting and READY (default 5s;
	// negative: no limit). On the accepting side it never blocks zmq4's
	// accept loop; on the dialing side it bounds zmq4's Dial.
	HandshakeTimeout time.Duration
	// WriteStallTimeout closes a connection when a Write makes no progress
	// for this long (default 10s; negative: no limit). Progress is bytes
	// accepted by the kernel or, on Linux, bytes consumed by the peer, so
	// a peer that reads slowly but steadily is kept, while one that stops
	// reading is evicted one to two timeouts after it stopped.
	WriteStallTimeout time.Duration
	// IdleTimeout closes a connection when nothing was read for this long
	// (default 0: off).
	IdleTimeout time.Duration
	// MaxConns is the most connections one listener keeps open, counting
	// those still in the handshake (default 1024; negative: no limit).
	// Connections accepted beyond it are closed at once.
	MaxConns int
	// CurveServer, when set, makes listeners CURVE servers; see
	// CurveServer. nil: the NULL mechanism.
	CurveServer *CurveServer
	// CurveClient, when set, makes dialed connections CURVE clients; see
	// CurveClient. nil: the NULL mechanism.
	CurveClient *CurveClient
}

// Stats is a snapshot of the guard's counters.
type Stats struct {
	Open              int64 // connections currently open (accepted or dialed, handshake included)
	Handshaking       int64 // accepted connections currently in the pre-handshake
	Accepted          int64 // connections handed to zmq4 after a valid pre-handshake
	Dialed            int64 // connections dialed
	Rejected          int64 // accepted connections closed at once because of MaxConns
	HandshakeFailures int64 // invalid greeting or READY (wrong signature, version, mechanism, malformed metadata)
	HandshakeTimeouts int64 // greeting and READY not received within HandshakeTimeout
	FrameTooLarge     int64 // a frame header announced more than MaxFrameSize
	MessageTooLarge   int64 // a message exceeded MaxMessageSize or MaxMessageFrames
	BadFrames         int64 // a frame with reserved flag bits set
	WriteStalls       int64 // connections evicted by WriteStallTimeout
	IdleTimeouts      int64 // connections closed by IdleTimeout
	Orphaned          int64 // connections zmq4 never adopted (its own handshake failed)
	DuplicateIdentity int64 // peers refused for announcing the routing identity of a live connection
	CurveDenied       int64 // CURVE clients refused by CurveServer.Authorize
	CurveErrors       int64 // CURVE MESSAGEs refused after the handshake (forged, replayed, reordered, malformed)
}

// counter names one of the guard's counters.
type counter int

const (
	cOpen counter = iota
	cHandshaking
	cAccepted
	cDialed
	cRejected
	cHandshakeFailures
	cHandshakeTimeouts
	cFrameTooLarge
	cMessageTooLarge
	cBadFrames
	cWriteStalls
	cIdleTimeouts
	cOrphaned
	cDuplicateIdentity
	cCurveDenied
	cCurveErrors
	nCounters
)

// counters is the live, atomically updated form of Stats.
type counters [nCounters]atomic.Int64

func (c *counters) snapshot() Stats {
	return Stats{
		Open:              c[cOpen].Load(),
		Handshaking:       c[cHandshaking].Load(),
		Accepted:          c[cAccepted].Load(),
		Dialed:            c[cDialed].Load(),
		Rejected:          c[cRejected].Load(),
		HandshakeFailures: c[cHandshakeFailures].Load(),
		HandshakeTimeouts: c[cHandshakeTimeouts].Load(),
		FrameTooLarge:     c[cFrameTooLarge].Load(),
		MessageTooLarge:   c[cMessageTooLarge].Load(),
		BadFrames:         c[cBadFrames].Load(),
		WriteStalls:       c[cWriteStalls].Load(),
		IdleTimeouts:      c[cIdleTimeouts].Load(),
		Orphaned:          c[cOrphaned].Load(),
		DuplicateIdentity: c[cDuplicateIdentity].Load(),
		CurveDenied:       c[cCurveDenied].Load(),
		CurveErrors:       c[cCurveErrors].Load(),
	}
}

// global counts every guarded connection of the process.
var global counters

// settings is a normalized Config plus the counters it reports to.
type settings struct {
	maxFrame   int64
	maxMsg     int64 // 0: no limit
	maxFrames  int   // 0: no limit
	handshake  time.Duration
	writeStall time.Duration
	idle       time.Duration
	orphan     time.Duration
	maxConns   int // 0: no limit
	stats      *counters

	curveServer *CurveServer
	curveClient *CurveClient
	curveOnce   sync.Once
	curveSrv    *curve.Server // cookie keys and replay cache shared by the listeners

	idMu sync.Mutex
	ids  map[string]*conn // routing identities of live accepted connections
}

// claimIdentity registers id for c unless a live connection holds it.
func (s *settings) claimIdentity(id []byte, c *conn) bool {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if _, taken := s.ids[string(id)]; taken {
		return false
	}
	if s.ids == nil {
		s.ids = make(map[string]*conn)
	}
	s.ids[string(id)] = c
	return true
}

// releaseIdentity forgets id if c holds it.
func (s *settings) releaseIdentity(id []byte, c *conn) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.ids[string(id)] == c {
		delete(s.ids, string(id))
	}
}

type ctxKey struct{}

// WithConfig returns a copy of ctx carrying c. Pass it to zmq4.NewRouter or
// zmq4.NewDealer: zmq4 hands the socket's context to the transport, so the
// guarded transports of that socket use c. Every call creates a fresh set of
// counters shared by all sockets created from the returned context; read
// them with StatsFrom.
func WithConfig(ctx context.Context, c Config) context.Context {
	return context.WithValue(ctx, ctxKey{}, newSettings(c))
}

// StatsFrom returns a snapshot of the counters attached to ctx (or to any
// context derived from it) by WithConfig. For a context without a Config it
// returns the process-wide totals over all guarded connections.
func StatsFrom(ctx context.Context) Stats {
	if s, ok := ctx.Value(ctxKey{}).(*settings); ok {
		return s.stats.snapshot()
	}
	return global.snapshot()
}

type closeHookKey struct{}

// WithCloseHook returns a copy of ctx carrying f. A listener made from it
// calls f with the peer's ZMTP Identity (from its READY) when an accepted
// connection that announced one closes, for whatever reason. ZeroMQ itself
// never tells a ROUTER that a peer left; this does. f is called from the
// closing goroutine and must not block.
func WithCloseHook(ctx context.Context, f func(identity []byte)) context.Context {
	return context.WithValue(ctx, closeHookKey{}, f)
}

type curvePeerHookKey struct{}

// WithCurvePeerHook returns a copy of ctx carrying f. A CURVE listener
// made from it calls f with the routing identity and the long-term public
// key of every client it accepts, before zmq4 sees the connection (so
// before any message of that peer can be received). Identities are unique
// among live connections (see the package documentation); the close hook
// reports when one ends. f must not block.
func WithCurvePeerHook(ctx context.Context, f func(identity []byte, key [32]byte)) context.Context {
	return context.WithValue(ctx, curvePeerHookKey{}, f)
}

func curvePeerHookFrom(ctx context.Context) func([]byte, [32]byte) {
	f, _ := ctx.Value(curvePeerHookKey{}).(func([]byte, [32]byte))
	return f
}

func closeHookFrom(ctx context.Context) func([]byte) {
	f, _ := ctx.Value(closeHookKey{}).(func([]byte))
	return f
}

// defaultSettings is used by sockets whose context carries no Config.
var defaultSettings = newSettings(Config{})

func settingsFrom(ctx context.Context) *settings {
	if s, ok := ctx.Value(ctxKey{}).(*settings); ok {
		return s
	}
	return defaultSettings
}

func newSettings(c Config) *settings {
	s := &settings{stats: new(counters)}
	if c == (Config{}) {
		// The default settings report to the global counters only.
		s.stats = &global
	}
	s.curveServer, s.curveClient = c.CurveServer, c.CurveClient
	s.maxFrame = c.MaxFrameSize
	if s.maxFrame <= 0 {
		s.maxFrame = DefaultMaxFrameSize
	}
	switch {
	case c.MaxMessageSize == 0:
		s.maxMsg = 4 * s.maxFrame
	case c.MaxMessageSize > 0:
		s.maxMsg = c.MaxMessageSize
	}
	switch {
	case c.MaxMessageFrames == 0:
		s.maxFrames = DefaultMessageFrames
	case c.MaxMessageFrames > 0:
		s.maxFrames = c.MaxMessageFrames
	}
	s.handshake = orDefault(c.HandshakeTimeout, DefaultHandshakeTimeout)
	s.writeStall = orDefault(c.WriteStallTimeout, DefaultWriteStallTimeout)
	if c.IdleTimeout > 0 {
		s.idle = c.IdleTimeout
	}
	switch {
	case c.MaxConns == 0:
		s.maxConns = DefaultMaxConns
	case c.MaxConns > 0:
		s.maxConns = c.MaxConns
	}
	// zmq4 adopts a connection handed to it once its own handshake is done
	// and the connection is registered; registration may wait for the
	// socket-wide writer mutex, which a stalled write holds for up to the
	// write stall timeout.
	s.orphan = cmp.Or(s.handshake, DefaultHandshakeTimeout) + cmp.Or(s.writeStall, DefaultWriteStallTimeout)
	return s
}

// orDefault maps 0 to def and a negative value to 0 (off).
func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

// add adds delta to counter k of s and, when s has its own counters, to the
// same counter of the process-wide totals.
func (s *settings) add(k counter, delta int64) {
	s.stats[k].Add(delta)
	if s.stats != &global {
		global[k].Add(delta)
	}
}
