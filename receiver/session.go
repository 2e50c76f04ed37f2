package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/credit"
	"github.com/zsend/zsend/internal/guard"
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
	c := &client{cfg: cfg, endpoint: ep, byReq: map[uint32]*task{}}
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
	nextReq  uint32
	// violations counts sessions ended by a protocol violation; past the
	// retry budget the server is taken to be broken, not the wire.
	violations int
}

// sessionError ends a session. retry says whether a new session may help.
type sessionError struct {
	err        error
	retry      bool
	retryAfter time.Duration
}

func (e *sessionError) Error() string { return e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

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

// conn is one session's socket and state.
type conn struct {
	c        *client
	sock     zmq4.Socket
	version  uint8
	chunk    int64
	maxReq   int
	window   *credit.Window
	outReqs  int // live requests outstanding
	progress bool
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
			return false, lost("dialing %s: %v", c.cfg.Endpoint, err)
		}
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
	inbox := zsock.RecvLoop(sockCtx, sock, 64, &lastRecv)
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

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// send is safe from several goroutines: zmq4 serialises socket writes.
func (s *conn) send(m protocol.Message) error {
	v := s.version
	if v == 0 {
		v = protocol.Version1
	}
	return s.sock.Send(zmq4.NewMsgFrom(protocol.Encode(v, m)...))
}

func (s *conn) run(ctx context.Context, inbox <-chan zsock.Inbound, lastRecv *atomic.Int64) *sessionError {
	cfg := &s.c.cfg
	helloAt := time.Now()
	if err := s.send(&protocol.Hello{MinVersion: protocol.MinVersion, MaxVersion: protocol.MaxVersion,
		MaxChunk: cfg.MaxChunk, HeartbeatMS: uint32(cfg.Heartbeat / time.Millisecond), PeerID: cfg.PeerID}); err != nil {
		return lost("sending HELLO: %v", err)
	}
	tick := time.NewTicker(cfg.Heartbeat / 2)
	defer tick.Stop()
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()

	for {
		select {
		case <-ctx.Done():
			return &sessionError{err: ctx.Err()}
		case now := <-tick.C:
			if silent := now.Sub(time.Unix(0, lastRecv.Load())); silent > cfg.PeerTimeout {
				return lost("server silent for %v", silent.Round(time.Millisecond))
			}
			if s.version == 0 && now.Sub(helloAt) > cfg.PeerTimeout {
				return lost("no WELCOME within %v", cfg.PeerTimeout)
			}
		case in, ok := <-inbox:
			if !ok {
				return lost("connection closed")
			}
			if in.Err != nil {
				return lost("connection lost: %v", in.Err)
			}
			msg, _, err := protocol.Decode(in.Frames)
			if err != nil {
				var de *protocol.DecodeError
				code := protocol.CodeBadRequest
				if errors.As(err, &de) {
					code = de.Code()
				}
				s.send(&protocol.Error{Code: code, Message: err.Error()})
				// A corrupted stream looks like this too: retry, bounded by
				// the per-file retry budget through restarts.
				return lost("%v: %v", ErrProtocol, err)
			}
			if s.version == 0 {
				if serr := s.welcome(msg, time.Since(helloAt)); serr != nil {
					return serr
				}
				if s.version != 0 {
					go s.pinger(pingCtx)
				}
				continue
			}
			if serr := s.handle(msg); serr != nil {
				return serr
			}
			if !s.c.pending() {
				s.send(&protocol.Bye{Code: protocol.CodeOK, Reason: "done"})
				return nil
			}
			if pong, ok := msg.(*protocol.Pong); ok {
				if rtt := time.Since(time.Unix(0, int64(pong.Token))); rtt > 0 && rtt < cfg.PeerTimeout {
					s.window.SetRTT(rtt)
				}
			}
		}
	}
}

// pinger sends PINGs from its own goroutine, so a receiver busy on a slow
// disk still shows the server it is alive. The token is the send time, so
// the PONG gives the round-trip time. It starts after WELCOME: s.version
// is not written again.
func (s *conn) pinger(ctx context.Context) {
	t := time.NewTicker(s.c.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.send(&protocol.Ping{Token: uint64(now.UnixNano())})
		}
	}
}

