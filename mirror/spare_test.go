package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// spareOf is the spare's directory (OUT/.zsnd/T/spare/NAME), or "".
func spareOf(t *testing.T, out, tree string) string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(out, ".zsnd", tree, "spare"))
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(es) > 1 {
		t.Fatalf("spare/ holds %d entries", len(es))
	}
	if len(es) == 0 {
		return ""
	}
	return filepath.Join(out, ".zsnd", tree, "spare", es[0].Name())
}

// numberedFiles writes files d<i%dirs>/f<i> of at least min bytes each.
func numberedFiles(t *testing.T, dir string, n, dirs, min int) {
	t.Helper()
	for i := 0; i < n; i++ {
		write(t, filepath.Join(dir, fmt.Sprintf("d%d/f%02d", i%dirs, i)), strings.Repeat(fmt.Sprint(i), min+i), 0o644)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A version built from the recycled spare is exactly the version, through
// every kind of change between versions, and only what changed is
// touched: the files left in place are the spare's very inodes.
func TestRecycleSpareEveryChange(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	numberedFiles(t, src, 30, 3, 100)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	later := time.Unix(1700000000, 5)
	changes := []func(){
		func() {},
		func() { write(t, filepath.Join(src, "d0/f00"), "changed", 0o644) },
		func() {
			os.Remove(filepath.Join(src, "d1/f01"))
			write(t, filepath.Join(src, "new/added"), "added", 0o600)
		},
		func() { // file -> directory, directory -> file
			os.Remove(filepath.Join(src, "a.conf"))
			write(t, filepath.Join(src, "a.conf/inner"), "inner", 0o644)
			os.RemoveAll(filepath.Join(src, "deep"))
			write(t, filepath.Join(src, "deep"), "was a directory", 0o644)
		},
		func() { // symlink retargeted, symlink -> file, file -> symlink
			os.Remove(filepath.Join(src, "rel-link"))
			os.Symlink("d0/f03", filepath.Join(src, "rel-link"))
			os.Remove(filepath.Join(src, "abs-link"))
			write(t, filepath.Join(src, "abs-link"), "now a file", 0o644)
			os.Remove(filepath.Join(src, "d2/f05"))
			os.Symlink("../d0/f03", filepath.Join(src, "d2/f05"))
		},
		func() { // modes and times only; an empty directory added, one removed
			os.Chmod(filepath.Join(src, "d0/f06"), 0o600)
			os.Chtimes(filepath.Join(src, "d1/f07"), later, later)
			os.Chmod(filepath.Join(src, "d2"), 0o700)
			os.MkdirAll(filepath.Join(src, "empty2"), 0o755)
			os.Remove(filepath.Join(src, "emptydir"))
		},
		func() { // a change inside a read-only directory
			os.Chmod(filepath.Join(src, "d1"), 0o755)
			write(t, filepath.Join(src, "d1/f10"), "in a read-only directory", 0o644)
			os.Chmod(filepath.Join(src, "d1"), 0o555)
		},
		func() { os.Chmod(filepath.Join(src, "d1"), 0o755); write(t, filepath.Join(src, "d1/f13"), "", 0o644) },
		func() { os.RemoveAll(filepath.Join(src, "d2")) },
		func() { write(t, filepath.Join(src, "d0/f00"), "changed again", 0o644) },
	}
	recycled := 0
	for i, change := range changes {
		change()
		publish(t, s, "app", src, uint64(i+1))
		spare := spareOf(t, out, "app")
		var keptInode uint64
		if spare != "" {
			keptInode = inode(t, filepath.Join(spare, "d0/f09")) // never changed
		}
		res := syncOK(t, cfg)
		sameTree(t, src, filepath.Join(out, "app"))
		if spare == "" {
			if res.Recycled != "" {
				t.Fatalf("version %d: recycled %q with no spare", i+1, res.Recycled)
			}
			continue
		}
		recycled++
		if res.Recycled != filepath.Base(spare) || res.FilesRecycled == 0 {
			t.Fatalf("version %d: spare %s not recycled: %+v", i+1, spare, res)
		}
		if got := inode(t, filepath.Join(out, "app", "d0/f09")); got != keptInode {
			t.Errorf("version %d: an unchanged file of the spare was replaced (inode %d, was %d)", i+1, got, keptInode)
		}
		if vs := entries(t, filepath.Join(out, ".zsnd/app/v")); len(vs) != 2 {
			t.Errorf("version %d: v/ holds %v, want 2 versions", i+1, vs)
		}
	}
	if recycled < len(changes)-3 {
		t.Errorf("recycled %d times in %d syncs", recycled, len(changes))
	}
	// The spare is no version: rollback goes to the previous kept one.
	prev, err := Rollback(out, "app")
	if err != nil || strings.Contains(prev, "spare") {
		t.Fatalf("rollback: %q, %v", prev, err)
	}
}

// recycleSetup syncs three versions (keep 2), so that the spare holds the
// first; it returns the source, the output and the spare's directory.
func recycleSetup(t *testing.T) (*syncSetup, string) {
	t.Helper()
	st := &syncSetup{s: startServer(t), src: filepath.Join(t.TempDir(), "app"), out: t.TempDir()}
	numberedFiles(t, st.src, 20, 4, 1000)
	st.cfg = testConfig(st.s, st.out, "app")
	var mu sync.Mutex
	st.cfg.Events = func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		if e.Kind == EventNote || e.Kind == EventDrift {
			st.notes = append(st.notes, string(e.Kind)+" "+e.Path+" "+e.Message)
		}
	}
	for i := 1; i <= 3; i++ {
		write(t, filepath.Join(st.src, "d0/f00"), fmt.Sprint("version ", i), 0o644)
		publish(t, st.s, "app", st.src, uint64(i))
		syncOK(t, st.cfg)
	}
	spare := spareOf(t, st.out, "app")
	if spare == "" {
		t.Fatal("no spare after three versions")
	}
	st.notes = nil
	return st, spare
}

type syncSetup struct {
	s     *treetest.Server
	src   string
	out   string
	cfg   Config
	notes []string
}

// A spare changed by hand (or by anything else) is never taken as it
// claims to be: the version built from it is still exactly the version.
func TestRecycleTamperedSpare(t *testing.T) {
	outside := t.TempDir()
	write(t, filepath.Join(outside, "f01"), "outside", 0o644)
	cases := []struct {
		name     string
		tamper   func(t *testing.T, spare string)
		fallback bool     // verify must have found it (else the diff alone repairs it)
		drift    []string // drift events expected
	}{
		{"extra file", func(t *testing.T, sp string) { write(t, filepath.Join(sp, "d1/extra"), "x", 0o644) }, true, nil},
		{"missing file", func(t *testing.T, sp string) { os.Remove(filepath.Join(sp, "d2/f02")) }, true, nil},
		{"replaced file, same size and mtime", func(t *testing.T, sp string) {
			p := filepath.Join(sp, "d3/f03")
			fi, _ := os.Stat(p)
			tmp := p + ".tmp"
			write(t, tmp, strings.Repeat("Z", int(fi.Size())), 0o644)
			os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}, true, nil},
		{"edited in place, shared with the current version", func(t *testing.T, sp string) {
			p := filepath.Join(sp, "d1/f05")
			fi, _ := os.Stat(p)
			if err := os.WriteFile(p, []byte(strings.Repeat("Z", int(fi.Size()))), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}, true, []string{"d1/f05"}},
		{"directory replaced by a symlink out of the tree", func(t *testing.T, sp string) {
			os.RemoveAll(filepath.Join(sp, "d1"))
			if err := os.Symlink(outside, filepath.Join(sp, "d1")); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
		{"mode changed", func(t *testing.T, sp string) { os.Chmod(filepath.Join(sp, "d2/f06"), 0o600) }, true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, spare := recycleSetup(t)
			c.tamper(t, spare)
			write(t, filepath.Join(st.src, "d1/f01"), "version 4", 0o644) // the change of version 4
			publish(t, st.s, "app", st.src, 4)
			res := syncOK(t, st.cfg)
			sameTree(t, st.src, filepath.Join(st.out, "app"))
			if res.Recycled == "" {
				t.Errorf("spare not recycled: %+v", res)
			}
			fell := slices.ContainsFunc(st.notes, func(n string) bool { return strings.Contains(n, "entry by entry") })
			if c.fallback && !fell {
				t.Errorf("no fallback to reconciling; notes %q", st.notes)
			}
			if !slices.Equal(res.Drift, c.drift) {
				t.Errorf("drift %q, want %q", res.Drift, c.drift)
			}
			if b, err := os.ReadFile(filepath.Join(outside, "f01")); err != nil || string(b) != "outside" {
				t.Errorf("wrote outside the tree: %q, %v", b, err)
			}
			if es := entries(t, outside); len(es) != 1 {
				t.Errorf("outside directory holds %v", es)
			}
		})
	}
}

// A version's directory, once opened, shows that version unchanged until
// it is pruned and then recycled: recycling takes only the spare. With
// Keep 2, the version shown now is kept at the next switch and is the
// spare after the one after; both syncs recycle.
func TestOpenVersionUnchangedUntilRecycled(t *testing.T) {
	st, _ := recycleSetup(t)
	dir, err := filepath.EvalSymlinks(filepath.Join(st.out, "app"))
	if err != nil {
		t.Fatal(err)
	}
	before := listing(t, dir)
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := 4; i <= 5; i++ {
		for k := 0; k < 20; k += 3 {
			write(t, filepath.Join(st.src, fmt.Sprintf("d%d/f%02d", k%4, k)), fmt.Sprint("v", i, "-", k), 0o644)
		}
		publish(t, st.s, "app", st.src, uint64(i))
		if res := syncOK(t, st.cfg); res.Recycled == "" {
			t.Errorf("version %d: nothing recycled", i)
		}
	}
	if got := listing(t, "/proc/self/fd/"+fmt.Sprint(d.Fd())); !slices.Equal(got, before) {
		t.Errorf("an open kept version changed:\n%q\n%q", before, got)
	}
}

// With WarmSpares (follow mode), the first sync leaves copies of the
// version as spares, so the next versions are recycled too; what is left
// in place is vouched for by the stat cache, not read again.
func TestWarmSpares(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	numberedFiles(t, src, 20, 4, 1000)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	cfg.WarmSpares = true
	var notes []string
	cfg.Events = func(e Event) {
		if e.Kind == EventNote {
			notes = append(notes, e.Message)
		}
	}
	publish(t, s, "app", src, 1)
	first := syncOK(t, cfg)
	sp, err := os.ReadDir(filepath.Join(out, ".zsnd/app/spare"))
	if err != nil || len(sp) != 2 {
		t.Fatalf("spares after the first sync: %v, %v", sp, err)
	}
	for _, e := range sp {
		sameTree(t, first.Dir, filepath.Join(out, ".zsnd/app/spare", e.Name()))
	}
	for v := 2; v <= 5; v++ {
		write(t, filepath.Join(src, "d1/f01"), fmt.Sprint("version ", v), 0o644)
		publish(t, s, "app", src, uint64(v))
		res := syncOK(t, cfg)
		sameTree(t, src, filepath.Join(out, "app"))
		if res.Recycled == "" || res.FilesFetched != 1 {
			t.Errorf("version %d: recycled %q, fetched %d", v, res.Recycled, res.FilesFetched)
		}
		if n := len(spareList(t, out)); n > 2 {
			t.Errorf("version %d: %d spares", v, n)
		}
	}
	if len(notes) != 0 {
		t.Errorf("notes (a fallback or a failed copy): %q", notes)
	}
	// The copies' stat cache records vouch for the files: in-place edits
	// of a shared inode are still found (drift), never trusted.
	p := filepath.Join(out, "app", "d2/f02")
	fi, _ := os.Stat(p)
	if err := os.WriteFile(p, []byte(strings.Repeat("Z", int(fi.Size()))), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	write(t, filepath.Join(src, "d1/f01"), "version 6", 0o644)
	publish(t, s, "app", src, 6)
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if !slices.Contains(res.Drift, "d2/f02") {
		t.Errorf("in-place edit not reported as drift: %+v", res)
	}
}

func spareList(t *testing.T, out string) []string {
	t.Helper()
	es, _ := os.ReadDir(filepath.Join(out, ".zsnd/app/spare"))
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

// Config.Listed (follow mode: the version the server just announced) is
// taken instead of a LIST; a version gone meanwhile makes the retry list.
func TestListedHintSkipsList(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	v1 := publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	info := func(v *treetest.Version) *receiver.TreeInfo {
		return &receiver.TreeInfo{Name: "app", Seq: v.Seq, Version: protocol.Hash(v.ID), Entries: v.Entries, Bytes: v.Bytes, ManifestSize: uint64(len(v.Manifest))}
	}
	cfg.Listed = info(v1)
	before := s.Lists.Load()
	syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if n := s.Lists.Load() - before; n != 0 {
		t.Errorf("%d LISTs with the version announced", n)
	}
	// Announced v2, but v3 replaced it before the fetch: 410, then LIST.
	write(t, filepath.Join(src, "a.conf"), "v2", 0o644)
	v2 := publish(t, s, "app", src, 2)
	write(t, filepath.Join(src, "a.conf"), "v3", 0o644)
	publish(t, s, "app", src, 3)
	s.DropAllBut("app") // v2 gone from the server
	cfg.Listed = info(v2)
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if res.Seq != 3 || s.Lists.Load()-before != 1 {
		t.Errorf("after a gone version: seq %d, %d LISTs", res.Seq, s.Lists.Load()-before)
	}
}
