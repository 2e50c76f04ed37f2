package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/credit"
	"github.com/zsend/zsend/internal/zsock"
	"github.com/zsend/zsend/protocol"
)

// conn is one session: its socket, its writer and its state. Only the
// session loop (run) touches it, except send, which the pinger also uses.
type conn struct {
	c        *client
	sock     zmq4.Socket
	version  uint8
	chunk    int64
	maxReq   int
	window   *credit.Window
	outReqs  int  // live requests outstanding
	getFrom  int  // issueGets has looked at tasks before this index
	progress bool // data was verified (or a file put in place) in this session

	// The server serves requests one at a time in the order asked
	// (PROTOCOL.md 5.2.3): queue holds this session's requests in that
	// order (stale ones are skipped when met), serving the one whose FILE
	// came and whose END or ERROR has not.
	queue   []uint32
	serving uint32
	// BGETs in progress by request id, and tasks to ask for again with
	// their own VGET (batch.go).
	batches map[uint32]*batch
	retryQ  []*task

	w        *writer
	inflight int       // writer operations not yet answered
	lastData time.Time // last FILE, CHUNK, END or ERROR of a live request
	commitQ  []*task   // verified files waiting for a commit
	err      *sessionError
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

// setErr records the first error that ends the session.
func (s *conn) setErr(e *sessionError) {
	if e != nil && s.err == nil {
		s.err = e
	}
}

func (s *conn) run(ctx context.Context, inbox <-chan zsock.Inbound, lastRecv *atomic.Int64) *sessionError {
	s.w = startWriter()
	defer s.closeWriter()
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

	for s.err == nil {
		select {
		case <-ctx.Done():
			return &sessionError{err: ctx.Err()}
		case now := <-tick.C:
			// Messages waiting for this loop (held up, by a slow Progress
			// callback for example) mean the server is not silent: the
			// receive goroutine, blocked on the full inbox, has only
			// stopped stamping arrivals.
			if silent := now.Sub(time.Unix(0, lastRecv.Load())); silent > cfg.PeerTimeout && len(inbox) == 0 {
				return lost("server silent for %v", silent.Round(time.Millisecond))
			}
			if s.version == 0 && now.Sub(helloAt) > cfg.PeerTimeout {
				return lost("no WELCOME within %v", cfg.PeerTimeout)
			}
			// Heartbeats prove the server alive, not that it serves: one
			// that holds our requests and credit but sends nothing is as
			// good as gone.
			if s.version != 0 && s.outReqs > 0 && s.window.Unused() >= uint64(s.chunk) && now.Sub(s.lastData) > cfg.StallTimeout {
				return lost("server sent no data for %v although it holds %d request(s) and credit", now.Sub(s.lastData).Round(time.Millisecond), s.outReqs)
			}
			// A server that sends just enough to look alive: the pace of
			// verified data is checked too.
			if err := s.c.tooSlow(now); err != nil {
				return &sessionError{err: err}
			}
		case r := <-s.w.res:
			s.inflight--
			s.apply(r)
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
				// A corrupted stream looks like this too: retry, bounded
				// by the violation budget.
				return s.violation("%v", err)
			}
			if s.version == 0 {
				s.setErr(s.welcome(msg, time.Since(helloAt)))
				if s.version != 0 {
					go s.pinger(pingCtx)
				}
				continue
			}
			s.setErr(s.handle(msg))
			if pong, ok := msg.(*protocol.Pong); ok {
				if rtt := time.Since(time.Unix(0, int64(pong.Token))); rtt > 0 && rtt < cfg.PeerTimeout {
					s.window.SetRTT(rtt)
				}
			}
		}
		if s.err == nil && len(s.commitQ) > 0 && (len(s.commitQ) >= commitBatch || s.outReqs == 0) {
			s.commit()
		}
		if s.err == nil && !s.c.pending() {
			s.send(&protocol.Bye{Code: protocol.CodeOK, Reason: "done"})
			return nil
		}
	}
	return s.err
}

