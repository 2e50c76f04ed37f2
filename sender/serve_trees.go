package sender

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// Serving versions (ZSND version 2). LIST is answered at once from the
// published state; MGET and VGET are queued with GETs and go through the
// same transfer machinery (credit, chunk hashes, pooled buffers), reading
// the kept manifest or the store's immutable copy, never the live tree, so
// every byte a receiver gets for version V is the byte V published.

// immutableCtime in a fileKey marks a file zsend never writes after
// publishing it (see sameVersion).
const immutableCtime = -1

// tree finds a served tree by name (one trailing "/" is accepted).
func (s *Server) tree(name string) (*pubTree, error) {
	name = strings.TrimSuffix(name, "/")
	if s.pub == nil {
		return nil, &lookupError{protocol.CodeNotFound, fmt.Sprintf("tree %q: this server publishes no versions (no state directory)", name)}
	}
	t, ok := s.pub.trees[name]
	if !ok {
		return nil, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not a tree served here", name)}
	}
	return t, nil
}

// mayTree reports whether the session's client may see tree: without an
// access list every client may; with one, a key may see (LIST, STATUS,
// subscriptions, REPORT) exactly the trees whose manifest it may fetch
// ("TREE/" in the access list).
func (sess *session) mayTree(tree string) bool {
	cv := sess.srv.cfg.Curve
	if cv == nil || cv.Access == nil {
		return true
	}
	return sess.hasKey && cv.Access(sess.key, tree+"/")
}

// refuseKey answers a request the access list does not allow for the
// session's key (a name it may not fetch, a tree it may not see): ERROR
// 403, and a "refused" event naming the key's fingerprint.
func (sess *session) refuseKey(req uint32, name string) {
	msg := "not allowed for this client key"
	if sess.hasKey {
		msg = "not allowed for client key " + KeyFingerprint(sess.key)
	}
	sess.sendNoted(Event{Kind: "refused", Name: name, Message: fmt.Sprintf("%d %v: %s", protocol.CodeRefused, protocol.CodeRefused, msg)}, &protocol.Error{Request: req, Code: protocol.CodeRefused, Message: msg})
}

// list answers LIST: one TREE per tree, then END with the count.
func (sess *session) list(m *protocol.List) {
	if sess.outstanding(m.Request) {
		sess.fail(protocol.CodeBadRequest, fmt.Sprintf("LIST reuses request id %d, which is still outstanding", m.Request))
		return
	}
	var trees []*pubTree
	if m.Tree == "" {
		if p := sess.srv.pub; p != nil {
			for _, name := range p.names {
				if sess.mayTree(name) {
					trees = append(trees, p.trees[name])
				}
			}
		}
	} else if !sess.mayTree(strings.TrimSuffix(m.Tree, "/")) {
		sess.refuseKey(m.Request, m.Tree)
		return
	} else {
		t, err := sess.srv.tree(m.Tree)
		if err == nil && t.latest() == nil && m.Flags&protocol.ListSubscribe == 0 {
			err = &lookupError{protocol.CodeNotFound, fmt.Sprintf("tree %q has no published version yet", t.name)}
		}
		if err != nil {
			sess.sendNoted(Event{Kind: "refused", Name: m.Tree, Message: err.Error()}, &protocol.Error{Request: m.Request, Code: err.(*lookupError).code, Message: err.Error()})
			return
		}
		if t.latest() != nil {
			trees = append(trees, t)
		} // else a subscription to a tree with no version yet: END 0, then pushes
	}
	var sub *subscription
	if m.Flags&protocol.ListSubscribe != 0 {
		// A LIST reusing a subscription's id replaces it: no room needed.
		if len(sess.subs) >= maxSubscriptions && sess.subscription(m.Request) < 0 {
			sess.send(&protocol.Error{Request: m.Request, Code: protocol.CodeTooMany,
				Message: fmt.Sprintf("more than %d subscriptions in one session", maxSubscriptions)})
			return
		}
		sub = &subscription{req: m.Request, tree: strings.TrimSuffix(m.Tree, "/"), sent: map[string]uint64{}}
	}
	n := 0
	for _, t := range trees {
		v := t.latest()
		if v == nil {
			continue // nothing published yet (its first scan failed)
		}
		sess.sendTree(m.Request, t, v)
		if sub != nil {
			sub.sent[t.name] = v.seq
		}
		n++
	}
	sess.send(&protocol.End{Request: m.Request, Size: uint64(n)})
	if sub != nil {
		sess.unsubscribe(m.Request) // a LIST reusing a request id replaces its subscription
		sess.subs = append(sess.subs, sub)
	}
}

// subscription returns the index in sess.subs of the subscription of
// request id req, or -1.
func (sess *session) subscription(req uint32) int {
	return slices.IndexFunc(sess.subs, func(sub *subscription) bool { return sub.req == req })
}

func (sess *session) sendTree(req uint32, t *pubTree, v *version) {
	var flags uint8
	if sess.srv.cfg.Barrier || v.barrier {
		flags = protocol.TreeBarrier
	}
	sess.send(&protocol.Tree{Request: req, Flags: flags, Seq: v.seq, Entries: v.entries, Bytes: v.bytes,
		ManifestSize: uint64(v.size), Version: protocol.Hash(v.id), Name: t.name})
}

