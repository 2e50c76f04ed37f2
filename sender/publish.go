package sender

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// Publishing. Each served directory is a tree; a scan of it that finds a
// manifest with a new id becomes a version with the next sequence number.
// The state directory holds (docs/DESIGN-trees.md section 4):
//
//	lock                                   flock: one zsend per state directory
//	store/ab/<64 hex>                      content-addressed copies (internal/store)
//	trees/<tree>/seq                       last sequence number, fsynced before a version is announced
//	trees/<tree>/<seq 20 digits>-<id hex>.manifest   the kept versions' manifests
//
// Order of a publish: blobs fsynced (store.Put), manifest written and
// fsynced, seq written and fsynced, then the version is announced (made
// visible to sessions). A crash at any point leaves either the previous
// latest version or the new one, and a sequence number that never goes
// back: on start-up the last sequence is the larger of the seq file and
// the highest kept manifest.

// DefaultKeepVersions is how many versions of each tree are kept by default.
const DefaultKeepVersions = 16

// DefaultStateDir is the state directory used when none is given:
// $STATE_DIRECTORY (systemd), else /var/lib/zsend for root, else
// $XDG_STATE_HOME/zsend, else ~/.local/state/zsend.
func DefaultStateDir() string {
	return defaultStateDir(os.Geteuid(), os.Getenv, os.UserHomeDir)
}

func defaultStateDir(euid int, getenv func(string) string, home func() (string, error)) string {
	if d := getenv("STATE_DIRECTORY"); d != "" {
		// systemd may list several, separated by colons: use the first.
		return strings.Split(d, ":")[0]
	}
	if euid == 0 {
		return "/var/lib/zsend"
	}
	if d := getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "zsend")
	}
	h, err := home()
	if err != nil {
		return filepath.Join(os.TempDir(), "zsend-state")
	}
	return filepath.Join(h, ".local", "state", "zsend")
}

// TreeInfo describes the latest version of a served tree.
type TreeInfo struct {
	Name      string      // the tree's name (the directory's base name)
	Root      string      // the directory served
	Seq       uint64      // sequence number of the latest version; 0 if none yet
	ID        manifest.ID // its version id
	Entries   uint64      // its entries, the root included
	Files     uint64      // its regular files
	Bytes     uint64      // total size of its regular files
	Published time.Time   // when it was published
	Kept      int         // versions kept
}

// version is one published, kept version of a tree. Immutable.
type version struct {
	seq       uint64
	id        manifest.ID
	file      string // its manifest in the state directory
	size      int64  // the manifest's encoded length
	published time.Time
	entries   uint64
	files     uint64
	bytes     uint64
	// A relay's version (Offer): its files are in dir, not in the store,
	// and are checked against the manifest before they are served;
	// barrier sets BARRIER on its TREE announcements.
	dir     string
	barrier bool

	mu sync.Mutex
	m  *manifest.Manifest // decoded on demand; dropped when the version is no longer the latest
}

func (v *version) tag() (t protocol.Tag) {
	copy(t[:], v.id[:])
	return t
}

// pubTree is the publishing state of one tree.
type pubTree struct {
	name, root, dir string
	cache           *statCache        // of the last scan (publisher lock)
	seq             uint64            // last sequence number used (publisher lock)
	dirs            []string          // directories of the last scan (publisher lock)
	skipped         map[string]string // entries the last scan skipped, and why (publisher lock)
	vers            atomic.Pointer[[]*version]
}

func (t *pubTree) versions() []*version {
	if p := t.vers.Load(); p != nil {
		return *p
	}
	return nil
}

func (t *pubTree) latest() *version {
	vs := t.versions()
	if len(vs) == 0 {
		return nil
	}
	return vs[len(vs)-1]
}

// byTag finds a kept version by the first 16 octets of its id; the zero
// tag means the latest.
func (t *pubTree) byTag(tag protocol.Tag) *version {
	vs := t.versions()
	if tag == (protocol.Tag{}) {
		if len(vs) == 0 {
			return nil
		}
		return vs[len(vs)-1]
	}
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i].tag() == tag {
			return vs[i]
		}
	}
	return nil
}

