package mirror

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// checkTree is a tree for the check tests: smallTree plus enough
// directories and files for several workers to share them.
func checkTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "app")
	smallTree(t, dir)
	for d := range 12 {
		for f := range 5 {
			write(t, filepath.Join(dir, fmt.Sprintf("d%02d/f%d", d, f)), strings.Repeat("x", d*100+f), 0o644)
		}
		os.Symlink(fmt.Sprintf("f%d", d%5), filepath.Join(dir, fmt.Sprintf("d%02d/l", d)))
		os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%02d/sub/subsub", d)), 0o755)
		write(t, filepath.Join(dir, fmt.Sprintf("d%02d/sub/subsub/g", d)), "g", 0o600)
	}
	return dir
}

// scanned returns the manifest of dir as scanTree reads it (hashing every
// file), and a stat record of each file as a stat cache would hold it.
func scanned(t *testing.T, dir string) (*manifest.Manifest, []statRec) {
	t.Helper()
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	man, err := scanTree(root, true, 1<<20, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := man.Validate(); err != nil {
		t.Fatal(err)
	}
	stats := make([]statRec, len(man.Entries))
	for i, e := range man.Entries {
		if e.Type != manifest.TypeFile {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, e.Path), &st); err != nil {
			t.Fatal(err)
		}
		stats[i] = recOf(&st)
	}
	return man, stats
}