// welcome handles the first message of a session.
func (s *conn) welcome(msg protocol.Message, rtt time.Duration) *sessionError {
	switch m := msg.(type) {
	case *protocol.Welcome:
		if m.Version < protocol.MinVersion || m.Version > protocol.MaxVersion {
			return &sessionError{err: fmt.Errorf("%w: server chose version %d", ErrProtocol, m.Version)}
		}
		if m.ChunkSize > s.c.cfg.MaxChunk {
			return &sessionError{err: fmt.Errorf("%w: server chose chunk size %d above our %d", ErrProtocol, m.ChunkSize, s.c.cfg.MaxChunk)}
		}
		s.version, s.chunk, s.maxReq = m.Version, int64(m.ChunkSize), int(m.MaxRequests)
		if s.maxReq < 1 {
			s.maxReq = 1
		}
		win := s.c.cfg.Window
		if win < uint64(m.ChunkSize) {
			win = uint64(m.ChunkSize)
		}
		s.window = credit.NewWindow(win, s.c.cfg.MaxWindow)
		s.window.SetRTT(rtt)
		s.send(&protocol.Credit{Limit: s.window.Start(time.Now())})
		s.issueGets()
		return nil
	case *protocol.Error:
		re := &RemoteError{Code: m.Code, Message: m.Message}
		retry := m.Code == protocol.CodeTooMany || m.Code == protocol.CodeUnavailable
		return &sessionError{err: re, retry: retry, retryAfter: time.Second}
	case *protocol.Bye:
		return &sessionError{err: fmt.Errorf("server said bye: %s", m.Reason), retry: true, retryAfter: time.Duration(m.RetryAfterMS) * time.Millisecond}
	case *protocol.Ping:
		s.send(&protocol.Pong{Token: m.Token})
		return nil
	}
	return &sessionError{err: fmt.Errorf("%w: %v before WELCOME", ErrProtocol, msg.Command())}
}

// issueGets sends GETs for tasks without an outstanding request, up to the
// server's limit, so files are pipelined rather than fetched one round
// trip at a time.
func (s *conn) issueGets() {
	for _, t := range s.c.tasks {
		if s.outReqs >= s.maxReq {
			return
		}
		if t.done || t.req != 0 {
			continue
		}
		s.get(t, 0, protocol.Tag{}, true)
	}
}

// get sends a GET for t. With fromPartial it resumes from the partial file
// on disk (if any); otherwise it asks for offset at tag.
func (s *conn) get(t *task, offset uint64, tag protocol.Tag, fromPartial bool) {
	if fromPartial && !s.c.cfg.NoResume {
		if t.open {
			offset, tag = uint64(t.next), t.tag
		} else {
			offset, tag = t.resumePoint()
		}
	}
	s.c.nextReq++
	if s.c.nextReq == protocol.NoRequest {
		s.c.nextReq++
	}
	t.req = s.c.nextReq
	s.c.byReq[t.req] = t
	s.outReqs++
	s.send(&protocol.Get{Request: t.req, Offset: offset, Tag: tag, Name: t.name})
}

// handle applies one message in an open session.
func (s *conn) handle(msg protocol.Message) *sessionError {
	switch m := msg.(type) {
	case *protocol.Chunk:
		return s.chunkIn(m)
	case *protocol.File:
		t, live := s.live(m.Request)
		if t == nil {
			return s.violation("FILE for unknown request %d", m.Request)
		}
		if !live {
			return nil
		}
		if m.Size > 0 && m.Offset < m.Size && m.Offset%uint64(s.chunk) != 0 {
			return s.violation("FILE offset %d is not a multiple of the chunk size", m.Offset)
		}
		note, err := t.begin(m, !s.c.cfg.NoResume)
		if err != nil {
			return s.fileFailed(t, err)
		}
		if note != "" {
			s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Message: note})
		}
		s.c.emit(Event{Kind: EventStart, Name: t.name, Path: t.dest, Size: t.size, Done: t.next, Reused: t.reused})
	case *protocol.End:
		t, live := s.live(m.Request)
		if t == nil {
			return s.violation("END for unknown request %d", m.Request)
		}
		if !live {
			return nil
		}
		if !t.open {
			return s.violation("END before FILE for request %d", m.Request)
		}
		s.retire(t)
		if err := t.finish(m); err != nil {
			if errors.Is(err, ErrVerify) {
				return s.retryFile(t, err)
			}
			return s.fileFailed(t, err)
		}
		s.progress = true
		s.c.emit(Event{Kind: EventDone, Name: t.name, Path: t.dest, Size: t.size, Done: t.size, Wire: t.wire, Reused: t.reused, Hash: t.result.Hash})
		s.issueGets()
	case *protocol.Error:
		if m.Request == protocol.NoRequest {
			re := &RemoteError{Code: m.Code, Message: m.Message}
			switch m.Code {
			case protocol.CodeVersion, protocol.CodeUnknownCommand:
				return &sessionError{err: re}
			}
			return &sessionError{err: re, retry: true}
		}
		t, live := s.live(m.Request)
		if t == nil || !live {
			return nil
		}
		s.retire(t)
		re := &RemoteError{Code: m.Code, Message: m.Message}
		if m.Code == protocol.CodeChanged {
			return s.retryFile(t, re)
		}
		s.c.fail(t, re, true)
		s.issueGets()
	case *protocol.Ping:
		s.send(&protocol.Pong{Token: m.Token})
	case *protocol.Pong:
	case *protocol.Bye:
		retry := m.Code == protocol.CodeUnavailable || m.Code == protocol.CodeTimeout
		return &sessionError{err: fmt.Errorf("server closed the session: %s (%v)", m.Reason, m.Code), retry: retry,
			retryAfter: time.Duration(m.RetryAfterMS) * time.Millisecond}
	default:
		return s.violation("%v is not a command a server may send", m.Command())
	}
	return nil
}

