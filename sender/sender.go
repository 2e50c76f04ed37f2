// Package sender is the zsend side of ZSND: a ZeroMQ ROUTER that serves
// files to any number of receivers, each in its own session.
//
// # Data flow
//
// For each session with a request in progress a producer goroutine preads
// the next chunk into a pooled buffer, checks with fstat that the file has
// not changed, and takes the chunk's BLAKE3 from a cache shared by every
// session sending the same version of that file (computing it if no session
// has yet; the whole-file hash advances in the same step). It reads a chunk
// only when the session holds credit for it, so memory is bounded by the
// receivers' windows, never by file size.
//
// One goroutine, the loop in Serve, owns all session state and the socket's
// sends. It takes turns across sessions, sending at most one message per
// session per round, so a fast receiver cannot starve a slow one. A
// receiver's credit is never exceeded (credit.Gate). With
// Config.RateLimit, a chunk also waits for the server's budget (one token
// bucket for all sessions, see rateState) without holding up anything
// else the loop does.
//
// # Session state machine (per ROUTER identity)
//
//	(none) --HELLO ok--> OPEN --BYE / ERROR / silence / protocol error--> (none)
//	(none) --HELLO, server full--> waiting (sessions probed) --slot freed--> OPEN
//	                                                 \--500 ms, none freed--> ERROR 429
//	(none) --anything but HELLO, BYE, ERROR--> ERROR 400 "no session"
//	OPEN: GET queues a request; CREDIT grows the gate; CANCEL drops a
//	request; PING is answered with PONG. The head request goes
//	FILE -> CHUNK* -> END (or ERROR), then the next one starts.
//
// zmq4 traps and what this package does about them: ROUTER Send blocks on a
// stuck peer, so the guarded transport (internal/guard) evicts a peer whose
// writes stall; Send never reports loss, so nothing here trusts it: progress
// is driven only by the receiver's CREDIT; Recv has no context, so it runs
// in its own goroutine (internal/zsock) and the socket is closed to stop it.
package sender

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/internal/zsock"
	"github.com/zsend/zsend/protocol"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Endpoint to bind: tcp://HOST:PORT (port 0 picks one) or ipc://PATH.
	Endpoint string
	// Paths to serve; each is served under its base name. A directory
	// also serves the regular files below it as "base/rel/path".
	Paths []string
	// ChunkSize proposed to receivers; default protocol.DefaultChunk (1 MiB).
	ChunkSize int
	// Heartbeat is the interval between PINGs to an idle receiver; default 2s.
	Heartbeat time.Duration
	// PeerTimeout drops a session that sent nothing for this long; default 10s.
	PeerTimeout time.Duration
	// MaxSessions is the most concurrent sessions; default 256.
	MaxSessions int
	// MaxRequests is the most queued GETs per session; default 1024.
	MaxRequests int
	// ShutdownRetry is the reconnect delay announced in BYE on shutdown; default 1s.
	ShutdownRetry time.Duration
	// Name identifies this server to receivers (WELCOME); default the host name.
	Name string
	// Limits bounds the transport; zero fields take the defaults.
	Limits Limits
	// Events, if set, is called for operator visibility (session
	// opened/closed, file sent, request refused, version published). It
	// is called from the serving goroutine and, for publishing events,
	// from the goroutine that publishes (Listen, Publish, the watcher), so
	// it must be safe for concurrent use, and must not block. The
	// "curve-refused" event comes from the goroutine of the refused
	// connection's handshake. An event that describes a message to a peer
	// (session-open, file-start, file-sent, refused, error, barrier) is
	// called before that message is sent: whoever has the message can
	// find its event.
	Events func(Event)
	// Curve, when set, makes the server a CURVE server (ZeroMQ RFC 26):
	// every connection is authenticated and encrypted, and peers without
	// CURVE are refused during the handshake.
	Curve *CurveServer

	// StateDir is where published versions are kept (store, manifests,
	// sequence numbers; see docs/DESIGN-trees.md section 4). Empty: no
	// versions are published, and LIST/MGET/VGET find no trees (the
	// command line always sets it, by default to DefaultStateDir()). It
	// is not touched when no directory is served.
	StateDir string
	// KeepVersions is how many versions of each tree are kept; default
	// DefaultKeepVersions (16).
	KeepVersions int
	// Watch publishes a new version whenever a served tree changes
	// (fsnotify, after Debounce of quiet), and rescans every RescanEvery
	// as a safety net. Without it, versions are published by Listen and
	// Publish only.
	Watch bool
	// Debounce is the quiet time --watch waits for; default 100ms.
	Debounce time.Duration
	// RescanEvery is --watch's periodic rescan; default 60s.
	RescanEvery time.Duration

	// Fleet bounds the fleet table of node reports (PROTOCOL.md section
	// 14): MaxNodes (default 10000), LostAfter (default 30s: a node not
	// heard from for longer is shown lost), MaxText.
	Fleet FleetConfig
	// Barrier coordinates switches: followers stage each new version and
	// switch when the server sends SWITCH, once every live follower of the
	// tree (or Quorum of them, when Quorum > 0) has staged it, or at
	// BarrierTimeout (default 30s), when those that have staged switch.
	Barrier        bool
	Quorum         int
	BarrierTimeout time.Duration
	// SwitchDelay is how long after a barrier is decided its nodes switch
	// (zsend --switch-delay, PROTOCOL.md section 17): the SWITCHATs name
	// that instant, so every node at version 4 switches at once whatever
	// order its message went out in; 0 is DefaultSwitchDelay, negative is
	// none (the instant is the decision's), at most 10s. Nodes at an older
	// version get SWITCH at the decision and switch on reading it.
	SwitchDelay time.Duration

	// AccessFrom, on a relay, answers ACCESS for keys below it by asking
	// its parent (PROTOCOL.md section 15.8); nil: answered from Curve.
	AccessFrom func(ctx context.Context, key [32]byte) ([]string, error)

	// Relay makes the server a relay's (zrecv --follow --serve): it
	// serves these trees, with the versions given to Offer, and nothing
	// else (no Paths, no state directory). See relay.go.
	Relay []string
	// RateLimit caps the chunk data this server sends, all sessions
	// together, in bytes per second (zsend --rate-limit); 0 is unlimited.
	// What is counted is the data octets of CHUNK messages: file contents
	// (GET, VGET) and manifests (MGET). Not counted, and never held
	// back: FILE, END, ERROR and every control reply (PONG, TREE, FLEET,
	// SWITCH, BYE), nor the headers and framing of any message (a few
	// dozen octets per chunk). The budget is a token bucket
	// (internal/ratelimit) holding ratelimit.Burst(RateLimit, chunk size)
	// octets, max(64 KiB, RateLimit/20, one chunk), full at start: at
	// most that much goes out at once beyond the rate. Sessions waiting
	// for the budget are served in turn (the first refused is the next
	// served). It must be at least protocol.MinChunkSize (4 KiB/s); with
	// a limit, the chunk size proposed to receivers is at most the
	// largest power of two not above RateLimit, so a lone receiver gets
	// a chunk at least about once a second (N receivers at once get about
	// RateLimit/N each).
	RateLimit int64

	// ExternalBarrier is for a relay (PROTOCOL.md section 15.6): the
	// server never decides a barrier itself; its parent does, and the
	// relay passes each decision on with Switch. A version is announced
	// with BARRIER when its parent announced it so (Offer's barrier).
	// Exclusive with Barrier.
	ExternalBarrier bool
	// OnReport, if set, is called when a row of the fleet table changed
	// (a REPORT or FORWARD with a new state, version, error or hook, or a
	// new row), so that a relay forwards it upward at once (Forwards).
	// It is called from the serving goroutine and must not block.
	OnReport func()

	curve *guard.CurveServer // set by setDefaults from Curve
}