// oracle is what the check must find, computed the slow way: the tree
// read into a second manifest (scanTree) and merged with man, minus what
// is below an extra directory (the check reports the directory only).
func oracle(t *testing.T, dir string, man *manifest.Manifest, hash bool) []string {
	t.Helper()
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	got, err := scanTree(root, hash, 1<<20, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var drift, extra []string
	we, ge := man.Entries, got.Entries
	i, j := 0, 0
	for i < len(we) || j < len(ge) {
		switch {
		case j >= len(ge) || (i < len(we) && we[i].Path < ge[j].Path):
			drift = append(drift, we[i].Path)
			i++
		case i >= len(we) || ge[j].Path < we[i].Path:
			drift = append(drift, ge[j].Path)
			extra = append(extra, ge[j].Path)
			j++
		default:
			a, b := we[i], ge[j]
			if !hash {
				b.Hash = a.Hash
			}
			if a != b {
				drift = append(drift, a.Path)
			}
			i++
			j++
		}
	}
	return slices.DeleteFunc(drift, func(p string) bool {
		for _, x := range extra {
			if strings.HasPrefix(p, x+"/") {
				return true
			}
		}
		return false
	})
}

// checkWith runs syncer.check on dir with n workers.
func checkWith(t *testing.T, n int, dir string, man *manifest.Manifest, hash bool, stats []statRec) []string {
	t.Helper()
	defer useWorkers(n)()
	out := t.TempDir()
	l, err := openLayout(out, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	s := &syncer{cfg: &Config{Tree: "app"}, l: l, res: &Result{}}
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	drift, err := s.check(root, man, hash, stats, "v", man.ID())
	if err != nil {
		t.Fatalf("check with %d workers: %v", n, err)
	}
	return drift
}

var workerCounts = []int{1, 2, 3, 8}

// useWorkers makes forRuns use n goroutines, whatever GOMAXPROCS is, until
// the function it returns is called.
func useWorkers(n int) (restore func()) {
	oldW, oldP := fsWorkers, procs
	fsWorkers, procs = n, func() int { return n }
	return func() { fsWorkers, procs = oldW, oldP }
}

// touchBack puts the mtime of each of the paths (relative to dir, not
// followed) back to what man says, so only the change made is a change.
func touchBack(t *testing.T, dir string, man *manifest.Manifest, paths ...string) {
	t.Helper()
	for _, p := range paths {
		e, ok := man.Lookup(p)
		if !ok {
			t.Fatalf("%q not in the manifest", p)
		}
		ts := []unix.Timespec{unix.NsecToTimespec(e.MtimeNs), unix.NsecToTimespec(e.MtimeNs)}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, p), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// The check finds exactly what the old scan-and-merge found, whatever
// the number of workers: nothing on an intact tree, and each kind of
// change where it is.
func TestCheckFindsEveryChange(t *testing.T) {
	cases := []struct {
		name   string
		change func(t *testing.T, dir string, man *manifest.Manifest)
		want   []string // must be among the paths reported
	}{
		{"intact", func(*testing.T, string, *manifest.Manifest) {}, nil},
		{"extra file", func(t *testing.T, dir string, man *manifest.Manifest) {
			write(t, filepath.Join(dir, "d03/new"), "n", 0o644)
			touchBack(t, dir, man, "d03")
		}, []string{"d03/new"}},
		{"extra file at the root", func(t *testing.T, dir string, man *manifest.Manifest) {
			write(t, filepath.Join(dir, "zz"), "n", 0o644)
			touchBack(t, dir, man, "")
		}, []string{"zz"}},
		{"extra directory", func(t *testing.T, dir string, man *manifest.Manifest) {
			write(t, filepath.Join(dir, "d05/sub/more/x"), "n", 0o644)
			touchBack(t, dir, man, "d05/sub")
		}, []string{"d05/sub/more"}},
		{"changed mode", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.Chmod(filepath.Join(dir, "d07/f2"), 0o600)
		}, []string{"d07/f2"}},
		{"changed directory mode", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.Chmod(filepath.Join(dir, "d07/sub"), 0o700)
		}, []string{"d07/sub"}},
		{"changed mtime", func(t *testing.T, dir string, man *manifest.Manifest) {
			mt := time.Unix(1e9, 0)
			os.Chtimes(filepath.Join(dir, "d01/f1"), mt, mt)
		}, []string{"d01/f1"}},
		{"changed size", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.WriteFile(filepath.Join(dir, "d02/f3"), []byte("short"), 0o644)
			touchBack(t, dir, man, "d02/f3")
		}, []string{"d02/f3"}},
		{"changed symlink target", func(t *testing.T, dir string, man *manifest.Manifest) {
			p := filepath.Join(dir, "d04/l")
			os.Remove(p)
			os.Symlink("elsewhere", p)
			touchBack(t, dir, man, "d04", "d04/l")
		}, []string{"d04/l"}},
		{"missing file", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.Remove(filepath.Join(dir, "d09/f0"))
			touchBack(t, dir, man, "d09")
		}, []string{"d09/f0"}},
		{"missing directory", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.RemoveAll(filepath.Join(dir, "d10/sub"))
			touchBack(t, dir, man, "d10")
		}, []string{"d10/sub", "d10/sub/subsub", "d10/sub/subsub/g"}},
		{"directory replaced by a file", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.RemoveAll(filepath.Join(dir, "d06/sub"))
			write(t, filepath.Join(dir, "d06/sub"), "file now", 0o755)
			touchBack(t, dir, man, "d06", "d06/sub")
		}, []string{"d06/sub", "d06/sub/subsub", "d06/sub/subsub/g"}},
		{"file replaced by a directory", func(t *testing.T, dir string, man *manifest.Manifest) {
			os.Remove(filepath.Join(dir, "d08/f4"))
			os.Mkdir(filepath.Join(dir, "d08/f4"), 0o644)
			touchBack(t, dir, man, "d08", "d08/f4")
		}, []string{"d08/f4"}},
		{"file replaced by a symlink to an equal file", func(t *testing.T, dir string, man *manifest.Manifest) {
			p := filepath.Join(dir, "a.conf")
			os.Rename(p, filepath.Join(t.TempDir(), "a.conf"))
			same := filepath.Join(t.TempDir(), "same")
			os.WriteFile(same, []byte("alpha\n"), 0o644)
			os.Symlink(same, p)
			touchBack(t, dir, man, "", "a.conf")
		}, []string{"a.conf"}},
		{"directory replaced by a symlink to an equal copy", func(t *testing.T, dir string, man *manifest.Manifest) {
			// Followed, the copy would look intact.
			d := filepath.Join(dir, "d11")
			cp := filepath.Join(t.TempDir(), "d11")
			if err := os.Rename(d, cp); err != nil {
				t.Fatal(err)
			}
			os.Symlink(cp, d)
			touchBack(t, dir, man, "", "d11")
		}, []string{"d11", "d11/f0", "d11/sub", "d11/sub/subsub/g"}},
		{"symlink to a directory with more in it", func(t *testing.T, dir string, man *manifest.Manifest) {
			// dir-link -> deep/x: what is added there is below x, not
			// below the link.
			write(t, filepath.Join(dir, "deep/x/added"), "a", 0o644)
			touchBack(t, dir, man, "deep/x")
		}, []string{"deep/x/added"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := checkTree(t)
			man, _ := scanned(t, dir)
			tc.change(t, dir, man)
			want := oracle(t, dir, man, false)
			for _, p := range tc.want {
				if !slices.Contains(want, p) {
					t.Fatalf("test is wrong: the oracle does not report %q (it reports %q)", p, want)
				}
			}
			if tc.want == nil && len(want) != 0 {
				t.Fatalf("test is wrong: the oracle reports %q", want)
			}
			for _, n := range workerCounts {
				if got := checkWith(t, n, dir, man, false, nil); !slices.Equal(got, want) {
					t.Errorf("%d workers: drift %q, want %q", n, got, want)
				}
				// With hashes too (--verify): the same.
				if got := checkWith(t, n, dir, man, true, nil); !slices.Equal(got, want) {
					t.Errorf("%d workers, hashing: drift %q, want %q", n, got, want)
				}
			}
		})
	}
}