// live finds the task of a request: live is false for a stale request (one
// cancelled or superseded), whose messages are ignored.
func (s *conn) live(req uint32) (*task, bool) {
	t := s.c.byReq[req]
	if t == nil {
		return nil, false
	}
	return t, t.req == req && !t.done
}

// retire ends the task's current request. Its entry in byReq stays, so
// messages of the request still in flight are recognised as stale.
func (s *conn) retire(t *task) {
	if t.req != 0 {
		t.req = 0
		s.outReqs--
	}
}

func (s *conn) chunkIn(m *protocol.Chunk) *sessionError {
	n := uint64(len(m.Data))
	if err := s.window.Received(n); err != nil {
		return s.violation("%v", err)
	}
	defer s.consumed(n)
	t, live := s.live(m.Request)
	if t == nil {
		return s.violation("CHUNK for unknown request %d", m.Request)
	}
	t.wire += int64(n)
	if !live {
		return nil // data of a cancelled request still in flight
	}
	if !t.open {
		return s.violation("CHUNK before FILE for request %d", m.Request)
	}
	want := s.chunk
	if rem := t.size - t.next; rem < want {
		want = rem
	}
	if int64(m.Offset) != t.next || int64(n) != want {
		return s.violation("CHUNK at %d of %d bytes, expected %d bytes at %d", m.Offset, n, want, t.next)
	}
	if protocol.Hash(blake3.Sum256(m.Data)) != m.Hash {
		// Corrupted on the way: never written. Ask again from here.
		s.send(&protocol.Cancel{Request: t.req})
		s.retire(t)
		return s.retryFile(t, fmt.Errorf("%w: chunk at offset %d does not match its BLAKE3", ErrVerify, m.Offset))
	}
	if err := t.write(m.Data); err != nil {
		s.retire(t)
		s.c.fail(t, fmt.Errorf("writing %s: %w", t.partPath, err), false)
		s.issueGets()
		return nil
	}
	s.progress = true
	// Report every 100ms, and at least every 1/64 of the file.
	if now := time.Now(); now.Sub(t.lastReport) >= 100*time.Millisecond || t.next-t.lastReported >= t.size/64 {
		t.lastReport, t.lastReported = now, t.next
		s.c.emit(Event{Kind: EventProgress, Name: t.name, Path: t.dest, Size: t.size, Done: t.next, Wire: t.wire, Reused: t.reused})
	}
	return nil
}

func (s *conn) consumed(n uint64) {
	if limit, ok := s.window.Consumed(n, time.Now()); ok {
		s.send(&protocol.Credit{Limit: limit})
	}
}

// retryFile re-requests t after a verification failure or a source
// change, within the retry budget. A verification failure of a chunk
// resumes from the verified prefix; a whole-file mismatch or a changed
// source starts over.
func (s *conn) retryFile(t *task, cause error) *sessionError {
	t.restarts++
	if t.restarts > s.c.cfg.Retries {
		s.c.fail(t, fmt.Errorf("%w (after %d attempts)", cause, t.restarts), true)
		s.issueGets()
		return nil
	}
	keepPrefix := t.open && !errors.Is(cause, ErrChanged) && t.next < t.size
	s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Err: cause,
		Message: fmt.Sprintf("%v; requesting again (attempt %d of %d)", cause, t.restarts+1, s.c.cfg.Retries+1)})
	if keepPrefix {
		s.get(t, uint64(t.next), t.tag, false)
		return nil
	}
	t.restart()
	s.get(t, 0, protocol.Tag{}, false)
	return nil
}

// fileFailed fails one file for a local reason (I/O at the destination)
// and keeps the session going for the others.
func (s *conn) fileFailed(t *task, err error) *sessionError {
	if errors.Is(err, ErrProtocol) {
		return s.violation("%v", err)
	}
	if t.req != 0 {
		s.send(&protocol.Cancel{Request: t.req})
		s.retire(t)
	}
	s.c.fail(t, fmt.Errorf("%s: %w", t.dest, err), false)
	s.issueGets()
	return nil
}

// violation ends the session after the server broke the protocol. It is
// retried: a stream corrupted on the wire looks the same, and a new session
// resumes from verified data only.
func (s *conn) violation(format string, args ...any) *sessionError {
	err := fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
	s.send(&protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
	s.c.violations++
	if s.c.violations > s.c.cfg.Retries {
		return &sessionError{err: err}
	}
	return &sessionError{err: err, retry: true}
}