// Limits bounds what a peer can make the server hold or wait for at the
// transport, below ZSND: it is applied to the raw byte stream before a
// message is even assembled. Zero fields take the defaults; a negative
// duration or MaxConns turns that limit off.
type Limits struct {
	// MaxFrameSize is the largest ZMTP frame accepted; default 64 KiB
	// (nothing a receiver sends is larger than a few KiB).
	MaxFrameSize int64
	// HandshakeTimeout bounds a new connection's ZMTP greeting and READY;
	// default 5s.
	HandshakeTimeout time.Duration
	// WriteStallTimeout drops a connection on which a write makes no
	// progress for this long (a peer that stopped reading); default 10s.
	WriteStallTimeout time.Duration
	// IdleTimeout drops a connection from which nothing was read for this
	// long; default PeerTimeout + Heartbeat.
	IdleTimeout time.Duration
	// MaxConns is the most connections kept open, handshakes included;
	// default 1024.
	MaxConns int
}

func (l Limits) guard() guard.Config {
	return guard.Config{MaxFrameSize: l.MaxFrameSize, HandshakeTimeout: l.HandshakeTimeout,
		WriteStallTimeout: l.WriteStallTimeout, IdleTimeout: l.IdleTimeout, MaxConns: l.MaxConns}
}

// CurveServer configures CURVE on the server.
type CurveServer struct {
	// PublicKey and SecretKey are the server's long-term pair (see
	// zsend --keygen).
	PublicKey, SecretKey [32]byte
	// Authorize reports whether a client's long-term public key may
	// connect. It is called during the handshake, once the client proved
	// it holds the key's secret half; a refused key gets no session
	// state. Exactly one of Authorize and AllowAny must be set.
	Authorize func(client [32]byte) bool
	// AllowAny accepts every client key: the traffic is encrypted, but
	// anyone may fetch.
	AllowAny bool
	// Access, if set, is asked on every request whether the session's
	// client key may fetch the name (see internal/acl for zsend's access
	// list file). A refused request gets ERROR 403. nil: every authorized
	// key may fetch everything served.
	Access func(client [32]byte, name string) bool
}

// KeyFingerprint returns how a CURVE key is shown in logs and errors: the
// first 8 bytes of the BLAKE3-256 of the key, in hexadecimal.
func KeyFingerprint(key [32]byte) string { return zcert.Fingerprint(key) }

