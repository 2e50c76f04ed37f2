package sender

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/credit"
	"github.com/zsend/zsend/protocol"
)

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// session is one receiver's state. Only the Serve goroutine touches it.
type session struct {
	srv       *Server
	id        string
	peer      string
	key       [32]byte // CURVE client key (hasKey)
	hasKey    bool
	version   uint8
	chunkSize int64
	gate      credit.Gate
	queue     []request
	queued    map[uint32]struct{} // request ids in queue
	cur       *transfer
	batch     *batch // the BGET being served (then cur is nil)
	opened    time.Time
	lastRecv  time.Time
	lastSend  time.Time
	pingSeq   uint64
	dead      bool
	// accessPending counts ACCESS questions sent to the parent and not
	// yet answered (access.go).
	accessPending int

	// prev is the last transfer halted on this identity, whose producer
	// may still hold its file; the next transfer waits for it to exit, so
	// a session never has more than one source file open, however fast
	// it cancels, or replaces itself with HELLO.
	prev *transfer
	// probedAt is when the server, full, sent a liveness PING that the
	// peer has not yet answered (zero: none pending).
	probedAt time.Time
	// subs are the LIST requests with SUBSCRIBE: each new version of a
	// tree they name is pushed as a TREE with their request id.
	subs []*subscription
	// nodes are the node names this session reported under (REPORT), at
	// most maxNodesPerSession: SWITCH goes to them, and the session's
	// messages keep them alive in the fleet table.
	nodes map[string]bool
	// forwards are the node names this session FORWARDed (a relay's
	// children, PROTOCOL.md section 15): SWITCH for them goes to this
	// session; the session's messages do not keep them alive.
	forwards map[string]bool
	// hexID and keyFP are how events name the session and its key
	// (made by the first event).
	hexID, keyFP string
	// pongWindow and pongs limit the PINGs answered per second.
	pongWindow time.Time
	pongs      int
}

// maxPongs is the most PINGs a session gets answered per second. A
// receiver PINGs once per heartbeat interval (seconds, or a tenth of one
// in tests); a peer flooding PINGs gets a trickle of PONGs, not a reply
// for each, so it cannot turn its own flood into writes that fill its
// connection and stall the socket (a ROUTER send that blocks holds up
// every peer).
const maxPongs = 50

func (sess *session) send(m protocol.Message) {
	sess.lastSend = time.Now()
	if err := sess.srv.sendTo(sess.id, sess.version, m); err != nil && !sess.dead {
		sess.srv.dropSession(sess, "send failed: "+err.Error())
	}
}

// sendNoted records e, then sends m, the message e describes: whoever has
// m can find e (the order Config.Events promises).
func (sess *session) sendNoted(e Event, m protocol.Message) {
	sess.event(e)
	sess.send(m)
}

func (sess *session) fail(code protocol.Code, why string) {
	sess.send(&protocol.Error{Code: code, Message: why})
	sess.srv.dropSession(sess, why)
}

// handle applies one decoded message from the receiver.
func (sess *session) handle(m protocol.Message) {
	switch m := m.(type) {
	case *protocol.Get:
		sess.enqueue(request{cmd: protocol.CmdGet, g: *m})
	case *protocol.MGet:
		sess.enqueue(request{cmd: protocol.CmdMGet, g: protocol.Get(*m)})
	case *protocol.VGet:
		sess.enqueue(request{cmd: protocol.CmdVGet, g: protocol.Get(*m)})
	case *protocol.BGet:
		// Only in a version 3 session: the decoder refuses BGET in a
		// frame marked 1 or 2, and a frame at another version than the
		// session's is refused before it gets here.
		sess.enqueue(request{cmd: protocol.CmdBGet, g: protocol.Get{Request: m.Request, Tag: m.Tag, Name: m.Tree}, index: m.Index})
	case *protocol.List:
		sess.list(m)
	case *protocol.Report:
		sess.report(m)
	case *protocol.Forward:
		sess.forward(m)
	case *protocol.Status:
		sess.status(m)
	case *protocol.Access:
		sess.access(m)
	case *protocol.Credit:
		if sess.gate.Grant(m.Limit) && sess.cur != nil {
			sess.cur.permit(&sess.gate)
		}
	case *protocol.Cancel:
		sess.unsubscribe(m.Request)
		if sess.cur != nil && sess.cur.req == m.Request {
			sess.finishTransfer()
			return
		}
		if sess.batch != nil && sess.batch.req == m.Request {
			sess.batch = nil // no further PACK
			return
		}
		if _, ok := sess.queued[m.Request]; !ok {
			return // unknown or finished: ignored
		}
		delete(sess.queued, m.Request)
		for i, r := range sess.queue {
			if r.g.Request == m.Request {
				sess.queue = append(sess.queue[:i], sess.queue[i+1:]...)
				break
			}
		}
	case *protocol.Ping:
		if now := time.Now(); now.Sub(sess.pongWindow) >= time.Second {
			sess.pongWindow, sess.pongs = now, 0
		}
		if sess.pongs < maxPongs {
			sess.pongs++
			sess.send(&protocol.Pong{Token: m.Token})
		}
	case *protocol.Pong:
	case *protocol.Bye:
		sess.srv.dropSession(sess, fmt.Sprintf("receiver said bye: %v %s", m.Code, m.Reason))
	case *protocol.Error:
		sess.srv.dropSession(sess, fmt.Sprintf("receiver reported error %d (%v): %s", m.Code, m.Code, m.Message))
	default:
		sess.fail(protocol.CodeBadRequest, fmt.Sprintf("%v is not a command a receiver may send", m.Command()))
	}
}

