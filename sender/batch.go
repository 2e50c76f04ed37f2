package sender

import (
	"errors"
	"fmt"
	"time"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// Serving BGET (ZSND version 3, PROTOCOL.md section 16): many whole small
// files of a version in PACKs. A BGET is queued and cancelled like a VGET
// and resolved in its turn; then, with no producer goroutine, each round
// of the serving loop sends at most one PACK of it: as many of the next
// files as fit the chunk size, MaxPackFiles and the credit, read into one
// pooled buffer and each checked against the manifest's hash (readWhole,
// as sendWhole does for one file), in one Send. Files are at most one
// chunk, so reading them here costs no more than sendWhole's read, and a
// tree of small files moves in a message per chunk-size of data instead
// of four messages and a goroutine hand-off per file.

// batch is the BGET a session is serving.
type batch struct {
	req   uint32
	tree  *pubTree
	v     *version
	tag   protocol.Tag
	m     *manifest.Manifest // v's, checked to list every index as a file of at most a chunk
	index []uint32
	next  int // index[next] is the next file to send
	// files is the PACK being built, reused from one PACK to the next.
	files []protocol.PackFile
	// rateHeld: the next PACK is refused by the rate limit, which keeps
	// the budget for it (see waiting).
	rateHeld bool
}

// entry is the manifest entry of the BGET's i-th file.
func (b *batch) entry(i int) *manifest.Entry { return &b.m.Entries[b.index[i]] }

// name is the i-th file's name as a VGET would ask for it.
func (b *batch) name(i int) string { return b.tree.name + "/" + b.entry(i).Path }

// startBatch resolves a BGET in its turn: it checks every index before
// anything is sent, and sends ERROR for the whole request if one is not a
// regular file of the version of at most the session's chunk size (400),
// may not be fetched by the session's key (403), or the tree (404) or
// version (410) is not served. Otherwise the BGET becomes sess.batch.
func (sess *session) startBatch(r *request) {
	g := &r.g
	srv := sess.srv
	cv := srv.cfg.Curve
	acl := cv != nil && cv.Access != nil
	if acl && !sess.hasKey {
		sess.refuseKey(g.Request, g.Name)
		return
	}
	t, v, m, err := srv.versionOf(g.Name, g.Tag)
	if err != nil {
		if acl && !cv.Access(sess.key, g.Name+"/") {
			// As a VGET of a name the key may not fetch: refused before
			// anything about the tree is told.
			sess.refuseKey(g.Request, g.Name)
			return
		}
		sess.refuse(g, err)
		return
	}
	b := &batch{req: g.Request, tree: t, v: v, tag: g.Tag, m: m, index: r.index}
	for i, idx := range b.index {
		if uint64(idx) >= uint64(len(m.Entries)) {
			sess.refuse(g, &lookupError{protocol.CodeBadRequest, fmt.Sprintf("index %d (file %d of the BGET) is beyond the %d entries of version %d of %s",
				idx, i+1, len(m.Entries), v.seq, t.name)})
			return
		}
		if acl && !cv.Access(sess.key, b.name(i)) {
			sess.refuseKey(g.Request, b.name(i))
			return
		}
		switch e := b.entry(i); {
		case e.Type != manifest.TypeFile:
			sess.refuse(g, &lookupError{protocol.CodeBadRequest, fmt.Sprintf("index %d (%q) is not a regular file of version %d of %s",
				idx, b.name(i), v.seq, t.name)})
			return
		case e.Size > uint64(sess.chunkSize):
			sess.refuse(g, &lookupError{protocol.CodeBadRequest, fmt.Sprintf("index %d (%q) is %d bytes, more than the chunk size %d: ask for it with VGET",
				idx, b.name(i), e.Size, sess.chunkSize)})
			return
		}
	}
	b.files = make([]protocol.PackFile, 0, min(len(b.index), protocol.MaxPackFiles))
	sess.batch = b
}

// refuse answers a request that will send nothing (a GET, MGET, VGET or
// BGET it could not resolve) with ERROR (the code of err when it is a
// lookupError, else 500) and a "refused" event.
func (sess *session) refuse(g *protocol.Get, err error) {
	code := protocol.CodeInternal
	var le *lookupError
	if errors.As(err, &le) {
		code = le.code
	}
	sess.sendNoted(Event{Kind: "refused", Name: g.Name, Message: fmt.Sprintf("%d %v: %v", code, code, err)}, &protocol.Error{Request: g.Request, Code: code, Message: err.Error()})
}

// pumpBatch sends the next PACK of sess.batch when the credit (and the
// rate limit) allows it, and reports whether it sent anything. A PACK
// carries the next files in order, whole: as many as fit in the chunk
// size, MaxPackFiles and the credit available, at least one. When the
// next file does not fit the credit it sends nothing: the serving loop
// goes on with other sessions and events, and the next CREDIT brings the
// session back here. A file that cannot be sent as published ends the
// BGET with ERROR, after a PACK of the files before it.
func (sess *session) pumpBatch() bool {
	b, srv := sess.batch, sess.srv
	limit := min(uint64(sess.chunkSize), sess.gate.Available())
	end, size := b.next, uint64(0)
	for end < len(b.index) && end-b.next < protocol.MaxPackFiles {
		n := b.entry(end).Size
		if size+n > limit {
			break
		}
		size += n
		end++
	}
	if end == b.next {
		return false // the next file waits for credit
	}
	if size > 0 && !srv.rate.take(sess, int64(size), time.Now()) {
		b.rateHeld = true
		return false
	}
	b.rateHeld = false

	buf := srv.getBuf()
	defer srv.putBuf(buf)
	data := (*buf)[:0]
	files := b.files[:0]
	var failed error
	for i := b.next; i < end; i++ {
		e := b.entry(i)
		n := len(data)
		data = data[:n+int(e.Size)]
		if err := srv.readEntry(b, e, data[n:]); err != nil {
			failed, end, data = err, i, data[:n]
			break
		}
		files = append(files, protocol.PackFile{Index: b.index[i], Size: uint32(e.Size), Mode: e.Mode, MtimeNS: e.MtimeNs})
	}
	first := b.next
	b.next = end
	if len(files) > 0 {
		sess.gate.Take(uint64(len(data)))
		srv.stats.filesSent.Add(int64(len(files))) // before: a peer that has the PACK sees it counted
		sess.send(&protocol.Pack{Request: b.req, Files: files, Data: data})
		if srv.cfg.Events != nil {
			for i := first; i < end; i++ {
				e := b.entry(i)
				sess.event(Event{Kind: "file-sent", Name: b.name(i), Size: int64(e.Size), Hash: e.Hash})
			}
		}
	}
	if failed != nil && !sess.dead {
		// 410 if the version was dropped meanwhile, else 500 (16.3): a
		// changed source is no 409 here, the client asks again by VGET.
		code, msg := protocol.CodeInternal, ""
		name := b.name(end)
		var le *lookupError
		if errors.As(failed, &le) {
			msg = le.msg // names the file already
			if le.code == protocol.CodeGone {
				code = protocol.CodeGone
			}
		} else {
			msg = fmt.Sprintf("%q: %v", name, failed)
		}
		sess.send(&protocol.Error{Request: b.req, Code: code, Message: msg})
		sess.event(Event{Kind: "error", Name: name, Message: failed.Error()})
	}
	if sess.batch == b && (failed != nil || b.next == len(b.index)) {
		sess.batch = nil // answered: its last PACK or its ERROR is sent
	}
	return true
}

// readEntry reads e, a file of b's version, into data (e.Size octets),
// checked against the manifest's hash. An empty file with the hash of no
// bytes is not opened: its content is known.
func (srv *Server) readEntry(b *batch, e *manifest.Entry, data []byte) error {
	if e.Size == 0 && protocol.Hash(e.Hash) == emptyFileHash {
		return nil
	}
	src, err := srv.openEntry(b.tree, b.v, b.tag, e)
	if err != nil {
		return err
	}
	srv.stats.openFiles.Add(1)
	_, err = srv.readWhole(&src, data)
	src.f.Close()
	srv.stats.openFiles.Add(-1)
	return err
}
