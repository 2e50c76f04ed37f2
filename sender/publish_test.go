package sender

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
)

type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) add(e Event) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }

// await returns the events of kind once there are at least n of them, or
// what there is after 10 s (publishing events come from another
// goroutine than the one a test talks to).
func (l *eventLog) await(kind string, n int) []Event {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := l.kinds(kind); len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *eventLog) kinds(kind string) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, e := range l.ev {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func mustWrite(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// trickyTree builds the tree of the fidelity tests under dir/etc.
func trickyTree(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "etc")
	mustWrite(t, filepath.Join(root, "a", "b", "c", "deep.conf"), "deep\n", 0o644)
	mustWrite(t, filepath.Join(root, "a-b.txt"), "sorts before a/ bytewise\n", 0o644)
	mustWrite(t, filepath.Join(root, "private", "secret"), "s3cret", 0o600)
	mustWrite(t, filepath.Join(root, "zero"), "", 0o644)
	mustWrite(t, filepath.Join(root, "with space.txt"), "spaced", 0o640)
	mustWrite(t, filepath.Join(root, "ünï", "çødé.txt"), "utf-8", 0o644)
	for _, d := range []string{"empty", "a/empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "private"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"rel": "a/b/c/deep.conf", "abs": "/etc/hostname", "dirlink": "a", "dangling": "nowhere/at/all"} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(root, "bad\nname"), "unpublishable", 0o644)
	return root
}

// Sockets and devices are skipped and reported like FIFOs; 64 levels of
// nesting are published.
func TestScanSocketsDevicesAndDepth(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "t")
	deep := root
	for i := 0; i < 64; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
	}
	mustWrite(t, filepath.Join(deep, "leaf"), "bottom", 0o644)
	l, err := net.Listen("unix", filepath.Join(root, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	device := syscall.Mknod(filepath.Join(root, "null"), syscall.S_IFCHR|0o600, 0x103) == nil // root only
	ev := &eventLog{}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 4, []string{root}, ev)
	if err := p.publishAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	m, _ := p.trees["t"].latest().manifest()
	if len(m.Entries) != 1+64+1 {
		t.Fatalf("%d entries", len(m.Entries))
	}
	if e := m.Entries[len(m.Entries)-1]; strings.Count(e.Path, "/") != 64 || e.Type != manifest.TypeFile {
		t.Fatalf("deepest entry %+v", e)
	}
	want := map[string]string{"t/sock": "socket"}
	if device {
		want["t/null"] = "character device"
	} else {
		t.Log("mknod not permitted: devices not checked")
	}
	got := map[string]string{}
	for _, e := range ev.kinds("skipped") {
		got[e.Name] = e.Message
	}
	for name, kind := range want {
		if !strings.Contains(got[name], kind) {
			t.Errorf("%s: skipped %q, want it reported as a %s", name, got[name], kind)
		}
	}
	if len(got) != len(want) {
		t.Errorf("skipped %v", got)
	}
}

func newTestPublisher(t *testing.T, stateDir string, keep int, paths []string, ev *eventLog) *publisher {
	t.Helper()
	cat, err := newCatalogue(paths)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.close)
	p, err := openPublisher(stateDir, keep, cat.roots, ev.add)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}

