package sender

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
)

// dirtyHarness scans a tree incrementally, as --watch does, and in full,
// and compares the two manifests.
type dirtyHarness struct {
	t    *testing.T
	root string
	st   *store.Store
	last *statCache
}

func newDirtyHarness(t *testing.T) *dirtyHarness {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	h := &dirtyHarness{t: t, root: filepath.Join(dir, "tree"), st: st}
	if err := os.MkdirAll(h.root, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *dirtyHarness) full() *scanner {
	h.t.Helper()
	b := h.st.Begin()
	s, _, err := scanTree(context.Background(), h.root, b, h.last, h.last != nil, func(string, string) {})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		h.t.Fatal(err)
	}
	return s
}

// step scans the directories dirty again and checks the result against
// a full scan. It reports whether the incremental scan stood for it.
func (h *dirtyHarness) step(what string, dirty ...string) bool {
	h.t.Helper()
	b := h.st.Begin()
	s, m, _, err := scanDirty(context.Background(), h.root, b, h.last, dirty, func(string, string) {})
	if errors.Is(err, errNeedFull) {
		b.Abort()
		h.last = h.full().cache
		return false
	}
	if err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
	if err := b.Commit(); err != nil {
		h.t.Fatal(err)
	}
	want := h.full()
	if m.ID() != want.cache.m.ID() {
		h.t.Fatalf("%s (dirty %q): the incremental scan gives\n%s\na full scan\n%s", what, dirty, listing(m), listing(want.cache.m))
	}
	sd, wd := slices.Clone(s.dirs), slices.Clone(want.dirs)
	slices.Sort(sd)
	slices.Sort(wd)
	if !slices.Equal(sd, wd) {
		h.t.Fatalf("%s: directories to watch %q, a full scan %q", what, sd, wd)
	}
	for i, e := range m.Entries {
		if e.Type == manifest.TypeDir && s.cache.ext[i].ino == 0 {
			h.t.Fatalf("%s: directory %q without its inode in the stat cache", what, e.Path)
		}
	}
	h.last = s.cache
	return true
}

func listing(m *manifest.Manifest) string {
	var b strings.Builder
	for _, e := range m.Entries {
		fmt.Fprintf(&b, "  %q %v %o %d %d %q\n", e.Path, e.Type, e.Mode, e.Size, e.MtimeNs, e.Target)
	}
	return b.String()
}

func (h *dirtyHarness) p(rel string) string { return filepath.Join(h.root, filepath.FromSlash(rel)) }

func (h *dirtyHarness) write(rel, content string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Dir(h.p(rel)), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.p(rel), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *dirtyHarness) must(err error) {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
}

// Each kind of change, with the directories its events name: the
// incremental scan gives exactly the full scan's manifest, or asks for a
// full scan where it must.
func TestScanDirtyEqualsFullScan(t *testing.T) {
	h := newDirtyHarness(t)
	h.write("a/b/f", "f")
	h.write("a/c/g", "g")
	h.write("a/c/deep/h", "h")
	h.write("a/d", "d")
	h.write("x/y", "y")
	h.write("top", "top")
	h.last = h.full().cache

	inc := func(what string, dirty ...string) {
		t.Helper()
		if !h.step(what, dirty...) {
			t.Fatalf("%s: a full scan was asked for", what)
		}
	}
	h.write("a/b/f", "changed")
	inc("file rewritten", "a/b")
	h.write("a/b/new", "new")
	inc("file created", "a/b")
	h.must(os.Remove(h.p("a/b/new")))
	inc("file removed", "a/b")
	h.write("a/n1/n2/n3", "nested")
	h.write("a/n1/z", "z")
	inc("directories created with files below", "a")
	h.write("a/n1/n2/n4", "after")
	inc("a file in a new directory", "a/n1/n2")
	h.must(os.RemoveAll(h.p("a/c")))
	inc("a directory removed (its parent's event)", "a")
	h.must(os.Rename(h.p("a/n1"), h.p("x/moved")))
	inc("a directory moved (both parents' events)", "a", "x")
	h.write("x/moved/n2/late", "late")
	inc("a file in the moved directory", "x/moved/n2")
	h.must(os.RemoveAll(h.p("x/moved/n2")))
	h.write("x/moved/n2", "now a file")
	inc("a directory replaced by a file", "x/moved")
	h.must(os.Chmod(h.p("a/b"), 0o700))
	inc("directory mode (its own event and its parent's)", "a/b", "a")
	h.must(os.Symlink("../top", h.p("a/b/link")))
	inc("symlink created", "a/b")
	h.must(os.Remove(h.p("a/b/link")))
	h.must(os.Symlink("/elsewhere", h.p("a/b/link")))
	inc("symlink retargeted", "a/b")
	h.write("rootfile", "r")
	inc("a file in the root", "")
	// The same name, another directory: what is below is walked again.
	h.must(os.Rename(h.p("a/b"), h.p("a/b.old")))
	h.must(os.Mkdir(h.p("a/b"), 0o755))
	h.must(os.Rename(h.p("a/b.old/f"), h.p("a/b/f")))
	inc("a directory replaced by another of the same name", "a", "a/b", "a/b.old")
	h.must(os.Mkdir(h.p("a/b/sub"), 0o755))
	inc("a new empty directory", "a/b")

	// A dirty directory that is gone, its parent not named: full scan.
	h.must(os.RemoveAll(h.p("x/moved")))
	if h.step("a dirty directory removed", "x/moved") {
		t.Fatal("an incremental scan of a removed directory")
	}
	// A dirty directory that is another directory now: full scan.
	h.must(os.Rename(h.p("a/b"), h.p("a/b2")))
	h.must(os.Mkdir(h.p("a/b"), 0o755))
	if h.step("a dirty directory replaced", "a/b") {
		t.Fatal("an incremental scan of a directory that is not the one scanned")
	}
}

