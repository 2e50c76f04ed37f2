package sender

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/safefs"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// Relays (zrecv --follow --serve; PROTOCOL.md section 15).
//
// A relay's server publishes nothing of its own: its trees are those its
// follower keeps, and its versions are those the follower has verified
// against the root's manifest, served from the follower's layout (the
// version directory and the kept manifest, mirror's OUT/.zsnd/T/v and m)
// rather than from a store. The follower Offers each version as soon as it
// is staged and checked, before its own switch, so a barrier decided at the
// root can be passed down (the children must stage it too).
//
// What a relay serves, it checks first: a file of a version is hashed
// whole (once per device, inode, size and mtime, cached like any served
// file) and compared with the manifest's hash before its first CHUNK
// leaves; a file whose content no longer matches (someone edited the
// relay's copy) gets ERROR 500 and an "error" event, never a byte. The
// manifest is checked against its id the same way. Children check every
// byte again (PROTOCOL.md section 13), so a relay that lies is caught by
// hash whatever it does.

// ErrNotRelayTree: Offer named a tree the server was not configured to
// relay (Config.Relay).
var ErrNotRelayTree = errors.New("not a relayed tree")

// newRelayPublisher makes the publishing state of a relay: one tree per
// name, no versions yet, no store.
func newRelayPublisher(names []string, keep int) (*publisher, error) {
	p := &publisher{keep: keep, relay: true, trees: map[string]*pubTree{}}
	for _, n := range names {
		if err := protocol.ValidName(n); err != nil || n == "" || strings.Contains(n, "/") {
			return nil, fmt.Errorf("relayed tree %q: not a tree name (one path component)", n)
		}
		if _, dup := p.trees[n]; dup {
			return nil, fmt.Errorf("relayed tree %q named twice", n)
		}
		p.trees[n] = &pubTree{name: n}
		p.names = append(p.names, n)
	}
	sort.Strings(p.names)
	return p, nil
}

// Offer makes version (seq, id) of a relayed tree available to this
// server's receivers and announces it to the subscribed ones when it is
// newer than the latest. manifestPath is the version's manifest (its
// BLAKE3 must be id) and dir the directory holding the version's tree
// (mirror's OUT/.zsnd/TREE/v/NAME). barrier sets TREE's BARRIER flag on
// its announcements (the parent coordinates the switch). Offering the
// latest version again updates its barrier flag and directory. Older
// versions than the latest are kept for receivers still fetching them, up
// to Config.KeepVersions; a version whose directory has been pruned since
// answers 410 gone. Safe from any goroutine.
func (s *Server) Offer(tree string, seq uint64, id manifest.ID, barrier bool, manifestPath, dir string) error {
	if s.pub == nil || !s.pub.relay {
		return fmt.Errorf("%w: this server relays no trees", ErrNotRelayTree)
	}
	t, ok := s.pub.trees[tree]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotRelayTree, tree)
	}
	for _, o := range t.versions() {
		if o.id == id && o.dir == dir && o.barrier == barrier && o.file == manifestPath {
			return nil // offered already (the follower offers at staging and after the switch)
		}
	}
	b, err := os.ReadFile(manifestPath)
	if err != nil {
		return fmt.Errorf("relay %s: reading the manifest: %w", tree, err)
	}
	if manifest.IDOf(b) != id {
		return fmt.Errorf("relay %s: manifest %s does not match version %s", tree, manifestPath, id.Short())
	}
	m, err := manifest.Decode(b, manifest.DefaultLimits())
	if err != nil {
		return fmt.Errorf("relay %s: %w", tree, err)
	}
	files, bytes := m.Files()
	v := &version{seq: seq, id: id, file: manifestPath, dir: dir, barrier: barrier, size: int64(len(b)),
		published: time.Now(), entries: uint64(len(m.Entries)), files: uint64(files), bytes: bytes, m: m}

	s.pub.mu.Lock() // the versions list is replaced, copy on write, as publish does
	old := t.versions()
	vs := make([]*version, 0, len(old)+1)
	for _, o := range old {
		if o.id != id { // an offer of the same version replaces it
			vs = append(vs, o)
		}
	}
	vs = append(vs, v)
	sort.Slice(vs, func(i, j int) bool { return vs[i].seq < vs[j].seq })
	if len(vs) > s.pub.keep {
		vs = vs[len(vs)-s.pub.keep:]
	}
	for _, o := range vs[:max(0, len(vs)-2)] {
		o.mu.Lock()
		o.m = nil
		o.mu.Unlock()
	}
	t.vers.Store(&vs)
	s.pub.mu.Unlock()

	// Announced only if it is the latest (a relay rolled back by hand
	// still announces the root's latest); see pushVersions.
	select {
	case s.announce <- struct{}{}:
	default:
	}
	s.event(Event{Kind: "published", Name: tree, Seq: seq, Version: id.String(), Entries: int64(v.entries),
		Files: int64(files), Size: int64(bytes), Message: "relayed"})
	return nil
}

// openRelayFile opens rel in a relayed version's directory: beneath it,
// no symlink followed on the way, a regular file only.
func openRelayFile(dir, rel string) (*os.File, fileKey, error) {
	d, err := safefs.OpenDir(dir)
	if err != nil {
		return nil, fileKey{}, err
	}
	defer d.Close()
	f, err := d.OpenFile(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fileKey{}, err
	}
	key, err := statKey(f)
	if err == nil && key.mode&unix.S_IFMT != unix.S_IFREG {
		err = errNotRegular
	}
	if err == nil {
		err = unix.SetNonblock(int(f.Fd()), false)
	}
	if err != nil {
		f.Close()
		return nil, fileKey{}, err
	}
	return f, key, nil
}

// errRelayDrift: a relay's copy of a file no longer has the hash of the
// root's manifest; it is not served.
var errRelayDrift = errors.New("this relay's copy does not match the root's manifest (changed on disk); not served")

// openRelayVersionFile opens e, a regular file of a relayed version, in
// the version's directory, to be checked against the manifest before it
// is served (source.verifyFirst).
func (s *Server) openRelayVersionFile(t *pubTree, v *version, tag protocol.Tag, e *manifest.Entry) (source, error) {
	f, key, err := openRelayFile(v.dir, e.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return source{}, gone(t, tag) // pruned by the follower since
		}
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("opening this relay's copy of %q: %v", t.name+"/"+e.Path, err)}
	}
	if uint64(key.size) != e.Size {
		f.Close()
		name := t.name + "/" + e.Path
		s.event(Event{Kind: "error", Name: name, Message: errRelayDrift.Error()})
		return source{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("%q: %v", name, errRelayDrift)}
	}
	// The key keeps the ctime: any change to the file since its hash was
	// last checked (even one that restores size and mtime) makes the
	// check run again; one during a transfer is ERROR 409 and the child
	// resumes (the follower hard-linking the file into a newer version
	// does that too, rarely, and changes no byte).
	want := protocol.Hash(e.Hash)
	return source{f: f, key: key, mode: e.Mode, mtimeNS: e.MtimeNs, tag: tag, want: &want, verifyFirst: true}, nil
}
