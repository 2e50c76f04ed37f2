package receiver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/internal/zsock"
	"github.com/zsend/zsend/protocol"
)

// Fetch fetches names from the server into cfg.OutputDir. It returns one
// Result per distinct name, in order, and a non-nil error if any file
// failed (the first failure, wrapped in *FileError). It retries a lost
// server for up to cfg.Timeout, resuming where it stopped. If ctx is
// cancelled it returns promptly, keeping partial state for a later resume.
func Fetch(ctx context.Context, cfg Config, names ...string) ([]Result, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	defer c.dirs.close()
	out := c.dirs
	cfg = c.cfg // with its defaults
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		t, err := newTask(out, n)
		if err != nil {
			t = &task{name: n, done: true, err: err}
		} else if cfg.NoResume {
			t.stateOnDisk = true
			t.close(true)
		}
		c.tasks = append(c.tasks, t)
	}
	for _, t := range c.tasks {
		if t.err != nil {
			c.emit(Event{Kind: EventError, Name: t.name, Err: t.err})
		}
	}
	c.run(ctx)
	results := make([]Result, len(c.tasks))
	var first error
	for i, t := range c.tasks {
		if t.done && t.err == nil {
			results[i] = t.result
			continue
		}
		if t.err == nil {
			t.err = errors.New("not fetched")
		}
		wire, reused, refetched := t.counts()
		results[i] = Result{Name: t.name, Path: t.dest, Wire: wire, Reused: reused, Refetched: refetched, Err: &FileError{Name: t.name, Err: t.err}}
		if first == nil {
			first = results[i].Err
		}
	}
	return results, first
}

type client struct {
	cfg     Config
	rot     *rotation // the endpoint of the session, and the failover state
	tasks   []*task
	byReq   map[uint32]*task // requests of this session, stale ones included
	dirs    *outDir          // the output directory
	nextReq uint32
	// donePrefix: every task before this index is done (see pending).
	donePrefix int
	// violations counts sessions ended by a protocol violation; past the
	// retry budget the server is taken to be broken, not the wire.
	violations int
	rate       *rateMeter // verified data, for MinRate
	// helloDrops counts, per endpoint, CURVE connections closed by the
	// server right after HELLO (see maxHelloDrops).
	helloDrops []int
}

// sessionError ends a session. retry says whether a new session may help.
type sessionError struct {
	err        error
	retry      bool
	retryAfter time.Duration
}