// publisher owns the state directory and every tree's versions.
type publisher struct {
	dir    string
	st     *store.Store
	keep   int
	lock   *os.File
	events func(Event)
	// onPublish, if set, is called after each new version is announced
	// (set once, before any publish that can run concurrently).
	onPublish func()

	relay bool // a relay's: versions are Offered, not published (relay.go)

	mu    sync.Mutex // one scan or GC at a time
	trees map[string]*pubTree
	names []string // sorted
	dirty bool     // the store may hold blobs no kept version references
	// lastIn maps, per tree, each blob its kept versions name to the
	// sequence number of the latest of them that does; nil until the first
	// full collection builds it. From then on a publish marks the new
	// version's files, and when versions are dropped the blobs last named
	// by one of them, and by no kept version of another tree, are removed:
	// no manifest is read again (a follower fleet's zsend spent a third
	// of its CPU decoding the 16 kept manifests of a 10,000-file tree at
	// every one-file version).
	lastIn map[string]map[store.Hash]uint64
	// scans counts the scans done incrementally and in full (tests).
	scans struct{ incremental, full int }
	// fullGCs counts the collections that read every kept manifest (tests).
	fullGCs int
}

func openPublisher(dir string, keep int, roots map[string]root, events func(Event)) (*publisher, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	for name, r := range roots {
		if r.isDir && (abs == r.path || strings.HasPrefix(abs, r.path+string(filepath.Separator))) {
			return nil, fmt.Errorf("state directory %s is inside the served tree %s (%s)", abs, name, r.path)
		}
	}
	if err := os.MkdirAll(filepath.Join(abs, "trees"), 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(abs, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("state directory %s is in use by another zsend: %w", abs, err)
	}
	st, err := store.Open(filepath.Join(abs, "store"))
	if err != nil {
		lf.Close()
		return nil, err
	}
	// A store that holds nothing yet (a new state directory) needs no
	// collection after the first publish; any other may hold blobs that
	// no kept version references (a crash, versions dropped on load).
	empty, err := st.Empty()
	if err != nil {
		lf.Close()
		return nil, err
	}
	p := &publisher{dir: abs, st: st, keep: keep, lock: lf, events: events, trees: map[string]*pubTree{}, dirty: !empty}
	for name, r := range roots {
		if !r.isDir {
			continue
		}
		t := &pubTree{name: name, root: r.path, dir: filepath.Join(abs, "trees", name)}
		if err := os.MkdirAll(t.dir, 0o700); err != nil {
			p.close()
			return nil, fmt.Errorf("state directory: %w", err)
		}
		if err := p.load(t); err != nil {
			p.close()
			return nil, err
		}
		p.trees[name] = t
		p.names = append(p.names, name)
	}
	sort.Strings(p.names)
	return p, nil
}

func (p *publisher) close() {
	if p.lock != nil {
		p.lock.Close() // releases the flock
	}
}

func (p *publisher) event(e Event) {
	if p.events != nil {
		p.events(e)
	}
}

// load reads a tree's sequence number and kept versions. A manifest whose
// content does not match its name, or whose blobs are missing, is not
// kept (and reported).
func (p *publisher) load(t *pubTree) error {
	if b, err := os.ReadFile(filepath.Join(t.dir, "seq")); err == nil {
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return fmt.Errorf("state directory: %s/seq: %w", t.dir, err)
		}
		t.seq = n
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state directory: %w", err)
	}
	names, err := readDirNames(t.dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	var vs []*version
	for _, n := range names {
		seq, id, ok := parseManifestName(n)
		if !ok {
			continue
		}
		if seq > t.seq {
			t.seq = seq // the seq file lags a crash before it was written
		}
		v, err := p.loadVersion(t, filepath.Join(t.dir, n), seq, id)
		if err != nil {
			p.event(Event{Kind: "error", Name: t.name, Message: fmt.Sprintf("dropping kept version %d: %v", seq, err)})
			os.Remove(filepath.Join(t.dir, n))
			continue
		}
		vs = append(vs, v)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].seq < vs[j].seq })
	if len(vs) > p.keep {
		for _, v := range vs[:len(vs)-p.keep] {
			os.Remove(v.file)
		}
		vs = vs[len(vs)-p.keep:]
	}
	t.vers.Store(&vs)
	return nil
}