// request is a queued GET, MGET, VGET or BGET. The first three share a
// layout; a BGET's tree is g.Name, its tag g.Tag, and index its files.
type request struct {
	cmd   protocol.Command
	g     protocol.Get
	index []uint32 // BGET only
}

// enqueue queues a GET, MGET, VGET or BGET. Request ids are unique among
// a session's outstanding requests (queued or being sent), so CANCEL and
// every reply name exactly one request; a request reusing one is a
// protocol violation. The request being sent counts: a session holds at
// most MaxRequests requests, as WELCOME announced.
func (sess *session) enqueue(r request) {
	cmd, g := r.cmd, &r.g
	if sess.outstanding(g.Request) {
		sess.fail(protocol.CodeBadRequest, fmt.Sprintf("%v reuses request id %d, which is still outstanding", cmd, g.Request))
		return
	}
	held := len(sess.queue)
	if sess.cur != nil || sess.batch != nil {
		held++
	}
	if held >= sess.srv.cfg.MaxRequests {
		sess.send(&protocol.Error{Request: g.Request, Code: protocol.CodeTooMany,
			Message: fmt.Sprintf("more than %d requests outstanding", sess.srv.cfg.MaxRequests)})
		return
	}
	sess.queue = append(sess.queue, r)
	if sess.queued == nil {
		sess.queued = make(map[uint32]struct{})
	}
	sess.queued[g.Request] = struct{}{}
}

// outstanding reports whether a file request with this id is queued or
// being sent.
func (sess *session) outstanding(req uint32) bool {
	_, queued := sess.queued[req]
	return queued || (sess.cur != nil && sess.cur.req == req) || (sess.batch != nil && sess.batch.req == req)
}

// pump advances the session by at most one message and reports whether it
// sent one.
func (sess *session) pump() bool {
	if sess.batch != nil {
		return sess.pumpBatch()
	}
	if sess.cur == nil {
		if len(sess.queue) == 0 {
			return false
		}
		if sess.prev != nil {
			select {
			case <-sess.prev.done:
				sess.prev = nil
			default:
				return false // the producer signals when it exits
			}
		}
		r := sess.queue[0]
		sess.queue = sess.queue[1:]
		delete(sess.queued, r.g.Request)
		sess.start(&r)
		if sess.batch != nil && !sess.dead {
			sess.pumpBatch() // resolving a BGET sent nothing: its first PACK goes now
		}
		return true
	}
	t := sess.cur
	if t.pending == nil {
		select {
		case c, ok := <-t.chunks:
			if !ok {
				return false
			}
			t.pending = c
		default:
			return false
		}
	}
	c := t.pending
	switch {
	case c.err != nil:
		t.pending = nil
		sess.sendNoted(Event{Kind: "error", Name: t.name, Message: c.err.Error()}, &protocol.Error{Request: t.req, Code: sourceErrorCode(c.err), Message: c.err.Error()})
		sess.finishTransfer()
		return true
	case c.end && t.want != nil && c.sum != *t.want:
		t.pending = nil
		msg := errStoreMismatch.Error()
		sess.sendNoted(Event{Kind: "error", Name: t.name, Message: msg}, &protocol.Error{Request: t.req, Code: protocol.CodeInternal, Message: msg})
		sess.finishTransfer()
		return true
	case c.end:
		t.pending = nil
		sess.srv.stats.filesSent.Add(1) // before: a peer that has the END sees it counted
		sess.sendNoted(Event{Kind: "file-sent", Name: t.name, Size: t.size, Hash: c.sum}, &protocol.End{Request: t.req, Size: uint64(t.size), Hash: c.sum})
		sess.finishTransfer()
		return true
	}
	data := (*c.buf)[:c.n]
	if uint64(len(data)) > sess.gate.Available() || !sess.srv.rate.take(sess, int64(len(data)), time.Now()) {
		return false
	}
	sess.gate.Take(uint64(len(data)))
	// The chunk leaves t before the send: a failed send drops the session,
	// and the buffer must be returned to the pool exactly once.
	t.pending = nil
	t.permitted--
	sess.send(&protocol.Chunk{Request: t.req, Offset: uint64(c.off), Hash: c.hash, Data: data})
	sess.srv.putBuf(c.buf)
	if sess.srv.cfg.Events != nil {
		if now := time.Now(); now.Sub(t.lastEvent) >= progressEvery {
			t.lastEvent = now
			sess.event(Event{Kind: "progress", Name: t.name, Size: t.size, Sent: c.off + int64(c.n)})
		}
	}
	if sess.cur == t {
		t.permit(&sess.gate)
	}
	return true
}