// Event is something an operator may want to see.
type Event struct {
	// "session-open", "session-close", "file-start", "progress" (throttled),
	// "file-sent", "refused", "error"
	Kind    string
	Peer    string // receiver's PeerID (or its identity if none); not unique
	Session string // the session's ROUTER identity, hex: unique while it lives
	Name    string
	Size    int64
	Offset  int64 // file-start: where the transfer starts (resume)
	Sent    int64 // progress: bytes of the file sent so far, offset included
	Hash    protocol.Hash
	Message string

	// "published": Name is the tree, Seq and Version (hex id) the new
	// version, Entries its entries, Files and Size its regular files and
	// their total bytes, Stored the files copied into the store by this
	// scan. "skipped": Name is TREE/PATH of an entry left out of a version
	// (device, socket, FIFO, unpublishable name) and Message says why.
	// "report": a node's report changed its row of the fleet table
	// (Name is the tree, Seq and Version what the node runs, Message
	// "node NAME STATE"). "barrier": a barrier was decided (Name, Seq,
	// Version; Message says how, and which nodes had not staged; At is
	// the instant its nodes switch at, PROTOCOL.md section 17).
	At      time.Time
	Seq     uint64
	Version string
	Entries int64
	Files   int64
	Stored  int64
	Key     string // CURVE: fingerprint of the session's client key (see KeyFingerprint)
}

// progressEvery is the least interval between progress events of a transfer.
const progressEvery = 200 * time.Millisecond

const prefetchChunks = 2 // chunks a producer may read ahead (within credit)

