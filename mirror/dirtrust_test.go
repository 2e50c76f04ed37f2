package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// listedDuring returns the directories the checks of fn read (getdents).
func listedDuring(fn func()) []string {
	var mu sync.Mutex
	var got []string
	testHookListed = func(p string) { mu.Lock(); got = append(got, p); mu.Unlock() }
	defer func() { testHookListed = nil }()
	fn()
	slices.Sort(got)
	return slices.Compact(got)
}

// TestUnchangedDirectoriesNotRead: a directory whose inode and ctime are
// those recorded when it held exactly the version's names is not read
// again; its children are looked at by name. A name added to it (drift,
// or a planted file in the staged tree) changes its ctime, and it is read
// and repaired.
func TestUnchangedDirectoriesNotRead(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	for d := range 5 {
		for f := range 3 {
			write(t, filepath.Join(src, fmt.Sprintf("d%d/f%d", d, f)), fmt.Sprint(d, f), 0o644)
		}
	}
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	cfg.Keep = 2
	syncOK(t, cfg)
	time.Sleep(20 * time.Millisecond) // past the fence of the first check's records
	syncOK(t, cfg)                    // records what the first sync's fence left out
	time.Sleep(20 * time.Millisecond)
	var res Result
	if got := listedDuring(func() { res = syncOK(t, cfg) }); len(got) != 0 || !res.Unchanged {
		t.Fatalf("a sync with nothing changed read %q, unchanged %v", got, res.Unchanged)
	}

	// Drift: a file planted in d2 of the current version, and d2's
	// mtime put back (its ctime cannot be).
	cur := filepath.Join(out, "app")
	fi, err := os.Stat(filepath.Join(cur, "d2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cur, "d2/planted"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(cur, "d2"), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if got := listedDuring(func() { res = syncOK(t, cfg) }); !slices.Contains(got, "d2") || !res.Repaired {
		t.Fatalf("after a file was planted in d2, the sync read %q, repaired %v", got, res.Repaired)
	}
	if _, err := os.Lstat(filepath.Join(cur, "d2/planted")); err == nil {
		t.Fatal("the planted file is still in the current version")
	}
	sameTree(t, src, cur)

	// New versions, staged from the recycled spare: a directory the
	// versions do not change is not read; d1, which changes, is. (The
	// first spares are copies made after the first sync, with
	// directories of their own, and a directory changed in the same
	// clock tick as a check's fence is not recorded by it: such
	// directories are read, and recorded then.)
	for seq := uint64(2); seq <= 8; seq++ {
		write(t, filepath.Join(src, "d1/f0"), fmt.Sprint("v", seq), 0o644)
		publish(t, s, "app", src, seq)
		time.Sleep(20 * time.Millisecond)
		got := listedDuring(func() { res = syncOK(t, cfg) })
		sameTree(t, src, cur)
		if seq >= 7 && (slices.Contains(got, "d3") || !slices.Contains(got, "d1")) {
			t.Fatalf("version %d (recycled %q): the check read %q; want d1 and not d3", seq, res.Recycled, got)
		}
	}
	if res.Recycled == "" {
		t.Fatal("no spare was recycled")
	}

	// A file planted in the spare (as a staged tree from an earlier run
	// could hold): its directory is read and the version is still exact.
	spares, _ := filepath.Glob(filepath.Join(out, ".zsnd", "app", "spare", "*"))
	if len(spares) == 0 {
		t.Fatal("no spare to plant a file in")
	}
	fi, err = os.Stat(filepath.Join(spares[0], "d3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spares[0], "d3", "planted"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(spares[0], "d3"), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(src, "d1/f0"), "v7", 0o644)
	publish(t, s, "app", src, 9)
	syncOK(t, cfg)
	sameTree(t, src, cur)
}