func TestScanTrickyTree(t *testing.T) {
	dir := t.TempDir()
	root := trickyTree(t, dir)
	ev := &eventLog{}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 4, []string{root}, ev)
	if err := p.publishAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr := p.trees["etc"]
	v := tr.latest()
	if v == nil || v.seq != 1 {
		t.Fatalf("latest %+v", v)
	}
	m, err := v.manifest()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		typ    manifest.Type
		mode   uint32
		target string
		body   string
	}{
		"":                {manifest.TypeDir, 0, "", ""},
		"a":               {manifest.TypeDir, 0o755, "", ""},
		"a/b":             {manifest.TypeDir, 0o755, "", ""},
		"a/b/c":           {manifest.TypeDir, 0o755, "", ""},
		"a/b/c/deep.conf": {manifest.TypeFile, 0o644, "", "deep\n"},
		"a/empty":         {manifest.TypeDir, 0o755, "", ""},
		"a-b.txt":         {manifest.TypeFile, 0o644, "", "sorts before a/ bytewise\n"},
		"abs":             {manifest.TypeSymlink, 0o777, "/etc/hostname", ""},
		"dangling":        {manifest.TypeSymlink, 0o777, "nowhere/at/all", ""},
		"dirlink":         {manifest.TypeSymlink, 0o777, "a", ""},
		"empty":           {manifest.TypeDir, 0o755, "", ""},
		"private":         {manifest.TypeDir, 0o700, "", ""},
		"private/secret":  {manifest.TypeFile, 0o600, "", "s3cret"},
		"rel":             {manifest.TypeSymlink, 0o777, "a/b/c/deep.conf", ""},
		"with space.txt":  {manifest.TypeFile, 0o640, "", "spaced"},
		"zero":            {manifest.TypeFile, 0o644, "", ""},
		"ünï":             {manifest.TypeDir, 0o755, "", ""},
		"ünï/çødé.txt":    {manifest.TypeFile, 0o644, "", "utf-8"},
	}
	if len(m.Entries) != len(want) {
		var got []string
		for _, e := range m.Entries {
			got = append(got, e.Path)
		}
		t.Fatalf("%d entries %q, want %d", len(m.Entries), got, len(want))
	}
	for _, e := range m.Entries {
		w, ok := want[e.Path]
		if !ok {
			t.Errorf("unexpected entry %q", e.Path)
			continue
		}
		if e.Type != w.typ || e.Target != w.target || (e.Path != "" && e.Mode != w.mode) {
			t.Errorf("%q: type %v mode %#o target %q, want %v %#o %q", e.Path, e.Type, e.Mode, e.Target, w.typ, w.mode, w.target)
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(root, e.Path), &st); err != nil || e.MtimeNs != st.Mtim.Nano() {
			t.Errorf("%q: mtime %d, lstat says %d (%v)", e.Path, e.MtimeNs, st.Mtim.Nano(), err)
		}
		if e.Type == manifest.TypeFile {
			if e.Size != uint64(len(w.body)) || e.Hash != blake3.Sum256([]byte(w.body)) {
				t.Errorf("%q: size %d hash %x", e.Path, e.Size, e.Hash)
			}
			// The store holds exactly the content, read-only.
			b, err := os.ReadFile(p.st.Path(store.Hash(e.Hash)))
			if err != nil || string(b) != w.body {
				t.Errorf("%q: stored copy %q, %v", e.Path, b, err)
			}
			if fi, err := os.Stat(p.st.Path(store.Hash(e.Hash))); err != nil || fi.Mode().Perm() != 0o400 {
				t.Errorf("%q: stored copy mode %v", e.Path, fi.Mode())
			}
		}
	}
	// The FIFO and the name with a newline are skipped and reported.
	skipped := ev.kinds("skipped")
	var names []string
	for _, e := range skipped {
		names = append(names, e.Name+": "+e.Message)
	}
	if len(skipped) != 2 || !strings.Contains(strings.Join(names, "\n"), "etc/fifo: not a regular file, directory or symlink (FIFO)") {
		t.Errorf("skipped events: %q", names)
	}
	pub := ev.kinds("published")
	if len(pub) != 1 || pub[0].Seq != 1 || pub[0].Version != v.id.String() || pub[0].Entries != int64(len(want)) || pub[0].Files != 6 {
		t.Errorf("published events: %+v", pub)
	}
	// The kept manifest decodes to the same id.
	b, err := os.ReadFile(v.file)
	if err != nil || manifest.IDOf(b) != v.id || filepath.Base(v.file) != manifestName(1, v.id) {
		t.Fatalf("kept manifest %s: %v", v.file, err)
	}
}