// A file edited in place, keeping its size and mtime, is found by its
// stat cache record (ctime changed: the file is hashed) and by --verify;
// without either, only type, mode, mtime and size are compared.
func TestCheckInPlaceEdit(t *testing.T) {
	dir := checkTree(t)
	man, stats := scanned(t, dir)
	time.Sleep(20 * time.Millisecond) // a later clock tick for the edit's ctime
	p := filepath.Join(dir, "d03/f4")
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("Y"), 10)
	f.Close()
	touchBack(t, dir, man, "d03/f4")
	for _, n := range workerCounts {
		if got := checkWith(t, n, dir, man, false, stats); !slices.Equal(got, []string{"d03/f4"}) {
			t.Errorf("%d workers, stat cache: drift %q", n, got)
		}
		if got := checkWith(t, n, dir, man, true, nil); !slices.Equal(got, []string{"d03/f4"}) {
			t.Errorf("%d workers, hashing: drift %q", n, got)
		}
		if got := checkWith(t, n, dir, man, false, nil); len(got) != 0 {
			t.Errorf("%d workers, no stat cache: drift %q (only metadata is compared)", n, got)
		}
	}
	// Records that match are trusted: the content is not read (a record
	// made after the edit hides it, which is what trusting means).
	_, fresh := scanned(t, dir)
	for _, n := range workerCounts {
		if got := checkWith(t, n, dir, man, false, fresh); len(got) != 0 {
			t.Errorf("%d workers, records made after the edit: drift %q", n, got)
		}
	}
}

// More extra entries than the version has entries stop the check with
// one "(entries added)" (what it collects stays bounded).
func TestCheckTooManyExtra(t *testing.T) {
	dir := checkTree(t)
	man, _ := scanned(t, dir)
	for i := range len(man.Entries) + 1 {
		write(t, filepath.Join(dir, fmt.Sprintf("d%02d/sub/extra%d", i%12, i)), "", 0o644)
	}
	for _, n := range workerCounts {
		if got := checkWith(t, n, dir, man, false, nil); !slices.Equal(got, []string{"(entries added)"}) {
			t.Errorf("%d workers: drift %q", n, got)
		}
	}
}