func (c *Config) setDefaults() error {
	if c.ChunkSize == 0 {
		c.ChunkSize = protocol.DefaultChunk
	}
	if c.ChunkSize < protocol.MinChunkSize || c.ChunkSize > protocol.MaxChunkSize {
		return fmt.Errorf("chunk size %d outside [%d, %d]", c.ChunkSize, protocol.MinChunkSize, protocol.MaxChunkSize)
	}
	if c.RateLimit < 0 || (c.RateLimit > 0 && c.RateLimit < protocol.MinChunkSize) {
		return fmt.Errorf("rate limit %d bytes/s: want 0 (unlimited) or at least %d", c.RateLimit, protocol.MinChunkSize)
	}
	if c.RateLimit > 0 {
		c.ChunkSize = min(c.ChunkSize, max(protocol.MinChunkSize, 1<<(bits.Len64(uint64(c.RateLimit))-1)))
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.PeerTimeout <= 0 {
		c.PeerTimeout = 10 * time.Second
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 256
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = 1024
	}
	if c.ShutdownRetry <= 0 {
		c.ShutdownRetry = time.Second
	}
	if c.Name == "" {
		c.Name, _ = os.Hostname()
	}
	if len(c.Relay) > 0 && len(c.Paths) > 0 {
		return errors.New("a relay serves the trees it follows, not paths")
	}
	if cv := c.Curve; cv != nil {
		if (cv.Authorize == nil) == !cv.AllowAny {
			return errors.New("CURVE: set exactly one of Authorize and AllowAny")
		}
		if cv.SecretKey == ([32]byte{}) {
			return errors.New("CURVE: no secret key")
		}
		events, authorize := c.Events, cv.Authorize
		guardCurve := &guard.CurveServer{PublicKey: cv.PublicKey, SecretKey: cv.SecretKey}
		if !cv.AllowAny {
			guardCurve.Authorize = func(k [32]byte) error {
				if authorize(k) {
					return nil
				}
				fp := zcert.Fingerprint(k)
				if events != nil {
					events(Event{Kind: "curve-refused", Peer: "key:" + fp, Message: "client key " + fp + " is not authorized"})
				}
				return fmt.Errorf("client key %s not authorized", fp)
			}
		}
		c.curve = guardCurve
	}
	if c.Limits.MaxFrameSize == 0 {
		// Nothing a receiver sends is large: HELLO/GET headers are < 8 KiB.
		c.Limits.MaxFrameSize = 64 << 10
	}
	if c.KeepVersions <= 0 {
		c.KeepVersions = DefaultKeepVersions
	}
	if c.Debounce <= 0 {
		c.Debounce = 100 * time.Millisecond
	}
	if c.RescanEvery <= 0 {
		c.RescanEvery = 60 * time.Second
	}
	if c.Barrier && c.ExternalBarrier {
		return errors.New("Barrier and ExternalBarrier are exclusive: a relay's parent decides its barriers")
	}
	if c.BarrierTimeout <= 0 {
		c.BarrierTimeout = 30 * time.Second
	}
	switch {
	case c.SwitchDelay == 0:
		c.SwitchDelay = DefaultSwitchDelay
	case c.SwitchDelay < 0:
		c.SwitchDelay = 0
	case c.SwitchDelay > protocol.MaxSwitchInMS*time.Millisecond:
		return fmt.Errorf("switch delay %v is over %v", c.SwitchDelay, protocol.MaxSwitchInMS*time.Millisecond)
	}
	if c.Limits.IdleTimeout == 0 {
		// Receivers PING every few seconds; a connection silent for longer
		// than the session timeout holds nothing worth keeping.
		c.Limits.IdleTimeout = c.PeerTimeout + c.Heartbeat
	}
	return nil
}

// DefaultSwitchDelay is Config.SwitchDelay's default: longer than a
// server on a busy 2-core machine takes to send SWITCHAT to 50 followers
// (up to 110 ms measured, BENCHMARKS.md), short beside a version's staging.
const DefaultSwitchDelay = 250 * time.Millisecond

// Server serves files on one ROUTER socket.
type Server struct {
	cfg      Config
	cat      *catalogue
	pub      *publisher // nil without a state directory
	cache    *hashCache
	sock     zmq4.Socket
	sockCtx  context.Context
	cancel   context.CancelFunc
	endpoint string

	bufs sync.Pool

	sessions map[string]*session
	ring     []*session // round-robin order
	turn     int
	wake     chan struct{}
	// announce is signalled when a version is published, for the
	// subscriptions (LIST with SUBSCRIBE).
	announce chan struct{}
	departed chan departure // connections the guard saw close
	keys     *keyTable      // CURVE client key of each routing identity
	// unsolicited counts, per routing id, the replies sent since the last
	// housekeeping tick to messages outside a session (see replyNoSession).
	unsolicited map[string]int
	lastProbe   time.Time // the last round of liveness probes
	waiting     []waitingHello
	waitTimer   *time.Timer // fires when the first waiting HELLO's probe is over

	closeOnce sync.Once
	stats     counters
	fleet     *fleetState
	// switchWake is signalled when Switch queued a decision (fleetState.switches).
	switchWake chan struct{}
	// accessDone carries a relay's answers to ACCESS (access.go).
	accessDone chan accessReply

	rate rateState // Config.RateLimit
}

// counters are updated by the serving goroutine and producers, read by Stats.
type counters struct {
	sessions, openFiles, opened, dropped, filesSent atomic.Int64
}

// Stats is a snapshot of what the server holds and has done.
type Stats struct {
	Sessions  int64 // sessions open now
	OpenFiles int64 // source files open now (at most one per session)
	Opened    int64 // sessions opened since start
	Dropped   int64 // sessions closed since start, for any reason
	FilesSent int64 // files sent completely (counted as their END or PACK is queued)
}

// Stats returns current counters; safe from any goroutine.
func (s *Server) Stats() Stats {
	return Stats{Sessions: s.stats.sessions.Load(), OpenFiles: s.stats.openFiles.Load(),
		Opened: s.stats.opened.Load(), Dropped: s.stats.dropped.Load(), FilesSent: s.stats.filesSent.Load()}
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("sender: server closed")

// Listen validates cfg, binds the endpoint and returns a Server ready to
// Serve. The caller must Close it (or let Serve return).
func Listen(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var cat *catalogue
	var err error
	if len(cfg.Relay) > 0 {
		cat = &catalogue{roots: map[string]root{}} // a relay serves versions only
	} else if cat, err = newCatalogue(cfg.Paths); err != nil {
		return nil, err
	}
	ep, err := zsock.Endpoint(cfg.Endpoint)
	if err != nil {
		cat.close()
		return nil, err
	}
	var pub *publisher
	if len(cfg.Relay) > 0 {
		if pub, err = newRelayPublisher(cfg.Relay, cfg.KeepVersions); err != nil {
			cat.close()
			return nil, err
		}
	} else if cfg.StateDir != "" && cat.hasDir() {
		pub, err = openPublisher(cfg.StateDir, cfg.KeepVersions, cat.roots, cfg.Events)
		if err != nil {
			cat.close()
			return nil, err
		}
		// The first versions, before anyone can ask. A tree whose scan
		// fails (a file that keeps changing) keeps its previous version
		// and is retried by Publish or the watcher; anything else (the
		// state directory unwritable) stops the start.
		if err := pub.publishAll(ctx); err != nil && !errors.Is(err, errUnstable) {
			pub.close()
			cat.close()
			return nil, err
		}
	}
	// ZeroMQ never tells a ROUTER that a peer left; the guard does, so a
	// vanished receiver's session (its open file, its reads) ends at once
	// rather than at the peer timeout.
	departed := make(chan departure, 1024)
	// CURVE: the guard tells which client key each routing identity
	// proved (identities are unique among live connections), before any
	// message of that peer arrives; the entry goes when it disconnects.
	keys := &keyTable{m: map[string][32]byte{}}
	onClose := func(id []byte) {
		keys.drop(string(id))
		select {
		case departed <- departure{id: string(id), at: time.Now()}:
		default: // full: the peer timeout will do
		}
	}
	gcfg := cfg.Limits.guard()
	gcfg.CurveServer = cfg.curve
	hookCtx := guard.WithCurvePeerHook(guard.WithCloseHook(guard.WithConfig(context.WithoutCancel(ctx), gcfg), onClose),
		func(id []byte, k [32]byte) { keys.set(string(id), k) })
	sockCtx, cancel := context.WithCancel(hookCtx)
	sock := zmq4.NewRouter(sockCtx, zmq4.WithLogger(discardLogger()))
	removeStaleSocket(cfg.Endpoint)
	if err := sock.Listen(ep); err != nil {
		cancel()
		sock.Close()
		cat.close()
		if pub != nil {
			pub.close()
		}
		return nil, fmt.Errorf("binding %s: %w", cfg.Endpoint, zsock.PlainError(err))
	}
	s := &Server{
		cfg: cfg, cat: cat, pub: pub, cache: newHashCache(64), sock: sock, sockCtx: sockCtx, cancel: cancel,
		endpoint:    boundEndpoint(cfg.Endpoint, sock.Addr()),
		sessions:    make(map[string]*session),
		wake:        make(chan struct{}, 1),
		announce:    make(chan struct{}, 1),
		departed:    departed,
		unsolicited: make(map[string]int),
		fleet:       newFleetState(cfg.Fleet),
		switchWake:  make(chan struct{}, 1),
		accessDone:  make(chan accessReply, 16),
		waitTimer:   time.NewTimer(time.Hour),
		keys:        keys,
	}
	s.waitTimer.Stop()
	s.rate.init(cfg.RateLimit, int64(cfg.ChunkSize), time.Now())
	s.syncFleetLatest(time.Now())
	if pub != nil {
		pub.onPublish = func() {
			select {
			case s.announce <- struct{}{}:
			default:
			}
		}
	}
	size := cfg.ChunkSize
	s.bufs.New = func() any { b := make([]byte, size); return &b }
	return s, nil
}

// Publish scans every served tree now and publishes a new version of each
// one that changed. It returns the first error (that tree keeps its
// latest version). Without a state directory it does nothing. Safe from
// any goroutine.
func (s *Server) Publish(ctx context.Context) error {
	if s.pub == nil || s.pub.relay {
		return nil
	}
	return s.pub.publishAll(ctx)
}

// Trees describes the served trees and their latest versions, sorted by
// name. Safe from any goroutine.
func (s *Server) Trees() []TreeInfo {
	if s.pub == nil {
		return nil
	}
	return s.pub.info()
}

// removeStaleSocket removes the socket file of an ipc endpoint when it is
// a socket that nobody listens on: what a zsend that crashed (or was
// killed) leaves behind, and which would otherwise make every later bind
// fail with "address already in use". A socket someone listens on, or
// anything that is not a socket, is left alone; the bind then reports it.
func removeStaleSocket(ep string) {
	path, ok := strings.CutPrefix(ep, "ipc://")
	if !ok {
		return
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket {
		return
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		os.Remove(path)
	}
}

// keyTable maps routing identities to the CURVE client keys they proved.
type keyTable struct {
	mu sync.Mutex
	m  map[string][32]byte
}

func (t *keyTable) set(id string, k [32]byte) {
	t.mu.Lock()
	t.m[id] = k
	t.mu.Unlock()
}

func (t *keyTable) drop(id string) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

func (t *keyTable) get(id string) ([32]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k, ok := t.m[id]
	return k, ok
}

// Endpoint is the bound endpoint, with the real port when 0 was asked for.
func (s *Server) Endpoint() string { return s.endpoint }

func boundEndpoint(asked string, addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok && strings.HasPrefix(asked, "tcp://") {
		host := strings.TrimPrefix(asked, "tcp://")
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		return "tcp://" + net.JoinHostPort(strings.Trim(host, "[]"), fmt.Sprint(tcp.Port))
	}
	return asked
}

// Close stops serving and releases the socket. Safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.sock.Close()
		s.cat.close()
		if s.pub != nil {
			s.pub.close()
		}
	})
	return nil
}