// closeWriter waits for the writer's queued work, commits the files that
// were verified (they are complete whatever ended the session), and stops
// the writer.
func (s *conn) closeWriter() {
	s.drain()
	if len(s.commitQ) > 0 {
		s.commit()
		s.drain()
	}
	s.w.stop()
}

// submit queues an operation, applying results while the queue is full.
// The operation counts as in flight only once queued: a result applied
// while waiting may drain a task (failFile), and must not wait for an
// operation that is not in the writer's queue yet.
func (s *conn) submit(o op) {
	for {
		select {
		case s.w.ops <- o:
			s.inflight++
			if o.t != nil {
				o.t.inflight++
			}
			for _, t := range o.batch {
				t.inflight++
			}
			return
		case r := <-s.w.res:
			s.inflight--
			s.apply(r)
		}
	}
}

// drain waits for every queued operation.
func (s *conn) drain() {
	for s.inflight > 0 {
		r := <-s.w.res
		s.inflight--
		s.apply(r)
	}
}

// drainTask waits until the writer holds nothing of t, so the session loop
// may touch its file.
func (s *conn) drainTask(t *task) {
	for t.inflight > 0 {
		r := <-s.w.res
		s.inflight--
		s.apply(r)
	}
}

func (s *conn) commit() {
	batch := s.commitQ
	s.commitQ = nil
	s.submit(op{kind: opCommit, batch: batch, deferSync: s.c.cfg.DeferSync, record: s.c.cfg.RecordInodes})
}