// Same content => same id, with different state directories and runs;
// the sequence number only grows across restarts, and an unchanged tree
// publishes nothing new.
func TestVersionIDAndSeqAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	root := trickyTree(t, dir)
	ctx := context.Background()
	stA, stB := filepath.Join(dir, "stateA"), filepath.Join(dir, "stateB")

	a := newTestPublisher(t, stA, 4, []string{root}, &eventLog{})
	if err := a.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	idA := a.trees["etc"].latest().id
	b := newTestPublisher(t, stB, 4, []string{root}, &eventLog{})
	if err := b.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	if idB := b.trees["etc"].latest().id; idB != idA {
		t.Fatalf("same tree, two state dirs: %s vs %s", idA, idB)
	}
	// A second zsend on the same state directory is refused.
	cat, _ := newCatalogue([]string{root})
	defer cat.close()
	if _, err := openPublisher(stA, 4, cat.roots, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second publisher on one state dir: %v", err)
	}
	a.close()

	// Restart, unchanged: same version, same seq, nothing published.
	ev := &eventLog{}
	a2 := newTestPublisher(t, stA, 4, []string{root}, ev)
	if l := a2.trees["etc"].latest(); l == nil || l.seq != 1 || l.id != idA {
		t.Fatalf("after restart: %+v", l)
	}
	if err := a2.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	if l := a2.trees["etc"].latest(); l.seq != 1 || len(ev.kinds("published")) != 0 {
		t.Fatalf("unchanged tree republished: seq %d, %d events", l.seq, len(ev.kinds("published")))
	}
	// A change: seq 2. Restart: seq stays 2 and the next change is 3.
	mustWrite(t, filepath.Join(root, "zero"), "not empty now", 0o644)
	if err := a2.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	if l := a2.trees["etc"].latest(); l.seq != 2 || l.id == idA {
		t.Fatalf("after a change: seq %d id %s", l.seq, l.id.Short())
	}
	a2.close()
	seqFile, _ := os.ReadFile(filepath.Join(stA, "trees", "etc", "seq"))
	if strings.TrimSpace(string(seqFile)) != "2" {
		t.Fatalf("seq file %q", seqFile)
	}
	a3 := newTestPublisher(t, stA, 4, []string{root}, &eventLog{})
	mustWrite(t, filepath.Join(root, "zero"), "", 0o644) // back to the first content
	if err := a3.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	l := a3.trees["etc"].latest()
	if l.seq != 3 {
		t.Fatalf("seq after restart and change: %d", l.seq)
	}
	// The content is the first version's, but the mtime of "zero" moved,
	// so the id differs from idA only through that mtime.
	m, _ := l.manifest()
	e, _ := m.Lookup("zero")
	if e.Size != 0 || e.Hash != blake3.Sum256(nil) {
		t.Fatalf("zero: %+v", e)
	}
}

// Older versions beyond --keep-versions are dropped with the blobs only
// they referenced; the kept ones stay complete.
func TestKeepVersionsAndGC(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	mustWrite(t, filepath.Join(root, "stable"), "stable content", 0o644)
	p := newTestPublisher(t, filepath.Join(dir, "state"), 2, []string{root}, &eventLog{})
	ctx := context.Background()
	var hashes []store.Hash
	for i, body := range []string{"one", "two", "three"} {
		mustWrite(t, filepath.Join(root, "changing"), body, 0o644)
		if err := p.publishAll(ctx); err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, store.Hash(blake3.Sum256([]byte(body))))
		if got := p.trees["tree"].latest().seq; got != uint64(i+1) {
			t.Fatalf("seq %d, want %d", got, i+1)
		}
	}
	vs := p.trees["tree"].versions()
	if len(vs) != 2 || vs[0].seq != 2 || vs[1].seq != 3 {
		t.Fatalf("kept %d versions", len(vs))
	}
	if p.st.Has(hashes[0]) || !p.st.Has(hashes[1]) || !p.st.Has(hashes[2]) || !p.st.Has(store.Hash(blake3.Sum256([]byte("stable content")))) {
		t.Fatalf("store after GC: %v %v %v", p.st.Has(hashes[0]), p.st.Has(hashes[1]), p.st.Has(hashes[2]))
	}
	names, _ := readDirNames(filepath.Join(dir, "state", "trees", "tree"))
	n := 0
	for _, name := range names {
		if strings.HasSuffix(name, ".manifest") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d manifests kept: %v", n, names)
	}
}