// source is what a request is served from: an open file and what FILE
// says about it.
type source struct {
	f       *os.File
	key     fileKey
	mode    uint32
	mtimeNS int64
	tag     protocol.Tag
	want    *protocol.Hash // the hash END must carry (MGET, VGET); nil for GET
	// verifyFirst: the whole file is hashed and compared with want before
	// its first CHUNK is sent (a relay's copy, which is not immutable).
	verifyFirst bool
}

// start resolves a request and sends FILE (then the transfer runs), or
// ERROR; a BGET becomes sess.batch (or gets its ERROR).
func (sess *session) start(r *request) {
	g := &r.g
	if r.cmd == protocol.CmdBGet {
		sess.startBatch(r)
		return
	}
	if cv := sess.srv.cfg.Curve; cv != nil && cv.Access != nil {
		// The access list names what a key may fetch: a file by its name,
		// a tree's manifest (every name in it) only with the whole tree
		// ("TREE/"), a file of a version as TREE/PATH.
		name := g.Name
		if r.cmd == protocol.CmdMGet {
			name += "/"
		}
		if !sess.hasKey || !cv.Access(sess.key, name) {
			sess.refuseKey(g.Request, g.Name)
			return
		}
	}
	var src source
	var err error
	switch r.cmd {
	case protocol.CmdGet:
		src.f, src.key, err = sess.srv.cat.open(g.Name)
		if err == nil {
			src.mode, src.mtimeNS, src.tag = src.key.mode&07777, src.key.mtimeNS, src.key.tag()
		}
	case protocol.CmdMGet:
		src, err = sess.srv.openManifest(g)
	case protocol.CmdVGet:
		src, err = sess.srv.openVersionFile(g)
	}
	if err != nil {
		sess.refuse(g, err)
		return
	}
	key := src.key
	// Resume only from a chunk boundary of the same version.
	var off int64
	if g.Tag == src.tag && g.Offset <= uint64(key.size) {
		off = int64(g.Offset) / sess.chunkSize * sess.chunkSize
	}
	if off == 0 && key.size <= min(inlineMax, sess.chunkSize) && sess.gate.Available() >= uint64(key.size) &&
		sess.srv.rate.ready(sess, key.size, time.Now()) {
		sess.sendWhole(g, &src)
		return
	}
	t := &transfer{
		req: g.Request, name: g.Name, size: key.size, next: off, want: src.want, verify: src.verifyFirst && src.want != nil,
		chunks: make(chan *chunk, prefetchChunks+1), permits: make(chan struct{}, prefetchChunks),
		stop: make(chan struct{}), done: make(chan struct{}), chunkSize: sess.chunkSize,
	}
	fs := sess.srv.cache.acquire(key)
	sess.srv.stats.openFiles.Add(1)
	sess.cur = t
	sess.sendNoted(Event{Kind: "file-start", Name: g.Name, Size: key.size, Offset: off}, &protocol.File{Request: g.Request, Size: uint64(key.size), Mode: src.mode,
		MtimeNS: src.mtimeNS, Offset: uint64(off), Tag: src.tag, Name: g.Name})
	go produce(sess.srv, t, src.f, key, fs, off)
	t.permit(&sess.gate)
}

// inlineMax is the largest file sent by sendWhole.
const inlineMax = 64 << 10

