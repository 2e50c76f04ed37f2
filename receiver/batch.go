package receiver

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
)

// Version 3 sessions ask for small files of a version with BGET, up to
// protocol.MaxBatch at a time, and get them whole in PACKs (PROTOCOL.md
// section 16): a few hundred messages for a tree of thousands of files,
// instead of a VGET, FILE, CHUNK and END each. Each file of a PACK then
// takes the path a one-chunk VGET takes (begin, write, END check, commit),
// so what is written, verified and committed is the same.
//
// A batch is one outstanding request whatever the number of its files;
// its tasks have no request of their own (task.req is 0) while they wait
// in it (task.inBatch). A file that fails its BLAKE3 check, and the files
// an ERROR for the BGET left unsent, are asked for again with their own
// VGETs (retryQ), under the usual budgets.

// batch is one BGET: its tasks in the order asked, and how many of them
// PACKs have carried so far.
type batch struct {
	req   uint32
	tasks []*task
	next  int
}

// batchable reports whether t may be asked for with BGET in this session.
func (s *conn) batchable(t *task) bool {
	rq := t.rq
	return s.version >= protocol.Version3 && rq != nil && rq.Batch && rq.Kind == KindVGet && rq.CheckSize &&
		rq.Expect != nil && rq.Size <= uint64(s.chunk) && !t.noBatch && !t.done && !t.open && !t.ended &&
		t.req == 0 && t.inBatch == nil
}

// bget asks for the batchable tasks from s.getFrom on (those of one tree
// and version, at most protocol.MaxBatch) with one BGET. The caller
// checked that the task at s.getFrom is batchable.
func (s *conn) bget() {
	tasks := s.c.tasks
	first := tasks[s.getFrom].rq
	tree, _, _ := strings.Cut(first.Name, "/")
	b := &batch{}
	idx := make([]uint32, 0, min(protocol.MaxBatch, len(tasks)-s.getFrom))
	for s.getFrom < len(tasks) && len(b.tasks) < protocol.MaxBatch {
		t := tasks[s.getFrom]
		if t.done || t.req != 0 || t.ended || t.inBatch != nil {
			s.getFrom++ // nothing to ask, as issueGets would skip it
			continue
		}
		if !s.batchable(t) || t.rq.Version != first.Version || !strings.HasPrefix(t.rq.Name, tree+"/") {
			break
		}
		s.getFrom++
		if !s.c.cfg.NoResume {
			t.resumePoint() // notes whether a partial file of an earlier attempt is there
		}
		t.asked, t.askedTag = 0, t.rq.Version
		t.inBatch = b
		b.tasks = append(b.tasks, t)
		idx = append(idx, t.rq.Index)
	}
	if len(b.tasks) == 0 {
		return
	}
	b.req = s.newRequest()
	if s.batches == nil {
		s.batches = map[uint32]*batch{}
	}
	s.batches[b.req] = b
	s.send(&protocol.BGet{Request: b.req, Tag: first.Version, Tree: tree, Index: idx})
}

// packIn handles a PACK: each file it carries is checked against what the
// BGET asked for and the expected hash, then written and committed as a
// one-chunk VGET's would be.
func (s *conn) packIn(m *protocol.Pack) *sessionError {
	n := m.DataLen()
	if err := s.window.Received(n); err != nil {
		return s.violation("%v", err)
	}
	b := s.batches[m.Request]
	if b == nil {
		return s.violation("PACK for request %d, which is not a BGET in progress", m.Request)
	}
	if s.serving != 0 && s.serving != m.Request {
		return s.violation("PACK for request %d while request %d is in progress", m.Request, s.serving)
	}
	if head := s.head(); head != m.Request {
		return s.violation("PACK for request %d, but request %d was asked first", m.Request, head)
	}
	if len(m.Files) > len(b.tasks)-b.next {
		return s.violation("PACK carries %d files, %d of request %d are left", len(m.Files), len(b.tasks)-b.next, m.Request)
	}
	s.serving = m.Request
	s.lastData = time.Now()
	var off uint64
	for _, f := range m.Files {
		t := b.tasks[b.next]
		b.next++
		if f.Index != t.rq.Index || uint64(f.Size) != t.rq.Size {
			return s.violation("PACK carries index %d of %d bytes where index %d of %d bytes was asked", f.Index, f.Size, t.rq.Index, t.rq.Size)
		}
		data := m.Data[off : off+uint64(f.Size)]
		off += uint64(f.Size)
		t.wire += int64(f.Size)
		if t.done || t.inBatch != b {
			s.consumed(uint64(f.Size)) // failed meanwhile: only the credit returns
			continue
		}
		t.inBatch = nil
		if se := s.packFile(t, m.Request, &f, data); se != nil {
			return se
		}
	}
	if b.next == len(b.tasks) {
		s.endBatch(b)
		s.issueGets()
	}
	return nil
}