// Random changes, scanned after random batches of them with the
// directories their events would name; each scan is compared with a full
// one.
func TestScanDirtyRandomChanges(t *testing.T) {
	h := newDirtyHarness(t)
	rng := rand.New(rand.NewPCG(7, 9))
	dirs := []string{""}
	for i := range 6 {
		d := fmt.Sprintf("d%d", i)
		h.must(os.Mkdir(h.p(d), 0o755))
		dirs = append(dirs, d)
		for j := range 3 {
			h.write(fmt.Sprintf("%s/f%d", d, j), fmt.Sprint(i, j))
		}
	}
	h.last = h.full().cache
	existingDirs := func() []string {
		var out []string
		for _, d := range dirs {
			if fi, err := os.Lstat(h.p(d)); err == nil && fi.IsDir() {
				out = append(out, d)
			}
		}
		return out
	}
	join := func(d, n string) string {
		if d == "" {
			return n
		}
		return d + "/" + n
	}
	incremental, full := 0, 0
	for round := range 120 {
		dirty := map[string]bool{}
		for range 1 + rng.IntN(3) {
			ds := existingDirs()
			d := ds[rng.IntN(len(ds))]
			name := join(d, fmt.Sprintf("e%d", rng.IntN(5)))
			fi, err := os.Lstat(h.p(name))
			switch op := rng.IntN(6); {
			case err != nil && op < 3: // create a file
				h.write(name, fmt.Sprint(round))
				dirty[d] = true
			case err != nil: // create a directory with a file
				h.must(os.Mkdir(h.p(name), 0o755))
				h.write(join(name, "in"), fmt.Sprint(round))
				dirs = append(dirs, name)
				dirty[d] = true
			case fi.IsDir() && op == 0: // remove it and what is below
				h.must(os.RemoveAll(h.p(name)))
				dirty[d] = true
			case fi.IsDir() && op == 1: // mode
				h.must(os.Chmod(h.p(name), os.FileMode(0o700+rng.IntN(2)*0o55)))
				dirty[d], dirty[name] = true, true
			case fi.IsDir() && op == 2: // move it into another directory
				to := ds[rng.IntN(len(ds))]
				dst := join(to, fmt.Sprintf("m%d", round))
				if strings.HasPrefix(dst+"/", name+"/") {
					continue
				}
				h.must(os.Rename(h.p(name), h.p(dst)))
				dirs = append(dirs, dst)
				dirty[d], dirty[to] = true, true
			case fi.IsDir(): // a file inside
				h.write(join(name, fmt.Sprintf("g%d", rng.IntN(3))), fmt.Sprint(round))
				dirty[name] = true
			case op < 3: // rewrite the file
				h.write(name, fmt.Sprint(round, "x"))
				dirty[d] = true
			case op < 5: // remove it
				h.must(os.Remove(h.p(name)))
				dirty[d] = true
			default: // a symlink in its place
				h.must(os.Remove(h.p(name)))
				h.must(os.Symlink(fmt.Sprint("t", round), h.p(name)))
				dirty[d] = true
			}
		}
		var list []string
		for d := range dirty {
			list = append(list, d)
		}
		if h.step(fmt.Sprintf("round %d", round), list...) {
			incremental++
		} else {
			full++
		}
	}
	t.Logf("%d incremental scans, %d full", incremental, full)
	if incremental < 60 {
		t.Fatalf("only %d of 120 scans were incremental", incremental)
	}
}