func (e *sessionError) Error() string { return e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

// maxHelloDrops is how many times in a row a CURVE server may close the
// connection after HELLO before the server key is taken to be wrong.
const maxHelloDrops = 3

// dialError classifies a failed dial: a security mismatch is final, the
// rest is worth retrying.
func (c *client) dialError(err error) *sessionError {
	cfg := c.cfg
	i, ep := c.rot.idx, c.rot.endpoint()
	if errors.Is(err, guard.ErrHelloDropped) {
		// Silence after HELLO: a libzmq server with another key, or a
		// connection lost at that moment. Only a repeat is conclusive.
		c.helloDrops[i]++
		if c.helloDrops[i] < maxHelloDrops {
			return lost("dialing %s: %v", ep, err)
		}
	}
	switch {
	case errors.Is(err, guard.ErrClientRefused):
		return &sessionError{err: fmt.Errorf("%w: %s refused our CURVE key %s", ErrKeyRefused, ep,
			zcert.Fingerprint(cfg.curve.PublicKey))}
	case errors.Is(err, guard.ErrServerKey):
		return &sessionError{err: fmt.Errorf("%w: %s does not hold the secret key of server key %s (wrong --server-key, or someone in the middle)",
			ErrServerKey, ep, zcert.Fingerprint(cfg.serverKey(i)))}
	case errors.Is(err, guard.ErrMechanism) && cfg.Curve != nil:
		return &sessionError{err: fmt.Errorf("%w: %s does not speak CURVE", ErrServerKey, ep)}
	case errors.Is(err, guard.ErrMechanism):
		return &sessionError{err: fmt.Errorf("%w: %s requires CURVE (give its public key with --server-key)", ErrServerKey, ep)}
	}
	return lost("%s", dialCause(err))
}

// newClient checks cfg, resolves its endpoint and opens the output
// directory (closed by the caller with c.dirs.close()).
func newClient(cfg Config) (*client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	out, err := openOutDir(cfg.OutputDir)
	if err != nil {
		return nil, err
	}
	return &client{cfg: cfg, rot: newRotation(cfg.Failover), helloDrops: make([]int, cfg.Failover.Len()),
		byReq: map[uint32]*task{}, dirs: out}, nil
}

func lost(format string, args ...any) *sessionError {
	return &sessionError{err: fmt.Errorf(format, args...), retry: true}
}

// pending reports whether a task is not done yet. A done task stays done,
// so the scan resumes where it stopped: the session loop asks after every
// message, and a scan from the start cost O(files) each time.
func (c *client) pending() bool {
	for ; c.donePrefix < len(c.tasks); c.donePrefix++ {
		if !c.tasks[c.donePrefix].done {
			return true
		}
	}
	return false
}

// Reconnect delays: doubled after each attempt that verified nothing,
// back to the least after a session that did.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// fileProgress is what a file put in place counts for MinRate, however
// small it is.
const fileProgress = 4 << 10

// progressed counts verified bytes (or a file put in place) at now.
func (c *client) progressed(n int64, now time.Time) {
	c.rate.add(n, now)
}

// tooSlow returns ErrTooSlow when verified data has not kept the minimum
// pace over the rate window.
func (c *client) tooSlow(now time.Time) error {
	if slow, rate := c.rate.slow(now); slow {
		return fmt.Errorf("%w: %.0f bytes/s verified over the last %v, below the minimum of %d bytes/s",
			ErrTooSlow, rate, c.rate.window, c.cfg.MinRate)
	}
	return nil
}

// ctxFailure is the error of files left unfinished when ctx ended: the
// deadline's ErrTooSlow, or an interruption by the caller.
func ctxFailure(ctx context.Context) error {
	cause := context.Cause(ctx)
	if errors.Is(cause, ErrTooSlow) {
		return cause
	}
	return &interruptedError{cause: cause}
}

// run drives sessions until every task is done or failed.
//
// The Timeout clock (lostAt) starts now and again with the last message of
// every session that verified data: the moment the server was lost. A
// session that verified nothing leaves it running, so a server that
// accepts connections but serves nothing is given up on within Timeout
// (plus one session's own bounds); after a session that verified data,
// one attempt is made however late the loss was noticed. The reconnect
// delay, likewise, starts
// small again after a session that verified data.
func (c *client) run(ctx context.Context) {
	if c.cfg.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, c.cfg.Deadline,
			fmt.Errorf("%w: the deadline of %v passed", ErrTooSlow, c.cfg.Deadline))
		defer cancel()
	}
	window := max(c.cfg.RateWindow, 2*c.cfg.Timeout)
	c.rate = newRateMeter(c.cfg.MinRate, window, time.Now())
	lostAt := time.Now()
	backoff := minBackoff
	attempt := 0
	var cause error // why the server was first lost, since the last progress
	for c.pending() {
		out, serr := c.session(ctx)
		if serr == nil || !c.pending() {
			return // done; a loss after the last file was verified is no matter
		}
		if ctx.Err() != nil {
			c.failAll(ctxFailure(ctx), false)
			return
		}
		if out.verified {
			lostAt, backoff, attempt, cause = out.lastHeard, minBackoff, 0, nil
			c.rot.progressed()
		}
		attempt++
		if cause == nil {
			cause = serr.err
		}
		failedAt := c.rot.endpoint()
		var drop error
		if !serr.retry {
			drop = serr.err
			c.violations = 0 // the next endpoint has a budget of its own
		}
		round, more := c.rot.failed(drop)
		if !more {
			c.failAll(c.rot.allDropped(), false)
			return
		}
		if err := c.tooSlow(time.Now()); err != nil {
			c.failAll(err, false)
			return
		}
		// After a session that verified data one attempt is always made,
		// even when the loss was noticed late (a silent server is noticed
		// PeerTimeout after its last message).
		if !out.verified && time.Since(lostAt) >= c.cfg.Timeout {
			why := serr.err.Error()
			if cause.Error() != why {
				why = fmt.Sprintf("%v; last: %v", cause, serr.err)
			}
			c.failAll(fmt.Errorf("%w: %s (gave up after %v without verified data%s)", ErrUnreachable, why, c.cfg.Timeout,
				c.rot.droppedNote()), false)
			return
		}
		// The backoff is waited once per round of the endpoint list: the
		// next endpoint of the list is tried at once.
		var wait time.Duration
		if round {
			wait = backoff
			if serr.retryAfter > 0 {
				wait = serr.retryAfter
			}
			backoff = min(2*backoff, maxBackoff)
		}
		left := max(time.Until(lostAt.Add(c.cfg.Timeout)), 0)
		wait = min(wait, left)
		next := c.rot.nextNote(failedAt)
		msg := fmt.Sprintf("connecting to %s: %v; retrying for up to %v%s", failedAt, serr.err, left.Round(100*time.Millisecond), next)
		if out.connected {
			msg = fmt.Sprintf("session with %s lost: %v; reconnecting in %v (attempt %d; giving up in %v without data)%s",
				failedAt, serr.err, wait.Round(time.Millisecond), attempt+1, left.Round(100*time.Millisecond), next)
		}
		c.emit(Event{Kind: EventReconnect, Endpoint: failedAt, Attempt: attempt, RetryIn: wait, Err: serr.err, Message: msg})
		if wait > 0 {
			select {
			case <-ctx.Done():
				c.failAll(ctxFailure(ctx), false)
				return
			case <-time.After(wait):
			}
		}
	}
}