// apply handles one writer result. It never blocks.
func (s *conn) apply(r result) {
	switch r.kind {
	case opWrite:
		r.t.inflight--
		s.consumed(uint64(r.n))
		if r.err != nil && !r.t.done {
			s.failFile(r.t, r.err)
		}
	case opEnd:
		t := r.t
		t.inflight--
		t.sum = r.sum
		switch {
		case t.done:
			// Failed meanwhile (a write error applied before this END).
		case r.err == nil:
			t.verified = true
			s.commitQ = append(s.commitQ, t)
		case errors.Is(r.err, ErrVerify):
			s.setErr(s.restartFile(t, r.err))
		case errors.Is(r.err, ErrProtocol):
			s.setErr(s.violationErr(r.err))
		default:
			s.failFile(t, r.err)
		}
	case opCommit:
		for i, t := range r.batch {
			t.inflight--
			if r.errs[i] != nil {
				err := r.errs[i]
				if !strings.Contains(err.Error(), t.dest) {
					err = fmt.Errorf("%s: %w", t.dest, err)
				}
				s.failFile(t, err)
				continue
			}
			s.progress = true
			s.c.progressed(max(fileProgress-t.size, 0), time.Now())
			t.done, t.open, t.verified = true, false, false
			wire, reused, refetched := t.counts()
			t.result = Result{Name: t.name, Path: t.dest, Size: t.size, Hash: t.sum, Wire: wire, Reused: reused, Refetched: refetched, Inode: t.inode}
			s.c.emit(Event{Kind: EventDone, Name: t.name, Path: t.dest, Size: t.size, Done: t.size, Wire: wire, Reused: reused,
				Refetched: refetched, Hash: t.sum})
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
		if err := s.c.needVersion(m.Version); err != nil {
			return &sessionError{err: err}
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
		s.lastData = time.Now()
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
// trip at a time. It goes through the tasks once per session: a task it
// passed was requested (or finished) in this session, and one that needs
// asking again (retryFile) is asked directly. Scanning from the start each
// time cost O(files) per END, O(files^2) per fetch.
func (s *conn) issueGets() {
	for s.outReqs < s.maxReq && len(s.retryQ) > 0 {
		t := s.retryQ[0]
		s.retryQ = s.retryQ[1:]
		if !t.done && t.req == 0 && !t.ended && t.inBatch == nil {
			s.get(t, 0, protocol.Tag{}, true)
		}
	}
	tasks := s.c.tasks
	for s.outReqs < s.maxReq && s.getFrom < len(tasks) {
		t := tasks[s.getFrom]
		if s.batchable(t) {
			s.bget()
			continue
		}
		s.getFrom++
		if t.done || t.req != 0 || t.ended {
			continue
		}
		s.get(t, 0, protocol.Tag{}, true)
	}
}

// get sends a GET for t. With fromPartial it resumes from what t holds
// (open) or from the partial file on disk; otherwise it asks for offset at
// tag.
func (s *conn) get(t *task, offset uint64, tag protocol.Tag, fromPartial bool) {
	if fromPartial && !s.c.cfg.NoResume {
		if t.open {
			offset, tag = uint64(t.next), t.tag
		} else {
			offset, tag = t.resumePoint()
		}
	}
	offset, tag = t.versioned(offset, tag)
	t.asked, t.askedTag = offset, tag
	t.req = s.newRequest()
	s.c.byReq[t.req] = t
	s.send(t.request(t.req, offset, tag))
}

// newRequest takes the next request id (never NoRequest) and counts it
// outstanding, last in the order the server answers: the caller records
// what it asks for under it and sends it. VGETs and BGETs share it.
func (s *conn) newRequest() uint32 {
	s.c.nextReq++
	if s.c.nextReq == protocol.NoRequest {
		s.c.nextReq++
	}
	s.queue = append(s.queue, s.c.nextReq)
	s.outReqs++
	return s.c.nextReq
}

// handle applies one message in an open session.
func (s *conn) handle(msg protocol.Message) *sessionError {
	switch m := msg.(type) {
	case *protocol.Chunk:
		return s.chunkIn(m)
	case *protocol.Pack:
		return s.packIn(m)
	case *protocol.File:
		t, live := s.live(m.Request)
		if t == nil {
			return s.violation("FILE for unknown request %d", m.Request)
		}
		if !live {
			return nil // a cancelled request's, sent before the CANCEL arrived
		}
		if s.serving != 0 {
			if s.serving == m.Request {
				return s.violation("second FILE for request %d", m.Request)
			}
			return s.violation("FILE for request %d while request %d is in progress", m.Request, s.serving)
		}
		if head := s.head(); head != m.Request {
			return s.violation("FILE for request %d, but request %d was asked first", m.Request, head)
		}
		s.lastData = time.Now()
		if err := t.checkFile(m); err != nil {
			s.failFile(t, err)
			return nil
		}
		if m.Size > 0 && m.Offset < m.Size && m.Offset%uint64(s.chunk) != 0 {
			return s.violation("FILE offset %d is not a multiple of the chunk size", m.Offset)
		}
		s.serving = m.Request
		s.drainTask(t)
		note, err := t.begin(m, !s.c.cfg.NoResume, s.chunk, s.c.dirs)
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				return s.violationErr(err)
			}
			s.failFile(t, err) // a *os.PathError or kin: it names the path
			return nil
		}
		t.b.kept(t.next)
		if note != "" {
			// A new version: the file starts over, which counts.
			t.b.restarted()
			t.restarts++
			if t.restarts > s.c.cfg.Restarts {
				s.send(&protocol.Cancel{Request: t.req})
				s.retire(t)
				s.drainTask(t)
				s.c.fail(t, fmt.Errorf("%w: a new version each time; gave up after starting over %d times", ErrChanged, s.c.cfg.Restarts), true)
				s.issueGets()
				return nil
			}
			s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Message: fmt.Sprintf("%s (restart %d of at most %d)", note, t.restarts, s.c.cfg.Restarts)})
		}
		wire, reused, refetched := t.counts()
		s.c.emit(Event{Kind: EventStart, Name: t.name, Path: t.dest, Size: t.size, Done: t.next, Wire: wire, Reused: reused, Refetched: refetched})
	case *protocol.End:
		t, live := s.live(m.Request)
		if t == nil {
			return s.violation("END for unknown request %d", m.Request)
		}
		if !live {
			return nil
		}
		if !t.open || s.serving != m.Request {
			return s.violation("END before FILE for request %d", m.Request)
		}
		s.lastData = time.Now()
		if int64(m.Size) != t.size || t.next != t.size {
			return s.violation("END at %d bytes of %d, size %d", t.next, t.size, m.Size)
		}
		s.retire(t)
		if err := t.checkEnd(m); err != nil {
			s.drainTask(t)
			if !t.done {
				if se := s.elsewhere(t, err, true); se != nil {
					return se
				}
			}
			s.c.fail(t, err, true)
			s.issueGets()
			return nil
		}
		t.ended = true // the writer checks it; not to be requested again meanwhile
		s.submit(op{kind: opEnd, t: t, hash: m.Hash, size: int64(m.Size)})
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
		if b := s.batches[m.Request]; b != nil {
			s.batchError(b)
			return nil
		}
		t, live := s.live(m.Request)
		if t == nil || !live {
			return nil
		}
		s.lastData = time.Now()
		s.retire(t)
		re := &RemoteError{Code: m.Code, Message: m.Message}
		if m.Code == protocol.CodeChanged {
			return s.restartFile(t, re)
		}
		s.drainTask(t)
		if !t.done {
			s.c.fail(t, re, true)
		}
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

// head is the live request the server must serve next: the oldest one
// asked in this session that is not finished, failed or cancelled.
func (s *conn) head() uint32 {
	for len(s.queue) > 0 {
		if _, live := s.live(s.queue[0]); live || s.batches[s.queue[0]] != nil {
			return s.queue[0]
		}
		s.queue = s.queue[1:]
	}
	return protocol.NoRequest
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
		if t.req == s.serving {
			s.serving = 0
		}
		t.req = 0
		s.outReqs--
	}
}

func (s *conn) chunkIn(m *protocol.Chunk) *sessionError {
	n := uint64(len(m.Data))
	if err := s.window.Received(n); err != nil {
		return s.violation("%v", err)
	}
	t, live := s.live(m.Request)
	if t == nil {
		return s.violation("CHUNK for unknown request %d", m.Request)
	}
	t.wire += int64(n)
	if !live {
		s.consumed(n) // data of a cancelled request still in flight
		return nil
	}
	if !t.open || s.serving != m.Request {
		return s.violation("CHUNK before FILE for request %d", m.Request)
	}
	s.lastData = time.Now()
	want := s.chunk
	if rem := t.size - t.next; rem < want {
		want = rem
	}
	if int64(m.Offset) != t.next || int64(n) != want {
		return s.violation("CHUNK at %d of %d bytes, expected %d bytes at %d", m.Offset, n, want, t.next)
	}
	if protocol.Hash(blake3.Sum256(m.Data)) != m.Hash {
		// Corrupted on the way: never written. Ask again from here.
		s.consumed(n)
		s.send(&protocol.Cancel{Request: t.req})
		s.retire(t)
		return s.chunkRetry(t, int64(m.Offset), fmt.Errorf("%w: chunk at offset %d does not match its BLAKE3", ErrVerify, m.Offset))
	}
	t.next += int64(n)
	if fresh := t.b.advanced(t.next); fresh > 0 {
		s.progress = true
		s.c.progressed(fresh, time.Now())
	}
	// Credit returns when written. A file of one chunk needs no second
	// hashing pass: the chunk hash just verified is the file's.
	s.submit(op{kind: opWrite, t: t, data: m.Data, whole: m.Offset == 0 && int64(n) == t.size, hash: m.Hash})
	// Report every 100ms, and at least every 1/64 of the file.
	if now := time.Now(); now.Sub(t.lastReport) >= 100*time.Millisecond || t.next-t.lastReported >= t.size/64 {
		t.lastReport, t.lastReported = now, t.next
		wire, reused, refetched := t.counts()
		s.c.emit(Event{Kind: EventProgress, Name: t.name, Path: t.dest, Size: t.size, Done: t.next, Wire: wire, Reused: reused,
			Refetched: refetched, Window: s.window.Size()})
	}
	return nil
}

func (s *conn) consumed(n uint64) {
	if limit, ok := s.window.Consumed(n, time.Now()); ok {
		s.send(&protocol.Credit{Limit: limit})
	}
}

// chunkRetry asks again for t from its verified prefix after the chunk at
// off failed its BLAKE3 check. The budget is per chunk: Retries+1 attempts
// of the same chunk, so scattered damage over a long file does not add up.
// When it is spent the file fails with its verified prefix kept on disk,
// for the same fetch run again to resume.
func (s *conn) chunkRetry(t *task, off int64, cause error) *sessionError {
	n := t.b.chunkFailed(off)
	s.drainTask(t)
	if t.done {
		return nil // a write error applied while draining failed it already
	}
	attempts := s.c.cfg.Retries + 1
	if n >= attempts {
		if se := s.elsewhere(t, fmt.Errorf("%w (%d attempts)", cause, n), false); se != nil {
			return se
		}
		s.c.fail(t, fmt.Errorf("%w (%d attempts; the %d bytes verified before it are kept)", cause, n, t.next), false)
		s.issueGets()
		return nil
	}
	s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Err: cause,
		Message: fmt.Sprintf("%v; requesting it again (attempt %d of %d)", cause, n+1, attempts)})
	if t.open && t.werr == nil {
		s.get(t, uint64(t.next), t.tag, false)
	} else {
		s.get(t, 0, protocol.Tag{}, true)
	}
	return nil
}