// The store's collection is incremental once it has run in full: after
// every publish it holds exactly the blobs of the kept versions of every
// tree (a content that leaves and comes back, a content two trees share),
// and only the first collection (the state directory's store was not
// empty at the start) read every kept manifest.
func TestIncrementalGCKeepsExactlyTheKeptBlobs(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mustWrite(t, filepath.Join(b, "shared"), "body 0", 0o644)
	mustWrite(t, filepath.Join(a, "const"), "constant", 0o644)
	state := filepath.Join(dir, "state")
	// A stray blob (from a crash) makes the first collection a full one.
	st, err := store.Open(filepath.Join(state, "store"))
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "stray"), "stray", 0o644)
	f, _ := os.Open(filepath.Join(dir, "stray"))
	before, _ := store.FStat(f)
	stray, _, err := st.Put(f, before, make([]byte, 4096))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, state, 3, []string{a, b}, &eventLog{})
	ctx := context.Background()
	bodies := []int{1, 2, 1, 3, 4, 5, 1, 0, 6, 7, 0, 8, 9, 10}
	for round, n := range bodies {
		mustWrite(t, filepath.Join(a, "changing"), fmt.Sprintf("body %d", n), 0o644)
		mustWrite(t, filepath.Join(a, fmt.Sprintf("new%d", round)), fmt.Sprintf("round %d", round), 0o644)
		os.Remove(filepath.Join(a, fmt.Sprintf("new%d", round-1)))
		// Tree a alone after the first round: a scan of b would store
		// its blob again if a's collection had taken it.
		publish := p.publishAll
		if round > 0 {
			publish = func(ctx context.Context) error { return p.publish(ctx, p.trees["a"], nil) }
		}
		if err := publish(ctx); err != nil {
			t.Fatal(err)
		}
		want := map[store.Hash]bool{}
		for _, name := range p.names {
			for _, v := range p.trees[name].versions() {
				m, err := v.read()
				if err != nil {
					t.Fatal(err)
				}
				for i := range m.Entries {
					if m.Entries[i].Type == manifest.TypeFile {
						want[store.Hash(m.Entries[i].Hash)] = true
					}
				}
			}
		}
		got := map[store.Hash]bool{}
		if _, err := p.st.GC(func(h store.Hash) bool { got[h] = true; return true }); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("round %d: the store holds %d blobs, the kept versions name %d", round, len(got), len(want))
		}
		if got[stray] {
			t.Fatalf("round %d: the stray blob is still stored", round)
		}
	}
	if vs := p.trees["a"].versions(); len(vs) != 3 || vs[2].seq != uint64(len(bodies)) {
		t.Fatalf("tree a keeps %d versions", len(vs))
	}
	if p.fullGCs != 1 || p.lastIn == nil {
		t.Fatalf("%d full collections (want 1, then incremental)", p.fullGCs)
	}
}

// The stat cache: a rescan of an unchanged tree copies nothing, and a
// change of content (even keeping size and mtime) is noticed.
func TestStatCacheAvoidsRecopy(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	mustWrite(t, filepath.Join(root, "f"), strings.Repeat("x", 1000), 0o644)
	mustWrite(t, filepath.Join(root, "g"), "recent", 0o644)
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	// Files written just now are too recent for the cache to vouch for
	// them (racyWindow); scan as if an hour later.
	scanClock = func() time.Time { return time.Now().Add(time.Hour) }
	defer func() { scanClock = time.Now }()
	scan := func(old *statCache) (*scanner, *manifest.Manifest, error) {
		b := st.Begin()
		s, m, err := scanTree(context.Background(), root, b, old, old != nil, func(string, string) {})
		if err == nil {
			err = b.Commit()
		}
		return s, m, err
	}
	s1, _, err := scan(nil)
	if err != nil || s1.stored != 2 {
		t.Fatalf("first scan stored %v, %v", s1, err)
	}
	s2, _, err := scan(s1.cache)
	if err != nil || s2.stored != 0 || s2.hashed != 0 {
		t.Fatalf("second scan stored %d, hashed %d, %v; want neither (the stat cache vouches)", s2.stored, s2.hashed, err)
	}
	// After a restart (no stat cache, a kept latest version: the
	// publisher hashes first) each file is hashed once more, not copied:
	// the store has its content already (README, store).
	b := st.Begin()
	s2b, _, err := scanTree(context.Background(), root, b, nil, true, func(string, string) {})
	if err == nil {
		err = b.Commit()
	}
	if err != nil || s2b.stored != 0 || s2b.hashed != 2 {
		t.Fatalf("scan without a cache stored %d, hashed %d, %v; want 0 and 2", s2b.stored, s2b.hashed, err)
	}
	// Same size, same mtime, new content: the ctime gives it away.
	fi, _ := os.Stat(filepath.Join(root, "g"))
	mustWrite(t, filepath.Join(root, "g"), "RECENT", 0o644)
	os.Chtimes(filepath.Join(root, "g"), fi.ModTime(), fi.ModTime())
	s3, m, err := scan(s2.cache)
	if err != nil || s3.stored != 1 {
		t.Fatalf("third scan stored %d, %v", s3.stored, err)
	}
	if e, _ := m.Lookup("g"); e.Hash != blake3.Sum256([]byte("RECENT")) {
		t.Fatal("stale hash from the stat cache")
	}
}