// sendWhole sends a small file from the serving goroutine: FILE, its one
// CHUNK and END, with no producer goroutine. Reading a few KiB from the
// page cache costs less than the goroutine hand-offs a producer takes per
// file (measured: they dominated the sender's time on a fetch of 1000
// small files), and the open before it already runs here, so the serving
// goroutine risks no new kind of wait. The caller checked that the credit
// covers the whole file.
func (sess *session) sendWhole(g *protocol.Get, src *source) {
	srv := sess.srv
	key := src.key
	srv.stats.openFiles.Add(1)
	defer srv.stats.openFiles.Add(-1)
	defer src.f.Close()
	buf := srv.getBuf()
	defer srv.putBuf(buf)

	data := (*buf)[:key.size]
	sum, err := srv.readWhole(src, data)
	if err != nil {
		sess.sendNoted(Event{Kind: "error", Name: g.Name, Message: err.Error()}, &protocol.Error{Request: g.Request, Code: sourceErrorCode(err), Message: err.Error()})
		return
	}
	sess.sendNoted(Event{Kind: "file-start", Name: g.Name, Size: key.size}, &protocol.File{Request: g.Request, Size: uint64(key.size), Mode: src.mode,
		MtimeNS: src.mtimeNS, Tag: src.tag, Name: g.Name})
	if key.size > 0 && !sess.dead {
		sess.gate.Take(uint64(key.size))
		// ready allowed it before the read; time only added to the budget.
		srv.rate.take(sess, key.size, time.Now())
		// The file is this one chunk: its hash is the file's.
		sess.send(&protocol.Chunk{Request: g.Request, Hash: sum, Data: data})
	}
	if sess.dead {
		return
	}
	srv.stats.filesSent.Add(1) // before: a peer that has the END sees it counted
	sess.sendNoted(Event{Kind: "file-sent", Name: g.Name, Size: key.size, Hash: sum}, &protocol.End{Request: g.Request, Size: uint64(key.size), Hash: sum})
}

// errStoreMismatch: a stored copy's bytes are not those its version
// published (the store was written to behind zsend's back).
var errStoreMismatch = errors.New("the stored copy does not match the published hash")

// readWhole reads the whole of src's file into data, whose length is the
// file's size (at most one buffer), and returns its BLAKE3-256, which
// must be src.want when there is one (errStoreMismatch, or errRelayDrift
// for a relay's copy, otherwise). The hash is taken through the
// file-state cache, so a file many sessions fetch is hashed once per
// version of it. It leaves src.f open. sendWhole (VGET, GET) and BGET
// read through it.
func (srv *Server) readWhole(src *source, data []byte) (protocol.Hash, error) {
	if err := readChunk(src.f, src.key, data, 0); err != nil {
		return protocol.Hash{}, err
	}
	sum := emptyFileHash
	if len(data) > 0 {
		fs := srv.cache.acquire(src.key)
		sum = fs.chunkHash(0, data) // the file is this one chunk
		srv.cache.release(fs)
	}
	if src.want != nil && sum != *src.want {
		if src.verifyFirst {
			return sum, errRelayDrift
		}
		return sum, errStoreMismatch
	}
	return sum, nil
}

// emptyFileHash is the BLAKE3-256 of no bytes.
var emptyFileHash = protocol.Hash(blake3.Sum256(nil))

// event reports e with the session's peer and identity filled in.
// The session's identity in hex and its key's fingerprint are made once,
// not per event: a BGET reports a "file-sent" per file.
func (sess *session) event(e Event) {
	if sess.srv.cfg.Events == nil {
		return
	}
	if sess.hexID == "" {
		sess.hexID = fmt.Sprintf("%x", sess.id)
		if sess.hasKey {
			sess.keyFP = KeyFingerprint(sess.key)
		}
	}
	e.Peer, e.Session, e.Key = sess.peer, sess.hexID, sess.keyFP
	sess.srv.event(e)
}

func (sess *session) finishTransfer() {
	t := sess.cur
	if t == nil {
		return // already finished, e.g. by a send that dropped the session
	}
	sess.cur = nil
	if t.pending != nil && t.pending.buf != nil {
		sess.srv.putBuf(t.pending.buf)
	}
	t.pending = nil
	t.halt(sess.srv)
	sess.prev = t
}

func (sess *session) abortTransfer() {
	if sess.cur != nil {
		sess.finishTransfer()
	}
	sess.batch = nil
	sess.queue = nil
	sess.queued = nil
}