// restartFile starts t over from zero after ERROR 409 (the source changed
// while being sent) or a whole-file mismatch, within the restart budget.
func (s *conn) restartFile(t *task, cause error) *sessionError {
	t.restarts++
	s.drainTask(t)
	if t.done {
		return nil // a write error applied while draining failed it already
	}
	if t.restarts > s.c.cfg.Restarts {
		if errors.Is(cause, ErrVerify) {
			if se := s.elsewhere(t, fmt.Errorf("%w (started over %d times)", cause, s.c.cfg.Restarts), true); se != nil {
				return se
			}
		}
		s.c.fail(t, fmt.Errorf("%w; gave up after starting over %d times", cause, s.c.cfg.Restarts), true)
		s.issueGets()
		return nil
	}
	s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Err: cause,
		Message: fmt.Sprintf("%v; starting over (restart %d of at most %d)", cause, t.restarts, s.c.cfg.Restarts)})
	t.restart()
	t.b.restarted()
	s.get(t, 0, protocol.Tag{}, false)
	return nil
}

// elsewhere ends the session when t failed verification beyond its budget
// and the failover list has another endpoint in rotation: this server (or
// the path to it) is dropped, and t is asked of the next one with fresh
// budgets, from what it verified (from zero if discard: the whole file
// did not match). Nil when there is no other endpoint: t fails as it
// would with one.
func (s *conn) elsewhere(t *task, cause error, discard bool) *sessionError {
	if s.c.rot.live() < 2 {
		return nil
	}
	if discard {
		t.restart()
		t.b.restarted()
	}
	t.b.fails, t.restarts = 0, 0
	s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Err: cause,
		Message: fmt.Sprintf("%v; asking the next server of the list", cause)})
	return &sessionError{err: fmt.Errorf("%s sent data that failed verification: %w", s.c.rot.endpoint(), cause)}
}

// failFile fails one file for a local reason (I/O at the destination),
// keeping its partial state, and lets the session go on with the others.
// If the writer still holds operations of the file, they finish first.
func (s *conn) failFile(t *task, err error) {
	if t.req != 0 {
		s.send(&protocol.Cancel{Request: t.req})
		s.retire(t)
	}
	t.done, t.err = true, err // before draining: the writer's results for t are now ignored
	s.drainTask(t)
	t.done = false
	s.c.fail(t, err, false)
	s.issueGets()
}

// violation ends the session after the server broke the protocol. It is
// retried: a stream corrupted on the wire looks the same, and a new session
// resumes from verified data only.
func (s *conn) violation(format string, args ...any) *sessionError {
	return s.violationErr(fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...)))
}

// violationErr is violation for an error that already wraps ErrProtocol.
func (s *conn) violationErr(err error) *sessionError {
	s.send(&protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
	s.c.violations++
	if s.c.violations > s.c.cfg.Retries {
		return &sessionError{err: err}
	}
	return &sessionError{err: err, retry: true}
}