func (p *publisher) loadVersion(t *pubTree, file string, seq uint64, id manifest.ID) (*version, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if manifest.IDOf(b) != id {
		return nil, errors.New("manifest does not match its id")
	}
	m, err := manifest.Decode(b, manifest.DefaultLimits())
	if err != nil {
		return nil, err
	}
	for i := range m.Entries {
		if e := &m.Entries[i]; e.Type == manifest.TypeFile && !p.st.Has(store.Hash(e.Hash)) {
			return nil, fmt.Errorf("stored copy of %q is missing", e.Path)
		}
	}
	// The decoded manifest is not kept (decoded again on demand): the
	// first scan after a start only compares ids, and holding every kept
	// version's manifest at once, or the old one beside the new scan's,
	// would multiply the peak memory of a large tree.
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	files, bytes := m.Files()
	return &version{seq: seq, id: id, file: file, size: int64(len(b)), published: fi.ModTime(),
		entries: uint64(len(m.Entries)), files: uint64(files), bytes: bytes}, nil
}

func manifestName(seq uint64, id manifest.ID) string {
	return fmt.Sprintf("%020d-%s.manifest", seq, id)
}

func parseManifestName(n string) (uint64, manifest.ID, bool) {
	var id manifest.ID
	base, ok := strings.CutSuffix(n, ".manifest")
	if !ok {
		return 0, id, false
	}
	s, h, ok := strings.Cut(base, "-")
	if !ok {
		return 0, id, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, id, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != len(id) {
		return 0, id, false
	}
	copy(id[:], b)
	return seq, id, true
}

// publishAll scans every tree and publishes what changed. It returns the
// first error; the other trees are still published.
func (p *publisher) publishAll(ctx context.Context) error {
	var first error
	for _, name := range p.names {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.publish(ctx, p.trees[name], nil); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// publishLimits bound what is published: receivers refuse a manifest
// beyond their limits (by default manifest.DefaultLimits), and this
// server, restarted, would not load it again.
var publishLimits = manifest.DefaultLimits()

// publish scans one tree; a manifest whose id differs from the latest
// version's becomes the next version. With dirty (the directories
// --watch saw change), only those are read again when the last scan
// allows it (scandirty.go); with nil, the whole tree.
func (p *publisher) publish(ctx context.Context, t *pubTree, dirty []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Each skipped entry is reported once, not at every rescan.
	skippedNow := map[string]string{}
	skipped := func(path, why string) {
		skippedNow[path] = why
		if t.skipped[path] != why {
			p.event(Event{Kind: "skipped", Name: t.name + "/" + path, Message: why})
		}
	}
	batch := p.st.Begin()
	var s *scanner
	var m *manifest.Manifest
	err := errNeedFull
	if dirty != nil && t.latest() != nil && t.cache != nil && t.cache.m == t.latest().m {
		var still func(string) bool
		if s, m, still, err = scanDirty(ctx, t.root, batch, t.cache, dirty, skipped); err == nil {
			p.scans.incremental++
			for path, why := range t.skipped {
				if _, now := skippedNow[path]; !now && still(path) {
					skippedNow[path] = why
				}
			}
		}
	}
	if errors.Is(err, errNeedFull) {
		clear(skippedNow)
		batch.Abort()
		batch = p.st.Begin()
		s, m, err = scanTree(ctx, t.root, batch, t.cache, t.latest() != nil, skipped)
		p.scans.full++
	}
	t.skipped = skippedNow
	if err == nil {
		// What every receiver would refuse (and this server could not load
		// again after a restart) is not published.
		lim, size := publishLimits, m.EncodedLen()
		if uint64(len(m.Entries)) > lim.MaxEntries || uint64(size) > lim.MaxBytes {
			err = fmt.Errorf("the tree has %d entries (%d octets of manifest), beyond what receivers accept (%d entries, %d octets)",
				len(m.Entries), size, lim.MaxEntries, lim.MaxBytes)
		}
	}
	if err == nil {
		err = batch.Commit() // the new contents are durable before any manifest names them
	}
	if err != nil {
		batch.Abort()
		p.dirty = true
		if ctx.Err() != nil {
			return fmt.Errorf("publishing %s: %w", t.name, err) // shutting down: not worth an event
		}
		p.event(Event{Kind: "error", Name: t.name, Message: fmt.Sprintf("publishing %s failed, the latest version stays %s: %v", t.name, describe(t.latest()), err)})
		return fmt.Errorf("publishing %s: %w", t.name, err)
	}
	t.cache, t.dirs = s.cache, s.dirs
	// The encoding is hashed, and written below, as it is produced: a
	// large tree's encoded manifest is never held in memory beside it.
	id := m.ID()
	if l := t.latest(); l != nil && l.id == id {
		// Nothing new. Keep one decoded copy: the latest version's, which
		// the stat cache (aligned with identical entries) then shares.
		l.mu.Lock()
		if l.m == nil {
			l.m = m
		}
		t.cache.m = l.m
		l.mu.Unlock()
		return p.gcLocked()
	}
	seq := t.seq + 1
	file := filepath.Join(t.dir, manifestName(seq, id))
	size, err := writeManifest(file, m, id)
	if err != nil {
		return fmt.Errorf("publishing %s: %w", t.name, err)
	}
	if err := writeFileSync(filepath.Join(t.dir, "seq"), []byte(strconv.FormatUint(seq, 10)+"\n")); err != nil {
		os.Remove(file) // not announced: no version may claim this seq
		return fmt.Errorf("publishing %s: %w", t.name, err)
	}
	t.seq = seq // used, even if the sync below fails: never reused
	if err := store.SyncDir(t.dir); err != nil {
		return fmt.Errorf("publishing %s: %w", t.name, err)
	}
	files, bytes := m.Files()
	v := &version{seq: seq, id: id, file: file, size: size, published: time.Now(),
		entries: uint64(len(m.Entries)), files: uint64(files), bytes: bytes, m: m}
	old := t.versions()
	vs := make([]*version, 0, len(old)+1)
	vs = append(vs, old...)
	vs = append(vs, v)
	var dropped []*version
	if len(vs) > p.keep {
		dropped = vs[:len(vs)-p.keep]
		vs = vs[len(vs)-p.keep:]
	}
	t.vers.Store(&vs) // announced: sessions see it from here
	// The latest two stay decoded (receivers still fetching the previous
	// one look paths up in it); older ones are decoded again on demand.
	for _, o := range vs[:max(0, len(vs)-2)] {
		o.mu.Lock()
		o.m = nil
		o.mu.Unlock()
	}
	if p.onPublish != nil {
		p.onPublish()
	}
	p.event(Event{Kind: "published", Name: t.name, Seq: seq, Version: id.String(), Entries: int64(v.entries),
		Files: int64(files), Size: int64(bytes), Stored: int64(s.stored)})
	for _, d := range dropped {
		os.Remove(d.file)
	}
	if p.lastIn != nil && !p.dirty {
		last := p.lastIn[t.name]
		markFiles(last, m, seq)
		if len(dropped) > 0 {
			for h, s := range last {
				if s >= vs[0].seq {
					continue
				}
				delete(last, h)
				if !p.namedElsewhere(t.name, h) && p.st.Remove(h) != nil {
					p.dirty = true // collected in full next time
				}
			}
		}
		return nil
	}
	if len(dropped) > 0 {
		p.dirty = true
	}
	return p.gcLocked()
}

func describe(v *version) string {
	if v == nil {
		return "none"
	}
	return fmt.Sprintf("%d (%s)", v.seq, v.id.Short())
}

// markFiles records in last that version seq names each file of m.
func markFiles(last map[store.Hash]uint64, m *manifest.Manifest, seq uint64) {
	for i := range m.Entries {
		if m.Entries[i].Type == manifest.TypeFile {
			last[store.Hash(m.Entries[i].Hash)] = seq
		}
	}
}

// namedElsewhere tells whether a kept version of a tree other than tree
// names blob h.
func (p *publisher) namedElsewhere(tree string, h store.Hash) bool {
	for name, last := range p.lastIn {
		if _, ok := last[h]; ok && name != tree {
			return true
		}
	}
	return false
}

// gcLocked removes the blobs no kept version of any tree references, when
// the store may hold some (p.dirty), reading every kept manifest, and
// builds p.lastIn for the publishes after it.
func (p *publisher) gcLocked() error {
	if !p.dirty {
		return nil
	}
	p.lastIn = nil
	lastIn := make(map[string]map[store.Hash]uint64, len(p.names))
	for _, name := range p.names {
		vs := p.trees[name].versions()
		most := 0
		for _, v := range vs {
			most = max(most, int(v.files))
		}
		// Sized once, for the largest version: kept versions share most
		// of their files, and a map that grows by doubling holds its old
		// tables beside the new ones (a tree of 10^5 files).
		last := make(map[store.Hash]uint64, most)
		for _, v := range vs { // oldest first: the latest naming a blob wins
			m, err := v.manifestForGC()
			if err != nil {
				return fmt.Errorf("collecting garbage: %w", err) // keep everything
			}
			markFiles(last, m, v.seq)
		}
		lastIn[name] = last
	}
	keep := func(h store.Hash) bool {
		for _, last := range lastIn {
			if _, ok := last[h]; ok {
				return true
			}
		}
		return false
	}
	if _, err := p.st.GC(keep); err != nil {
		return err
	}
	p.lastIn, p.dirty = lastIn, false
	p.fullGCs++
	return nil
}

// manifest returns the decoded manifest of v, reading it from the state
// directory if it is not in memory (and keeping it until the next publish
// drops it). The file is checked against the id.
func (v *version) manifest() (*manifest.Manifest, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m != nil {
		return v.m, nil
	}
	m, err := v.read()
	if err != nil {
		return nil, err
	}
	v.m = m
	return m, nil
}

// manifestForGC is manifest without keeping what it reads: the collector
// visits every kept version once, and must not leave them all in memory.
func (v *version) manifestForGC() (*manifest.Manifest, error) {
	v.mu.Lock()
	m := v.m
	v.mu.Unlock()
	if m != nil {
		return m, nil
	}
	return v.read()
}

func (v *version) read() (*manifest.Manifest, error) {
	b, err := os.ReadFile(v.file)
	if err != nil {
		return nil, err
	}
	if manifest.IDOf(b) != v.id {
		return nil, fmt.Errorf("kept manifest %s does not match its id", v.file)
	}
	return manifest.Decode(b, manifest.DefaultLimits())
}

// writeFileSync writes data to path atomically: a temporary name, fsync,
// rename. The caller fsyncs the directory.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// writeManifest writes m's encoding to path as writeFileSync does,
// streaming it, and checks that what it wrote hashes to id.
func writeManifest(path string, m *manifest.Manifest, id manifest.ID) (int64, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	fail := func(err error) (int64, error) {
		f.Close()
		os.Remove(tmp)
		return 0, err
	}
	h := blake3.New()
	n, err := m.WriteTo(io.MultiWriter(f, h))
	if err != nil {
		return fail(fmt.Errorf("writing the manifest: %w", err))
	}
	if manifest.ID(h.Sum(nil)) != id {
		return fail(errors.New("the manifest written does not hash to its version id"))
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return n, nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func (p *publisher) info() []TreeInfo {
	out := make([]TreeInfo, 0, len(p.names))
	for _, name := range p.names {
		t := p.trees[name]
		ti := TreeInfo{Name: name, Root: t.root}
		vs := t.versions()
		ti.Kept = len(vs)
		if l := t.latest(); l != nil {
			ti.Seq, ti.ID, ti.Entries, ti.Files, ti.Bytes, ti.Published = l.seq, l.id, l.entries, l.files, l.bytes, l.published
		}
		out = append(out, ti)
	}
	return out
}