// Serve runs until ctx is done, then tells every receiver it is going away
// (BYE 503 with a retry delay, so they reconnect and resume) and closes.
// It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	defer s.Close()
	if s.pub != nil && s.cfg.Watch {
		wctx, stopWatch := context.WithCancel(ctx)
		w, err := s.startWatch(wctx)
		if err != nil {
			stopWatch()
			return err
		}
		defer func() { stopWatch(); w.wait() }()
	}
	inbox := zsock.RecvLoop(s.sockCtx, s.sock, 256, nil)
	tick := time.NewTicker(s.cfg.Heartbeat / 4)
	defer tick.Stop()
	for {
		// Handle everything already received before sending more, so
		// credit and heartbeats are never stuck behind data.
		for drained := false; !drained; {
			select {
			case in, ok := <-inbox:
				if !ok {
					return ErrClosed
				}
				s.handleInbound(in)
			default:
				drained = true
			}
		}
		// While sessions have data to send the loop below does not block,
		// so check here that shutdown and housekeeping (peer timeouts,
		// liveness probes) still get their turn.
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case now := <-tick.C:
			s.housekeeping(now)
		case d := <-s.departed:
			s.peerGone(d)
		case <-s.announce:
			s.syncFleetLatest(time.Now())
			s.pushVersions()
		case now := <-s.waitTimer.C:
			s.admitWaiting(now)
		case <-s.switchWake:
			s.runSwitches(time.Now())
		case r := <-s.accessDone:
			s.finishAccess(r)
		default:
		}
		if s.sendRound() {
			continue
		}
		s.rate.arm()
		select {
		case <-ctx.Done():
			s.shutdown()
			return nil
		case in, ok := <-inbox:
			if !ok {
				return ErrClosed
			}
			s.handleInbound(in)
		case <-s.wake:
			s.admitWaiting(time.Now())
		case <-s.announce:
			s.syncFleetLatest(time.Now())
			s.pushVersions()
		case now := <-tick.C:
			s.housekeeping(now)
		case d := <-s.departed:
			s.peerGone(d)
		case now := <-s.waitTimer.C:
			s.admitWaiting(now)
		case <-s.switchWake:
			s.runSwitches(time.Now())
		case r := <-s.accessDone:
			s.finishAccess(r)
		case <-s.rate.timer.C:
			// The rate limit allows the chunk a session waits for.
		}
	}
}