// A device, FIFO or socket where the version has a file is a difference
// to repair, not an error; one the version does not have is an extra.
func TestCheckSpecialFile(t *testing.T) {
	dir := checkTree(t)
	man, _ := scanned(t, dir)
	os.Remove(filepath.Join(dir, "d02/f0"))
	if err := unix.Mkfifo(filepath.Join(dir, "d02/f0"), 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	unix.Mkfifo(filepath.Join(dir, "d02/fifo"), 0o644)
	touchBack(t, dir, man, "d02", "d02/f0")
	for _, n := range workerCounts {
		if got := checkWith(t, n, dir, man, false, nil); !slices.Equal(got, []string{"d02/f0", "d02/fifo"}) {
			t.Errorf("%d workers: drift %q", n, got)
		}
	}
}

// The stat cache records check makes for files it hashed are the files'
// (and are saved only when nothing differs); verify stops at the first
// difference and says what it is.
func TestCheckRecordsAndVerifyDiff(t *testing.T) {
	dir := checkTree(t)
	man, stats := scanned(t, dir)
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, n := range workerCounts {
		restore := useWorkers(n)
		s := &syncer{cfg: &Config{Tree: "app"}, res: &Result{}}
		recs, err := s.verify(root, man, man.ID(), make([]placedRec, len(man.Entries)), nil)
		if err != nil {
			t.Fatalf("%d workers: verify: %v", fsWorkers, err)
		}
		for i := range man.Entries {
			if man.Entries[i].Type == manifest.TypeFile && recs[i] != stats[i] {
				t.Errorf("%d workers: record of %q: %+v, want %+v", fsWorkers, man.Entries[i].Path, recs[i], stats[i])
			}
		}
		restore()
	}
	os.Chmod(filepath.Join(dir, "d05/f1"), 0o600)
	s := &syncer{cfg: &Config{Tree: "app"}, res: &Result{}}
	_, err = s.verify(root, man, man.ID(), make([]placedRec, len(man.Entries)), nil)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "d05/f1") {
		t.Errorf("verify of a changed mode: %v", err)
	}
}

// newChildIndex lists each directory's children in manifest order, for
// names that sort around "/" too.
func TestChildIndex(t *testing.T) {
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Path: "", Type: manifest.TypeDir},
		{Path: "a", Type: manifest.TypeDir},
		{Path: "a-b", Type: manifest.TypeFile},
		{Path: "a.c", Type: manifest.TypeDir},
		{Path: "a.c/z", Type: manifest.TypeFile},
		{Path: "a/b", Type: manifest.TypeDir},
		{Path: "a/b/c", Type: manifest.TypeFile},
		{Path: "a/b0", Type: manifest.TypeFile},
		{Path: "a/c", Type: manifest.TypeFile},
		{Path: "b", Type: manifest.TypeFile},
	}}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	c := newChildIndex(m)
	want := map[string][]string{"": {"a", "a-b", "a.c", "b"}, "a": {"a/b", "a/b0", "a/c"}, "a.c": {"a.c/z"}, "a/b": {"a/b/c"}}
	for i, e := range m.Entries {
		var got []string
		for _, k := range c.of(i) {
			got = append(got, m.Entries[k].Path)
		}
		if !slices.Equal(got, want[e.Path]) {
			t.Errorf("children of %q: %q, want %q", e.Path, got, want[e.Path])
		}
	}
}

// forRuns never runs more goroutines than GOMAXPROCS allows (zrecv lowers
// it to 1 on a saturated machine) nor more than fsWorkers.
func TestForRunsBoundedByGOMAXPROCS(t *testing.T) {
	defer useWorkers(2)()
	for _, c := range []struct{ workers, procs, want int }{{2, 1, 1}, {2, 2, 2}, {8, 3, 3}, {1, 4, 1}, {3, 0, 1}} {
		fsWorkers, procs = c.workers, func() int { return c.procs }
		var made atomic.Int32
		var seen atomic.Int64
		forRuns(1000, 1, func() (func(lo, hi int), func()) {
			made.Add(1)
			return func(lo, hi int) { seen.Add(int64(hi - lo)) }, func() {}
		})
		if int(made.Load()) != c.want || seen.Load() != 1000 {
			t.Errorf("fsWorkers %d, GOMAXPROCS %d: %d goroutines covering %d indexes, want %d covering 1000", c.workers, c.procs, made.Load(), seen.Load(), c.want)
		}
	}
}