// failAll fails every unfinished task, keeping partial state unless discard.
func (c *client) failAll(err error, discard bool) {
	for _, t := range c.tasks {
		if !t.done {
			c.fail(t, err, discard)
		}
	}
}

func (c *client) fail(t *task, err error, discard bool) {
	t.close(discard)
	t.done, t.err, t.req = true, err, 0
	wire, reused, refetched := t.counts()
	c.emit(Event{Kind: EventError, Name: t.name, Path: t.dest, Size: t.size, Done: wire + reused, Wire: wire, Reused: reused, Refetched: refetched, Err: err})
}

func (c *client) emit(e Event) {
	if c.cfg.Progress != nil {
		e.Time = time.Now()
		c.cfg.Progress(e)
	}
}

// sessionOutcome says what a session achieved.
type sessionOutcome struct {
	connected bool      // the dial succeeded
	verified  bool      // some data was verified (or a file put in place)
	lastHeard time.Time // when the last message from the server arrived
}

// session dials once, runs one session until all tasks are done or it
// fails, and reports what it achieved. A dial that fails is returned at
// once, with its cause (run retries); one that hangs (a black hole, a
// handshake that never ends) is given up after PeerTimeout. run starts
// attempts only within Timeout; an attempt started is allowed to finish,
// so a server that asked to be retried late (BYE 503) still gets one.
func (c *client) session(ctx context.Context) (sessionOutcome, *sessionError) {
	for _, t := range c.tasks {
		t.req, t.inBatch = 0, nil
	}
	clear(c.byReq)
	sockCtx, cancel := context.WithCancel(guard.WithConfig(context.WithoutCancel(ctx), c.cfg.guardConfig(c.rot.idx)))
	defer cancel()
	sock := zmq4.NewDealer(sockCtx, zmq4.WithDialerMaxRetries(0),
		zmq4.WithLogger(discardLogger()), zmq4.WithTimeout(c.cfg.PeerTimeout))
	defer sock.Close()

	dialed := make(chan error, 1)
	go func() { dialed <- sock.Dial(c.rot.dialAddr()) }()
	timer := time.NewTimer(c.cfg.PeerTimeout)
	defer timer.Stop()
	select {
	case err := <-dialed:
		if err != nil {
			return sessionOutcome{}, c.dialError(err)
		}
		c.helloDrops[c.rot.idx] = 0 // the handshake completed: the key is right
	case <-timer.C:
		cancel()
		<-dialed
		return sessionOutcome{}, lost("no connection established within %v", c.cfg.PeerTimeout)
	case <-ctx.Done():
		cancel()
		<-dialed
		return sessionOutcome{}, &sessionError{err: ctx.Err()}
	}

	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	// A shallow inbox: data beyond the credit is detected when decoded, so
	// what a server ignoring credit can pile up here stays small.
	inbox := zsock.RecvLoop(sockCtx, sock, 4, &lastRecv)
	s := &conn{c: c, sock: sock}
	err := s.run(ctx, inbox, &lastRecv)
	if err != nil && ctx.Err() != nil {
		s.send(&protocol.Bye{Code: protocol.CodeOK, Reason: "receiver interrupted"})
	}
	for _, t := range c.tasks {
		if !t.done {
			t.close(false)
		}
	}
	return sessionOutcome{connected: true, verified: s.progress, lastHeard: time.Unix(0, lastRecv.Load())}, err
}

// dialCause names why a connection could not be made, in the words a user
// knows: connection refused, no such host, no such socket file.
func dialCause(err error) string {
	var dns *net.DNSError
	switch {
	case errors.As(err, &dns):
		if dns.IsNotFound {
			return fmt.Sprintf("no such host %q", dns.Name)
		}
		return fmt.Sprintf("looking up %q: %v", dns.Name, dns.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket file"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "permission denied"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "connection timed out"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}