// departure is a peer connection that closed, by ROUTER identity.
type departure struct {
	id string
	at time.Time
}

// peerGone drops the session of a closed connection, unless the session
// is newer than the close (the peer reconnected under the same identity).
func (s *Server) peerGone(d departure) {
	s.unwait(d.id)
	sess := s.sessions[d.id]
	if sess == nil || sess.opened.After(d.at) {
		return
	}
	s.dropSession(sess, "connection closed")
	s.compactRing()
}

func (s *Server) handleInbound(in zsock.Inbound) {
	if in.Err != nil || len(in.Frames) < 1 {
		return
	}
	id := string(in.Frames[0])
	sess := s.sessions[id]
	if sess == nil && endsSession(in.Frames[1:]) {
		// BYE or ERROR without a session, decodable or not, is ignored by
		// its command octet alone (5.2.1): answering could start a loop.
		s.unwait(id)
		return
	}
	msg, v, err := protocol.Decode(in.Frames[1:])
	if err == nil && sess != nil && v != sess.version && msg.Command() != protocol.CmdHello {
		err = &protocol.DecodeError{Command: msg.Command(), Version: v, Err: protocol.ErrVersion,
			Detail: fmt.Sprintf("version %d in a session at version %d", v, sess.version)}
	}
	if err != nil {
		var de *protocol.DecodeError
		code := protocol.CodeBadRequest
		isHello := false
		if errors.As(err, &de) {
			code = de.Code()
			isHello = de.Command == protocol.CmdHello
		}
		reply := &protocol.Error{Code: code, Message: err.Error()}
		if isHello && de.Version != protocol.Version1 {
			// HELLO's frame is frozen at version 1 (section 4); one at
			// another version comes from a client that expects another
			// HELLO: tell it which versions this server speaks.
			reply = &protocol.Error{Code: protocol.CodeVersion, Message: protocol.VersionMessage(protocol.MinVersion, protocol.MaxVersion,
				fmt.Sprintf("HELLO must be sent at version 1, not %d", de.Version))}
		} else if code == protocol.CodeVersion {
			reply.Message = protocol.VersionMessage(protocol.MinVersion, protocol.MaxVersion, err.Error())
		}
		if isHello {
			// A HELLO, even a bad one, replaces the session (5.2.2).
			s.unwait(id)
			if sess != nil {
				s.dropSession(sess, "replaced by a bad HELLO: "+err.Error())
			}
			s.replyNoSession(id, reply)
			return
		}
		if sess == nil {
			s.noSession(id, de)
			return
		}
		s.sendTo(id, sess.version, reply)
		s.dropSession(sess, "protocol error: "+err.Error())
		return
	}
	if hello, ok := msg.(*protocol.Hello); ok {
		s.handleHello(id, sess, hello)
		return
	}
	if sess == nil {
		switch msg.(type) {
		case *protocol.Bye, *protocol.Error:
			// The peer ends a session the server does not hold (or a
			// HELLO still waiting for a slot): nothing to answer.
			s.unwait(id)
		default:
			s.noSession(id, nil)
		}
		return
	}
	sess.lastRecv = time.Now()
	sess.probedAt = time.Time{} // any message answers a liveness probe
	sess.handle(msg)
}

// endsSession reports whether frames are a BYE or an ERROR by their
// command octet alone (a ZSND command frame's sixth octet), whatever
// their version or content.
func endsSession(frames [][]byte) bool {
	if len(frames) == 0 || len(frames[0]) != protocol.CommandFrameLen || string(frames[0][:4]) != protocol.Signature {
		return false
	}
	c := protocol.Command(frames[0][5])
	return c == protocol.CmdBye || c == protocol.CmdError
}

// noSession answers a message other than HELLO, BYE or ERROR from a
// routing id that has no session. Whatever the message (an unknown
// command, another version, undecodable), the answer is the same 400: the
// peer has no session and must send HELLO; a client whose session was
// dropped learns that it should reconnect, not that the server is
// incompatible (PROTOCOL.md 5.2.1). de, if not nil, is why the message
// could not be decoded, only for the text.
func (s *Server) noSession(id string, de *protocol.DecodeError) {
	msg := "no session: send HELLO first"
	if de != nil {
		msg += " (and this message is not valid: " + de.Error() + ")"
	}
	s.replyNoSession(id, &protocol.Error{Code: protocol.CodeBadRequest, Message: msg})
}

// maxUnsolicited is the most replies a routing id without a session gets
// per housekeeping tick. Every message outside a session is answered with
// an ERROR; without a bound, a peer that sends a flood of them and does
// not read would fill its connection with replies until the write stalls,
// and a stalled ROUTER write holds up every other peer.
const maxUnsolicited = 16

// replyNoSession sends m (at version 1) to a routing id that has no
// session, within maxUnsolicited per tick; beyond that it drops the reply.
func (s *Server) replyNoSession(id string, m protocol.Message) {
	if s.unsolicited[id] >= maxUnsolicited {
		return
	}
	s.unsolicited[id]++
	s.sendTo(id, protocol.Version1, m)
}