// A file that changes while it is copied is copied again; one that keeps
// changing fails the scan, and the latest version stays what it was.
func TestSourceEditedDuringPublishing(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	path := filepath.Join(root, "f")
	mustWrite(t, path, "first", 0o644)
	ev := &eventLog{}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 4, []string{root}, ev)
	ctx := context.Background()
	if err := p.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	v1 := p.trees["tree"].latest()

	// Changes once during the copy: the retry publishes the new content.
	edits := 0
	testHookBeforePut = func(string) {
		if edits == 0 {
			os.WriteFile(path, []byte("second, edited during the copy"), 0o644)
		}
		edits++
	}
	defer func() { testHookBeforePut = nil }()
	mustWrite(t, path, "second", 0o644)
	if err := p.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := p.trees["tree"].latest()
	m, _ := v2.manifest()
	e, _ := m.Lookup("f")
	if v2.seq != 2 || edits != 2 || e.Hash != blake3.Sum256([]byte("second, edited during the copy")) {
		t.Fatalf("after one edit during the copy: seq %d, %d attempts", v2.seq, edits)
	}
	b, _ := os.ReadFile(p.st.Path(store.Hash(e.Hash)))
	if string(b) != "second, edited during the copy" {
		t.Fatalf("stored %q", b)
	}

	// Changes at every attempt: the scan fails, version 2 stays the latest.
	n := 0
	testHookBeforePut = func(string) {
		n++
		os.WriteFile(path, []byte(strings.Repeat("x", n)), 0o644)
	}
	err := p.publishAll(ctx)
	if err == nil || !strings.Contains(err.Error(), "kept changing") {
		t.Fatalf("publish of an always-changing file: %v", err)
	}
	if l := p.trees["tree"].latest(); l != v2 || n != copyRetries+1 {
		t.Fatalf("latest %d after a failed scan (%d attempts)", l.seq, n)
	}
	if errs := ev.kinds("error"); len(errs) != 1 || !strings.Contains(errs[0].Message, "latest version stays 2") {
		t.Fatalf("error events %+v", errs)
	}
	// Store still holds everything the kept versions list.
	for _, v := range []*version{v1, v2} {
		m, _ := v.manifest()
		for _, e := range m.Entries {
			if e.Type == manifest.TypeFile && !p.st.Has(store.Hash(e.Hash)) {
				t.Fatalf("version %d lost %s", v.seq, e.Path)
			}
		}
	}
}

// A skipped entry is reported once, not at every rescan.
func TestSkippedReportedOnce(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "t")
	os.MkdirAll(root, 0o755)
	syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644)
	ev := &eventLog{}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 4, []string{root}, ev)
	for i := 0; i < 3; i++ {
		if err := p.publishAll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(ev.kinds("skipped")); n != 1 {
		t.Fatalf("%d skipped events for one FIFO over three scans", n)
	}
	syscall.Mkfifo(filepath.Join(root, "fifo2"), 0o644)
	p.publishAll(context.Background())
	if n := len(ev.kinds("skipped")); n != 2 {
		t.Fatalf("a new FIFO: %d skipped events in all", n)
	}
}