// packFile handles one file of a PACK for t.
func (s *conn) packFile(t *task, req uint32, f *protocol.PackFile, data []byte) *sessionError {
	h := protocol.Hash(blake3.Sum256(data))
	if h != *t.rq.Expect {
		s.consumed(uint64(len(data)))
		return s.packRetry(t, fmt.Errorf("%w: %s does not match the BLAKE3 the manifest lists", ErrVerify, t.name))
	}
	m := &protocol.File{Request: req, Size: uint64(f.Size), Mode: f.Mode, MtimeNS: f.MtimeNS, Tag: t.rq.Version, Name: t.name}
	if err := t.checkFile(m); err != nil {
		s.consumed(uint64(len(data)))
		s.failFile(t, err)
		return nil
	}
	s.drainTask(t)
	if _, err := t.begin(m, !s.c.cfg.NoResume, s.chunk, s.c.dirs); err != nil {
		s.consumed(uint64(len(data)))
		if errors.Is(err, ErrProtocol) {
			return s.violationErr(err)
		}
		s.failFile(t, err)
		return nil
	}
	t.b.kept(0)
	wire, reused, refetched := t.counts()
	s.c.emit(Event{Kind: EventStart, Name: t.name, Path: t.dest, Size: t.size, Wire: wire, Reused: reused, Refetched: refetched})
	if len(data) > 0 {
		t.next = int64(len(data))
		if fresh := t.b.advanced(t.next); fresh > 0 {
			s.progress = true
			s.c.progressed(fresh, time.Now())
		}
		s.submit(op{kind: opWrite, t: t, data: data, whole: true, hash: h})
	}
	t.ended = true
	s.submit(op{kind: opEnd, t: t, hash: h, size: int64(len(data))})
	return nil
}

// packRetry asks for a file of a PACK again, with its own VGET, after it
// failed its BLAKE3 check: the same budget as a chunk that failed.
func (s *conn) packRetry(t *task, cause error) *sessionError {
	n := t.b.chunkFailed(0)
	if attempts := s.c.cfg.Retries + 1; n >= attempts {
		if se := s.elsewhere(t, fmt.Errorf("%w (%d attempts)", cause, n), false); se != nil {
			return se
		}
		s.c.fail(t, fmt.Errorf("%w (%d attempts)", cause, n), false)
		return nil
	}
	s.c.emit(Event{Kind: EventRestart, Name: t.name, Path: t.dest, Err: cause,
		Message: fmt.Sprintf("%v; requesting it again (attempt %d of %d)", cause, n+1, s.c.cfg.Retries+1)})
	t.noBatch = true
	s.retryQ = append(s.retryQ, t)
	return nil
}

// batchError handles an ERROR for a BGET: the files no PACK carried are
// asked for again, each with its own VGET, so each gets its own answer.
func (s *conn) batchError(b *batch) {
	s.lastData = time.Now()
	for _, t := range b.tasks[b.next:] {
		if t.inBatch == b {
			t.inBatch = nil
			t.noBatch = true
			s.retryQ = append(s.retryQ, t)
		}
	}
	b.next = len(b.tasks)
	s.endBatch(b)
	s.issueGets()
}

// endBatch retires a BGET.
func (s *conn) endBatch(b *batch) {
	delete(s.batches, b.req)
	if s.serving == b.req {
		s.serving = 0
	}
	s.outReqs--
}