func (s *Server) handleHello(id string, old *session, h *protocol.Hello) {
	var prev *transfer // a producer the replaced session may still run
	if old != nil {
		s.dropSession(old, "replaced by a new HELLO")
		prev = old.prev
	}
	s.unwait(id) // a newer HELLO replaces one waiting for a slot
	if h.MaxVersion < protocol.MinVersion || h.MinVersion > protocol.MaxVersion || h.MinVersion > h.MaxVersion {
		s.replyNoSession(id, &protocol.Error{Code: protocol.CodeVersion,
			Message: protocol.VersionMessage(protocol.MinVersion, protocol.MaxVersion, fmt.Sprintf("client offers %d..%d", h.MinVersion, h.MaxVersion))})
		return
	}
	chunk := uint32(s.cfg.ChunkSize)
	if h.MaxChunk < chunk {
		chunk = h.MaxChunk
	}
	if chunk < protocol.MinChunkSize {
		s.replyNoSession(id, &protocol.Error{Code: protocol.CodeBadRequest, Message: fmt.Sprintf("client's largest chunk %d is below the minimum %d", h.MaxChunk, protocol.MinChunkSize)})
		return
	}
	now := time.Now()
	if len(s.sessions) >= s.cfg.MaxSessions {
		s.reapUnresponsive(now)
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		// Full: probe every session and decide when the probe is over
		// (admitWaiting), so that a slot held by a vanished peer goes to
		// this client instead of a refusal.
		if len(s.waiting) >= maxWaiting {
			s.replyNoSession(id, s.tooMany())
			return
		}
		s.probeSessions(now)
		s.waiting = append(s.waiting, waitingHello{id: id, hello: h, prev: prev, until: now.Add(probeTimeout)})
		if len(s.waiting) == 1 {
			s.waitTimer.Reset(probeTimeout)
		}
		return
	}
	s.openSession(id, h, chunk, prev, now)
}

// openSession creates the session and sends WELCOME.
func (s *Server) openSession(id string, h *protocol.Hello, chunk uint32, prev *transfer, now time.Time) {
	v := h.MaxVersion
	if v > protocol.MaxVersion {
		v = protocol.MaxVersion
	}
	sess := &session{srv: s, id: id, opened: now, version: v, chunkSize: int64(chunk), peer: h.PeerID, lastRecv: now, lastSend: now, prev: prev}
	sess.key, sess.hasKey = s.keys.get(id)
	if sess.peer == "" {
		sess.peer = fmt.Sprintf("%x", id)
	}
	s.sessions[id] = sess
	s.ring = append(s.ring, sess)
	s.stats.sessions.Add(1)
	s.stats.opened.Add(1)
	sess.sendNoted(Event{Kind: "session-open"}, &protocol.Welcome{Version: v, ChunkSize: chunk, HeartbeatMS: uint32(s.cfg.Heartbeat / time.Millisecond),
		MaxRequests: uint32(s.cfg.MaxRequests), PeerID: s.cfg.Name})
}

// waitingHello is a HELLO that found the server full, waiting for the
// liveness probe it started to end.
type waitingHello struct {
	id    string
	hello *protocol.Hello
	prev  *transfer
	until time.Time
}

// maxWaiting bounds the HELLOs waiting for a slot; beyond it a HELLO is
// refused at once.
const maxWaiting = 64

func (s *Server) tooMany() *protocol.Error {
	return &protocol.Error{Code: protocol.CodeTooMany, Message: fmt.Sprintf("server has reached its limit of %d sessions", s.cfg.MaxSessions)}
}

// unwait forgets a waiting HELLO of id, if any.
func (s *Server) unwait(id string) {
	for i, w := range s.waiting {
		if w.id == id {
			s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
			return
		}
	}
}

// admitWaiting gives free slots to waiting HELLOs in arrival order, and
// refuses (ERROR 429) those whose probe time is over when no slot freed.
func (s *Server) admitWaiting(now time.Time) {
	if len(s.waiting) == 0 {
		return
	}
	s.reapUnresponsive(now)
	keep := s.waiting[:0]
	for _, w := range s.waiting {
		switch {
		case len(s.sessions) < s.cfg.MaxSessions:
			chunk := min(uint32(s.cfg.ChunkSize), w.hello.MaxChunk)
			s.openSession(w.id, w.hello, chunk, w.prev, now)
		case !now.Before(w.until):
			s.replyNoSession(w.id, s.tooMany())
		default:
			keep = append(keep, w)
		}
	}
	clear(s.waiting[len(keep):])
	s.waiting = keep
	if len(keep) > 0 {
		s.waitTimer.Reset(keep[0].until.Sub(now))
	}
}

// sendRound gives every session one turn; it reports whether any sent.
func (s *Server) sendRound() bool {
	n := len(s.ring)
	if n == 0 {
		return false
	}
	s.rate.newRound()
	any := false
	start := s.turn % n
	for i := 0; i < n && i < len(s.ring); i++ {
		sess := s.ring[(start+i)%len(s.ring)]
		if sess.dead {
			continue
		}
		if sess.pump() {
			any = true
		}
	}
	s.turn = start + 1
	s.compactRing()
	return any
}

func (s *Server) compactRing() {
	live := s.ring[:0]
	for _, sess := range s.ring {
		if !sess.dead {
			live = append(live, sess)
		}
	}
	for i := len(live); i < len(s.ring); i++ {
		s.ring[i] = nil
	}
	s.ring = live
}