// maxSubscriptions bounds the LIST subscriptions of one session.
const maxSubscriptions = 64

// subscription is a LIST with SUBSCRIBE: tree "" means every tree.
type subscription struct {
	req  uint32
	tree string
	sent map[string]uint64 // tree -> seq of the last TREE sent
}

func (sess *session) unsubscribe(req uint32) {
	if i := sess.subscription(req); i >= 0 {
		sess.subs = slices.Delete(sess.subs, i, i+1)
	}
}

// pushVersions sends, to every subscription, a TREE for each tree whose
// latest version it has not seen. Versions published in quick succession
// may be announced once, by the newest.
func (s *Server) pushVersions() {
	if s.pub == nil {
		return
	}
	for _, sess := range s.ring {
		if sess.dead {
			continue
		}
		for _, sub := range sess.subs {
			for _, name := range s.pub.names {
				if (sub.tree != "" && sub.tree != name) || !sess.mayTree(name) {
					continue
				}
				t := s.pub.trees[name]
				if v := t.latest(); v != nil && v.seq > sub.sent[name] {
					sub.sent[name] = v.seq
					sess.sendTree(sub.req, t, v)
				}
			}
		}
	}
}

func gone(t *pubTree, tag protocol.Tag) error {
	return &lookupError{protocol.CodeGone, fmt.Sprintf("version %x of tree %q is no longer kept (latest: %s)", tag[:6], t.name, describe(t.latest()))}
}

// openManifest resolves an MGET: the kept manifest file of the version.
func (s *Server) openManifest(g *protocol.Get) (source, error) {
	t, err := s.tree(g.Name)
	if err != nil {
		return source{}, err
	}
	v := t.byTag(g.Tag)
	if v == nil {
		if g.Tag == (protocol.Tag{}) {
			return source{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("tree %q has no published version yet", t.name)}
		}
		return source{}, gone(t, g.Tag)
	}
	f, key, err := openRegular(v.file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return source{}, gone(t, g.Tag) // dropped since the lookup
		}
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("opening the manifest of %s: %v", t.name, err)}
	}
	if key.size != v.size {
		f.Close()
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("the kept manifest of %s version %d has changed size", t.name, v.seq)}
	}
	if v.dir == "" {
		key.ctimeNS = immutableCtime
	}
	want := protocol.Hash(v.id)
	return source{f: f, key: key, mode: 0, mtimeNS: v.published.UnixNano(), tag: v.tag(), want: &want, verifyFirst: v.dir != ""}, nil
}

// openVersionFile resolves a VGET: the store's copy of a regular file of
// the version.
func (s *Server) openVersionFile(g *protocol.Get) (source, error) {
	if err := protocol.ValidName(g.Name); err != nil {
		return source{}, &lookupError{protocol.CodeRefused, err.Error()}
	}
	name, rel, ok := strings.Cut(g.Name, "/")
	if !ok {
		return source{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q names no file of a tree (TREE/PATH)", g.Name)}
	}
	t, v, m, err := s.versionOf(name, g.Tag)
	if err != nil {
		return source{}, err
	}
	e, ok := m.Lookup(rel)
	if !ok || e.Type != manifest.TypeFile {
		return source{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not a regular file of version %d of %s", g.Name, v.seq, t.name)}
	}
	return s.openEntry(t, v, g.Tag, e)
}

// versionOf finds the kept version of a tree that tag names, and its
// manifest: 404 for a tree not served, 410 for a version not kept (or
// dropped since).
func (s *Server) versionOf(tree string, tag protocol.Tag) (*pubTree, *version, *manifest.Manifest, error) {
	t, err := s.tree(tree)
	if err != nil {
		return nil, nil, nil, err
	}
	v := t.byTag(tag)
	if v == nil {
		return nil, nil, nil, gone(t, tag)
	}
	m, err := v.manifest()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil, gone(t, tag)
		}
		return nil, nil, nil, &lookupError{protocol.CodeInternal, fmt.Sprintf("reading the manifest of %s version %d: %v", t.name, v.seq, err)}
	}
	return t, v, m, nil
}

// openEntry opens the copy this server serves of e, a regular file of
// version v (tag) of tree t: the store's, immutable, or a relay's, to be
// checked before it is sent (source.verifyFirst). VGET and BGET serve
// through it.
func (s *Server) openEntry(t *pubTree, v *version, tag protocol.Tag, e *manifest.Entry) (source, error) {
	if v.dir != "" {
		return s.openRelayVersionFile(t, v, tag, e)
	}
	f, err := s.pub.st.OpenBlob(store.Hash(e.Hash))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) && t.byTag(tag) == nil {
			return source{}, gone(t, tag) // collected since the lookup
		}
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("opening the stored copy of %q: %v", t.name+"/"+e.Path, err)}
	}
	key, err := statKey(f)
	if err == nil && uint64(key.size) != e.Size {
		err = fmt.Errorf("stored copy is %d bytes, the manifest says %d", key.size, e.Size)
	}
	if err != nil {
		f.Close()
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("%q: %v", t.name+"/"+e.Path, err)}
	}
	key.ctimeNS = immutableCtime
	want := protocol.Hash(e.Hash)
	return source{f: f, key: key, mode: e.Mode, mtimeNS: e.MtimeNs, tag: tag, want: &want}, nil
}