// A blob left in the store before a start (a crash, a version dropped
// meanwhile) is collected after the first publish; a new, empty store
// skips that collection, and the new version's blobs are all kept.
func TestStrayBlobCollectedAfterStart(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	mustWrite(t, filepath.Join(root, "kept"), "kept content", 0o644)
	st, err := store.Open(filepath.Join(dir, "state", "store"))
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "stray"), "stray content", 0o644)
	f, err := os.Open(filepath.Join(dir, "stray"))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := store.FStat(f)
	stray, _, err := st.Put(f, before, make([]byte, 4096))
	f.Close()
	if err != nil || !st.Has(stray) {
		t.Fatalf("stray blob: %v", err)
	}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 2, []string{root}, &eventLog{})
	if err := p.publishAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st.Has(stray) || !st.Has(store.Hash(blake3.Sum256([]byte("kept content")))) {
		t.Fatalf("after the first publish: stray kept %v, tree's blob kept %v", st.Has(stray), st.Has(store.Hash(blake3.Sum256([]byte("kept content")))))
	}
	p.close()

	fresh := newTestPublisher(t, filepath.Join(dir, "fresh"), 2, []string{root}, &eventLog{})
	if fresh.dirty {
		t.Fatal("a new state directory's store is marked as needing collection")
	}
	if err := fresh.publishAll(context.Background()); err != nil || !fresh.st.Has(store.Hash(blake3.Sum256([]byte("kept content")))) {
		t.Fatalf("publish into a new state directory: %v", err)
	}
}

// A tree of more entries than a scan keeps in one chunk is assembled
// whole, sorted, with each file's hash and the stat cache aligned.
func TestScanManyEntries(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "tree")
	const n = entryChunk + 100 // two chunks, with the directories
	for i := 0; i < n; i++ {
		mustWrite(t, filepath.Join(root, fmt.Sprintf("d%02d", i%50), fmt.Sprintf("f%05d", i)), fmt.Sprint(i), 0o644)
	}
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	scanClock = func() time.Time { return time.Now().Add(time.Hour) } // old enough for the cache to trust
	defer func() { scanClock = time.Now }()
	b := st.Begin()
	s, m, err := scanTree(context.Background(), root, b, nil, false, func(string, string) {})
	if err == nil {
		err = b.Commit()
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Entries) != 1+50+n || len(s.cache.ext) != len(m.Entries) || s.stored != n {
		t.Fatalf("%d entries, %d extras, %d stored", len(m.Entries), len(s.cache.ext), s.stored)
	}
	for i := 0; i < n; i++ {
		e, ok := m.Lookup(fmt.Sprintf("d%02d/f%05d", i%50, i))
		if !ok || e.Hash != blake3.Sum256([]byte(fmt.Sprint(i))) || !st.Has(store.Hash(e.Hash)) {
			t.Fatalf("file %d: %+v %v", i, e, ok)
		}
	}
	for i, e := range m.Entries {
		var fs syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(root, e.Path), &fs); err != nil {
			t.Fatal(err)
		}
		x := s.cache.ext[i]
		if e.Type == manifest.TypeFile && (!x.trusted() || x.ino != fs.Ino || x.ctimeNs != fs.Ctim.Nano()) {
			t.Fatalf("entry %d (%s): stat cache record %+v not aligned", i, e.Path, x)
		}
	}
}

// A tree beyond what receivers accept is not published: the latest
// version stays, with an error event naming the limit.
func TestPublishRefusesTreeBeyondReceiverLimits(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "etc")
	for i := range 3 {
		mustWrite(t, filepath.Join(root, fmt.Sprint("f", i)), "x", 0o644)
	}
	ev := &eventLog{}
	p := newTestPublisher(t, filepath.Join(dir, "state"), 4, []string{root}, ev)
	ctx := context.Background()
	if err := p.publishAll(ctx); err != nil {
		t.Fatal(err)
	}
	defer func(old manifest.Limits) { publishLimits = old }(publishLimits)
	publishLimits.MaxEntries = 4 // the root and three files fit; a fourth file does not
	mustWrite(t, filepath.Join(root, "f3"), "x", 0o644)
	err := p.publishAll(ctx)
	if err == nil || !strings.Contains(err.Error(), "beyond what receivers accept") {
		t.Fatalf("publishing 5 entries with a limit of 4: %v", err)
	}
	if v := p.trees["etc"].latest(); v == nil || v.seq != 1 {
		t.Fatalf("latest after the refusal: %+v, want seq 1", v)
	}
	if got := ev.await("error", 1); len(got) != 1 || !strings.Contains(got[0].Message, "beyond what receivers accept") {
		t.Fatalf("error events %+v", got)
	}
}