func (s *Server) housekeeping(now time.Time) {
	clear(s.unsolicited)
	s.fleetHousekeeping(now)
	s.reapUnresponsive(now)
	for _, sess := range s.ring {
		if sess.dead {
			continue
		}
		if now.Sub(sess.lastRecv) > s.cfg.PeerTimeout {
			sess.send(&protocol.Bye{Code: protocol.CodeTimeout, Reason: fmt.Sprintf("nothing received for %v", s.cfg.PeerTimeout)})
			s.dropSession(sess, "peer silent")
			continue
		}
		if now.Sub(sess.lastSend) >= s.cfg.Heartbeat {
			sess.pingSeq++
			sess.send(&protocol.Ping{Token: sess.pingSeq})
		}
	}
	s.compactRing()
}

// Liveness probes when the server is full. zmq4 does not tell when a peer
// disconnects, so a session whose peer vanished without BYE holds its slot
// (and its open file) until the peer timeout: a client connecting, sending
// HELLO and disconnecting, MaxSessions times in a row, would lock every
// receiver out for that long. So when a HELLO finds no free slot, every
// session is sent a PING and the HELLO waits (waitingHello); a live
// receiver answers at once (any message counts), while a vanished one
// cannot. Sessions that stay silent for probeTimeout after their probe
// are dropped (BYE 408), and the waiting HELLO takes the freed slot; if
// none freed, it gets ERROR 429 when its probeTimeout is over. A live
// receiver unable to answer that fast is only dropped while the server is
// full, and reconnects and resumes. Rounds of probes are at least
// probeTimeout apart, so a flood of HELLOs does not turn into a flood of
// PINGs.
const probeTimeout = 500 * time.Millisecond

// probeSessions PINGs every session that has no probe pending, unless a
// round of probes went out less than probeTimeout ago.
func (s *Server) probeSessions(now time.Time) {
	if now.Sub(s.lastProbe) < probeTimeout {
		return
	}
	s.lastProbe = now
	for _, sess := range s.ring {
		if sess.dead || !sess.probedAt.IsZero() {
			continue
		}
		sess.probedAt = now
		sess.pingSeq++
		sess.send(&protocol.Ping{Token: sess.pingSeq})
	}
}

// reapUnresponsive drops the sessions that left a probe unanswered for
// probeTimeout.
func (s *Server) reapUnresponsive(now time.Time) {
	for _, sess := range s.ring {
		if !sess.dead && !sess.probedAt.IsZero() && now.Sub(sess.probedAt) >= probeTimeout {
			why := fmt.Sprintf("no answer to a liveness probe within %v while the server was full", probeTimeout)
			sess.send(&protocol.Bye{Code: protocol.CodeTimeout, Reason: why})
			s.dropSession(sess, why)
		}
	}
	s.compactRing()
}

func (s *Server) shutdown() {
	for _, w := range s.waiting {
		s.sendTo(w.id, protocol.Version1, &protocol.Bye{Code: protocol.CodeUnavailable, RetryAfterMS: uint32(s.cfg.ShutdownRetry / time.Millisecond), Reason: "server shutting down"})
	}
	s.waiting = nil
	for _, sess := range s.ring {
		if !sess.dead {
			sess.send(&protocol.Bye{Code: protocol.CodeUnavailable, RetryAfterMS: uint32(s.cfg.ShutdownRetry / time.Millisecond), Reason: "server shutting down"})
			s.dropSession(sess, "server shutting down")
		}
	}
	s.compactRing()
}

func (s *Server) dropSession(sess *session, why string) {
	if sess.dead {
		return
	}
	sess.dead = true
	sess.abortTransfer()
	delete(s.sessions, sess.id)
	s.stats.sessions.Add(-1)
	s.stats.dropped.Add(1)
	sess.event(Event{Kind: "session-close", Message: why})
	if len(s.waiting) > 0 {
		s.signal() // a waiting HELLO may take the slot
	}
}

// sendTo sends one message to a ROUTER identity. zmq4 reports no loss for
// a departed peer, so the result only tells of a broken connection.
func (s *Server) sendTo(id string, v uint8, m protocol.Message) error {
	switch m := m.(type) {
	case *protocol.Error:
		m.Message = clampText(m.Message)
	case *protocol.Bye:
		m.Reason = clampText(m.Reason)
	}
	frames := protocol.Encode(v, m)
	all := make([][]byte, 0, len(frames)+1)
	all = append(all, []byte(id))
	all = append(all, frames...)
	return s.sock.Send(zmq4.NewMsgFrom(all...))
}

// clampText makes s a valid text field: valid UTF-8 of at most
// protocol.MaxTextLen octets. Error messages quote the requested name, up
// to 4096 octets; a longer field would make the receiver reject the whole
// message as malformed instead of reporting the error.
func clampText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= protocol.MaxTextLen {
		return s
	}
	cut := protocol.MaxTextLen - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func (s *Server) event(e Event) {
	if s.cfg.Events != nil {
		s.cfg.Events(e)
	}
}

func (s *Server) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Server) getBuf() *[]byte  { return s.bufs.Get().(*[]byte) }
func (s *Server) putBuf(b *[]byte) { s.bufs.Put(b) }
