package receiver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ep, err := zsock.Endpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	c := &client{cfg: cfg, endpoint: ep, byReq: map[uint32]*task{}, dirs: map[string]bool{}}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		t, err := newTask(cfg.OutputDir, n)
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
		results[i] = Result{Name: t.name, Path: t.dest, Wire: t.wire, Reused: t.reused, Err: &FileError{Name: t.name, Err: t.err}}
		if first == nil {
			first = results[i].Err
		}
	}
	return results, first
}

type client struct {
	cfg      Config
	endpoint string
	tasks    []*task
	byReq    map[uint32]*task // requests of this session, stale ones included
	dirs     map[string]bool  // directories known to exist
	nextReq  uint32
	// violations counts sessions ended by a protocol violation; past the
	// retry budget the server is taken to be broken, not the wire.
	violations int
	// helloDrops counts CURVE connections closed by the server right after
	// HELLO (see maxHelloDrops).
	helloDrops int
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
	if errors.Is(err, guard.ErrHelloDropped) {
		// Silence after HELLO: a libzmq server with another key, or a
		// connection lost at that moment. Only a repeat is conclusive.
		c.helloDrops++
		if c.helloDrops < maxHelloDrops {
			return lost("dialing %s: %v", cfg.Endpoint, err)
		}
	}
	switch {
	case errors.Is(err, guard.ErrClientRefused):
		return &sessionError{err: fmt.Errorf("%w: %s refused our CURVE key %s", ErrKeyRefused, cfg.Endpoint,
			zcert.Fingerprint(cfg.Guard.CurveClient.PublicKey))}
	case errors.Is(err, guard.ErrServerKey):
		return &sessionError{err: fmt.Errorf("%w: %s does not hold the secret key of server key %s (wrong --server-key, or someone in the middle)",
			ErrServerKey, cfg.Endpoint, zcert.Fingerprint(cfg.Curve.ServerKey))}
	case errors.Is(err, guard.ErrMechanism) && cfg.Curve != nil:
		return &sessionError{err: fmt.Errorf("%w: %s does not speak CURVE", ErrServerKey, cfg.Endpoint)}
	case errors.Is(err, guard.ErrMechanism):
		return &sessionError{err: fmt.Errorf("%w: %s requires CURVE (give its public key with --server-key)", ErrServerKey, cfg.Endpoint)}
	}
	return lost("dialing %s: %v", cfg.Endpoint, err)
}

func lost(format string, args ...any) *sessionError {
	return &sessionError{err: fmt.Errorf(format, args...), retry: true}
}

func (c *client) pending() bool {
	for _, t := range c.tasks {
		if !t.done {
			return true
		}
	}
	return false
}

// run drives sessions until every task is done or failed.
func (c *client) run(ctx context.Context) {
	lostAt := time.Now()
	backoff := 100 * time.Millisecond
	var cause error // why the server was first lost, since the last progress
	for c.pending() {
		progressed, serr := c.session(ctx, lostAt.Add(c.cfg.Timeout))
		if serr == nil {
			continue
		}
		if progressed {
			lostAt, backoff = time.Now(), 100*time.Millisecond
		}
		if progressed || cause == nil {
			cause = serr.err
		}
		if ctx.Err() != nil {
			c.failAll(ctx.Err(), false)
			return
		}
		if !serr.retry {
			c.failAll(serr.err, false)
			return
		}
		if time.Since(lostAt) >= c.cfg.Timeout {
			why := serr.err.Error()
			if cause != serr.err {
				why = fmt.Sprintf("%v; then %v", cause, serr.err)
			}
			c.failAll(fmt.Errorf("%w: %s (gave up after %v)", ErrUnreachable, why, c.cfg.Timeout), false)
			return
		}
		wait := backoff
		if serr.retryAfter > 0 {
			wait = serr.retryAfter
		}
		if rem := time.Until(lostAt.Add(c.cfg.Timeout)); wait > rem {
			wait = rem
		}
		c.emit(Event{Kind: EventReconnect, Message: fmt.Sprintf("%v; reconnecting in %v", serr.err, wait.Round(time.Millisecond))})
		select {
		case <-ctx.Done():
			c.failAll(ctx.Err(), false)
			return
		case <-time.After(wait):
		}
		if backoff < 2*time.Second {
			backoff *= 2
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
	c.emit(Event{Kind: EventError, Name: t.name, Path: t.dest, Size: t.size, Wire: t.wire, Reused: t.reused, Err: err})
}

func (c *client) emit(e Event) {
	if c.cfg.Progress != nil {
		e.Time = time.Now()
		c.cfg.Progress(e)
	}
}

// session dials, runs one session until all tasks are done or it fails,
// and reports whether any data was verified during it.
func (c *client) session(ctx context.Context, dialBy time.Time) (bool, *sessionError) {
	for _, t := range c.tasks {
		t.req = 0
	}
	clear(c.byReq)
	sockCtx, cancel := context.WithCancel(guard.WithConfig(context.WithoutCancel(ctx), c.cfg.Guard))
	defer cancel()
	sock := zmq4.NewDealer(sockCtx, zmq4.WithDialerRetry(100*time.Millisecond), zmq4.WithDialerMaxRetries(-1),
		zmq4.WithLogger(discardLogger()), zmq4.WithTimeout(c.cfg.PeerTimeout))
	defer sock.Close()

	dialed := make(chan error, 1)
	go func() { dialed <- sock.Dial(c.endpoint) }()
	timer := time.NewTimer(time.Until(dialBy))
	defer timer.Stop()
	select {
	case err := <-dialed:
		if err != nil {
			return false, c.dialError(err)
		}
		c.helloDrops = 0 // the handshake completed: the key is right
	case <-timer.C:
		cancel()
		<-dialed
		return false, lost("no connection to %s", c.cfg.Endpoint)
	case <-ctx.Done():
		cancel()
		<-dialed
		return false, &sessionError{err: ctx.Err()}
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
	return s.progress, err
}