// transfer is one file being sent. The producer goroutine reads chunks
// and the Serve goroutine sends them; permits keep the producer within the
// receiver's credit.
type transfer struct {
	req       uint32
	name      string
	size      int64
	chunkSize int64
	next      int64          // offset of the next chunk to permit
	want      *protocol.Hash // the whole-file hash END must carry, if known
	verify    bool           // check want before the first CHUNK (source.verifyFirst)

	chunks    chan *chunk
	permits   chan struct{}
	permitted int // permits given for chunks not yet sent
	stop      chan struct{}
	done      chan struct{} // closed when the producer has exited (file closed)
	pending   *chunk
	lastEvent time.Time // last progress event
	halted    bool
}

type chunk struct {
	off  int64
	n    int
	buf  *[]byte
	hash protocol.Hash
	end  bool
	sum  protocol.Hash
	err  error
}

// permit lets the producer read ahead the chunks that the current credit
// covers, at most prefetchChunks at a time.
func (t *transfer) permit(g *credit.Gate) {
	for t.permitted < prefetchChunks && t.next < t.size {
		n := t.chunkSize
		if rem := t.size - t.next; rem < n {
			n = rem
		}
		// Credit already promised to permitted chunks is not available.
		if uint64(t.permitted)*uint64(t.chunkSize)+uint64(n) > g.Available() {
			return
		}
		t.next += n
		t.permitted++
		t.permits <- struct{}{}
	}
}

// halt stops the producer and returns its buffers to the pool.
func (t *transfer) halt(srv *Server) {
	if t.halted {
		return
	}
	t.halted = true
	close(t.stop)
	go func() {
		for c := range t.chunks {
			if c.buf != nil {
				srv.putBuf(c.buf)
			}
		}
	}()
}

// produce reads, checks and hashes chunks from off to the end of f, one per
// permit, then computes the whole-file hash. It owns f and releases fs.
func produce(srv *Server, t *transfer, f *os.File, key fileKey, fs *fileState, off int64) {
	defer srv.signal() // a session may be waiting for this exit
	defer close(t.done)
	defer close(t.chunks)
	defer srv.stats.openFiles.Add(-1)
	defer f.Close()
	defer srv.cache.release(fs)
	emit := func(c *chunk) bool {
		select {
		case t.chunks <- c:
			srv.signal()
			return true
		case <-t.stop:
			if c.buf != nil {
				srv.putBuf(c.buf)
			}
			return false
		}
	}
	if t.verify {
		// A relay's copy: nothing leaves before the whole file is known to
		// have the root's hash (cached per file version, so the children
		// after the first cost nothing).
		buf := srv.getBuf()
		sum, err := fs.wholeHash(f, *buf, t.stop)
		srv.putBuf(buf)
		if err == errStopped {
			return
		}
		if err == nil && sum != *t.want {
			err = errRelayDrift
		}
		if err != nil {
			emit(&chunk{err: err})
			return
		}
	}
	for off < key.size {
		select {
		case <-t.permits:
		case <-t.stop:
			return
		}
		n := t.chunkSize
		if rem := key.size - off; rem < n {
			n = rem
		}
		buf := srv.getBuf()
		data := (*buf)[:n]
		if err := readChunk(f, key, data, off); err != nil {
			srv.putBuf(buf)
			emit(&chunk{err: err})
			return
		}
		h := fs.chunkHash(off, data)
		if !emit(&chunk{off: off, n: int(n), buf: buf, hash: h}) {
			return
		}
		off += n
	}
	buf := srv.getBuf()
	sum, err := fs.wholeHash(f, *buf, t.stop)
	srv.putBuf(buf)
	if err == errStopped {
		return
	}
	if err == nil {
		err = sameVersion(f, key)
	}
	if err != nil {
		emit(&chunk{err: err})
		return
	}
	emit(&chunk{end: true, sum: sum})
}

// readChunk fills data from f at off and checks that f is still the
// version key describes. A short read means the file shrank under us.
func readChunk(f *os.File, key fileKey, data []byte, off int64) error {
	got, err := f.ReadAt(data, off)
	if err == nil || (err == io.EOF && got == len(data)) {
		return sameVersion(f, key)
	}
	if got < len(data) {
		return errChanged
	}
	return err
}

// sourceErrorCode is the ERROR code for a failure reading a source.
func sourceErrorCode(err error) protocol.Code {
	if errors.Is(err, errChanged) {
		return protocol.CodeChanged
	}
	return protocol.CodeInternal
}

func sameVersion(f *os.File, key fileKey) error {
	now, err := statKey(f)
	if err != nil {
		return err
	}
	if key.ctimeNS == immutableCtime {
		// A kept manifest or a store blob: never written after it was
		// published. Its ctime moves only when it is unlinked (a version
		// dropped while a receiver still reads it), which changes no byte.
		now.ctimeNS = immutableCtime
	}
	if now != key {
		return errChanged
	}
	return nil
}
