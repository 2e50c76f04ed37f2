package receiver

import (
	"context"
	"errors"
	"fmt"

	"github.com/zsend/zsend/protocol"
)

// RequestKind says which command fetches a Request.
type RequestKind uint8

// Request kinds.
const (
	// KindGet is a version 1 GET of a served file by name.
	KindGet RequestKind = iota
	// KindMGet fetches the manifest of a version of a tree (MGET; Name is
	// the tree, Version the first 16 octets of the version id, or zero
	// for the latest).
	KindMGet
	// KindVGet fetches a regular file of a version (VGET; Name is
	// "TREE/rel/path", Version the version's tag, which must be nonzero).
	KindVGet
)

func (k RequestKind) String() string {
	switch k {
	case KindGet:
		return "GET"
	case KindMGet:
		return "MGET"
	case KindVGet:
		return "VGET"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Request is one file to fetch with FetchRequests. It lands at
// cfg.OutputDir/Name, written, verified and committed exactly as Fetch
// does (credit, pipelining, chunk verification, resume, atomic rename).
type Request struct {
	Kind    RequestKind
	Name    string
	Version protocol.Tag // MGET/VGET: the version asked for
	// Expect, if set, is the hash END must carry: a server announcing any
	// other hash is not believed (the file fails with ErrVerify). The
	// whole-file BLAKE3 is checked against END's hash as always.
	Expect *protocol.Hash
	// Size, when CheckSize is set, is the size FILE must announce; any
	// other size fails the file with ErrProtocol before anything is
	// written (it bounds what a lying server can make us store).
	Size      uint64
	CheckSize bool
	// Fresh: the caller knows that no partial file of an earlier attempt
	// is at this name's hidden names (it made the directory, or read it),
	// so the first request does not look for one. Later ones (after a
	// lost session) do.
	Fresh bool
	// Batch, for a KindVGet with Expect and CheckSize set: in a version 3
	// session a file of at most one chunk is asked for with BGET, many at
	// once, by Index, its entry's index in the version's manifest
	// (PROTOCOL.md section 16). Requests of one tree and version that
	// follow each other share a BGET.
	Batch bool
	Index uint32
	// Private: the destination directory is the caller's own and no
	// reader looks into it (the mirror's staging tree). A file of at most
	// one chunk is then created under its name at once (O_CREAT|O_EXCL,
	// never over anything there) and written in place, instead of
	// unnamed and linked in at commit: one directory update instead of an
	// orphan-list insert, a link and an orphan-list removal. A file that
	// fails is removed; one cut off by a crash stays, partly written,
	// under its name, so the caller must not trust a file it finds there
	// by its name alone (the mirror hashes such a leftover, or knows it
	// by the inode Result.Inode recorded).
	Private bool
}

// FetchRequests is Fetch for requests of any kind. It returns one Result
// per request, in order (duplicate names are fetched once and share the
// Result), and the first failure wrapped in *FileError. MGET and VGET need
// a server speaking version 2: against a version 1 server they fail with
// ErrNoTrees.
func FetchRequests(ctx context.Context, cfg Config, reqs []Request) ([]Result, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	defer c.dirs.close()
	out := c.dirs
	cfg = c.cfg
	byName := map[string]*task{}
	order := make([]*task, len(reqs))
	for i := range reqs {
		r := reqs[i]
		if t := byName[r.Name]; t != nil {
			order[i] = t
			continue
		}
		t, err := newTask(out, r.Name)
		if err == nil && r.Kind == KindVGet && r.Version == (protocol.Tag{}) {
			err = fmt.Errorf("%w: VGET of %s without a version", ErrRefused, r.Name)
		}
		if err != nil {
			t = &task{name: r.Name, done: true, err: err}
		} else if cfg.NoResume {
			t.stateOnDisk = true
			t.close(true)
		}
		t.rq = &r
		t.fresh = r.Fresh
		byName[r.Name] = t
		order[i] = t
		c.tasks = append(c.tasks, t)
	}
	for _, t := range c.tasks {
		if t.err != nil {
			c.emit(Event{Kind: EventError, Name: t.name, Err: t.err})
		}
	}
	c.run(ctx)
	results := make([]Result, len(order))
	var first error
	for i, t := range order {
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

// versioned adjusts a request's resume point for MGET and VGET: their tag
// is always the version asked for, and a partial file of another version
// is not resumed from.
func (t *task) versioned(offset uint64, tag protocol.Tag) (uint64, protocol.Tag) {
	if t.rq == nil || t.rq.Kind == KindGet {
		return offset, tag
	}
	if tag != t.rq.Version {
		offset = 0
	}
	return offset, t.rq.Version
}

// request is the message that asks for t.
func (t *task) request(req uint32, offset uint64, tag protocol.Tag) protocol.Message {
	if t.rq != nil {
		switch t.rq.Kind {
		case KindMGet:
			return &protocol.MGet{Request: req, Offset: offset, Tag: tag, Name: t.name}
		case KindVGet:
			return &protocol.VGet{Request: req, Offset: offset, Tag: tag, Name: t.name}
		}
	}
	return &protocol.Get{Request: req, Offset: offset, Tag: tag, Name: t.name}
}

// checkFile checks FILE against what the request expects, before anything
// is written.
func (t *task) checkFile(m *protocol.File) error {
	if t.rq == nil {
		return nil
	}
	if t.rq.CheckSize && m.Size != t.rq.Size {
		return fmt.Errorf("%w: FILE announces %d bytes for %s, expected %d", ErrProtocol, m.Size, t.name, t.rq.Size)
	}
	if t.rq.Kind != KindGet && m.Tag != t.rq.Version && t.rq.Version != (protocol.Tag{}) {
		return fmt.Errorf("%w: FILE for %s carries version tag %x, asked for %x", ErrProtocol, t.name, m.Tag[:], t.rq.Version[:])
	}
	return nil
}

// checkEnd checks END's hash against the expected one.
func (t *task) checkEnd(m *protocol.End) error {
	if t.rq == nil || t.rq.Expect == nil || m.Hash == *t.rq.Expect {
		return nil
	}
	return fmt.Errorf("%w: END for %s carries BLAKE3 %s, expected %s", ErrVerify, t.name, m.Hash, *t.rq.Expect)
}
