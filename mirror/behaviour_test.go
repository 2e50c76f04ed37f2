package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
)

func TestDeltaDriftRollback(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	for i := 0; i < 20; i++ {
		write(t, filepath.Join(src, "many", fmt.Sprintf("f%02d", i)), strings.Repeat("x", 1000*i), 0o644)
	}
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	first := syncOK(t, cfg)

	// One file changed, one added, one removed, one only touched (mtime).
	write(t, filepath.Join(src, "a.conf"), "alpha v2\n", 0o644)
	write(t, filepath.Join(src, "new.txt"), "new\n", 0o644)
	os.Remove(filepath.Join(src, "sub dir/empty"))
	later := time.Unix(1700000000, 123456789)
	os.Chtimes(filepath.Join(src, "many/f01"), later, later)
	publish(t, s, "app", src, 2)
	before := s.DataBytes.Load()
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if res.FilesFetched != 2 || res.Previous != first.Dir {
		t.Errorf("delta sync: fetched %d files (want 2: changed and added), previous %q: %+v", res.FilesFetched, res.Previous, res)
	}
	if got := s.DataBytes.Load() - before - res.ManifestBytes; got != int64(len("alpha v2\n")+len("new\n")) {
		t.Errorf("delta sync sent %d data bytes", got)
	}
	// The first version is still intact (hard links were not modified by
	// the mtime change: that file was copied).
	if st, err := os.Stat(filepath.Join(first.Dir, "many/f01")); err != nil || st.ModTime().Equal(later) {
		t.Errorf("old version's file changed: %v", err)
	}

	// Drift: edit the current version by hand; the unchanged version is
	// found drifted and repaired.
	cur := filepath.Join(out, "app")
	if err := os.WriteFile(filepath.Join(cur, "deep/x/y/z.bin"), []byte("edited by hand"), 0o640); err != nil {
		t.Fatal(err)
	}
	var drift []string
	cfg.Events = func(e Event) {
		if e.Kind == EventDrift {
			drift = append(drift, e.Path)
		}
	}
	res = syncOK(t, cfg)
	if !res.Repaired || len(drift) == 0 || drift[0] != "deep/x/y/z.bin" || res.FilesFetched != 1 {
		t.Errorf("drift: events %v, result %+v", drift, res)
	}
	sameTree(t, src, cur)

	// Drift seen by a new version: an edit keeping size and mtime is
	// invisible to the quick check, but reuse re-hashes.
	p := filepath.Join(cur, "many/f02")
	st, _ := os.Stat(p)
	os.WriteFile(p, []byte(strings.Repeat("y", int(st.Size()))), 0o644)
	os.Chtimes(p, st.ModTime(), st.ModTime())
	write(t, filepath.Join(src, "new2.txt"), "new2\n", 0o644)
	publish(t, s, "app", src, 3)
	drift = nil
	res = syncOK(t, cfg)
	if len(drift) != 1 || drift[0] != "many/f02" || res.FilesFetched != 2 {
		t.Errorf("drift at a new version: events %v, fetched %d", drift, res.FilesFetched)
	}
	sameTree(t, src, cur)

	// Keep 2: the first version was pruned.
	if _, err := os.Stat(first.Dir); !os.IsNotExist(err) {
		t.Errorf("version beyond --keep not pruned: %v", err)
	}
	// Rollback: no network, back to seq 2.
	s.Close()
	dir, err := Rollback(out, "app")
	if err != nil || !strings.Contains(dir, "00000000000000000002-") {
		t.Fatalf("rollback: %q %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(cur, "new2.txt")); !os.IsNotExist(err) {
		t.Errorf("rolled back version shows new2.txt")
	}
	if _, err := Rollback(out, "app"); !errors.Is(err, ErrNoPrevious) {
		t.Errorf("second rollback: %v, want ErrNoPrevious", err)
	}
}

func TestFirstSyncIntoPlainDirectory(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 7)
	out := t.TempDir()
	write(t, filepath.Join(out, "app/old.conf"), "old", 0o644)
	res := syncOK(t, testConfig(s, out, "app"))
	sameTree(t, src, filepath.Join(out, "app"))
	if b, err := os.ReadFile(filepath.Join(out, ".zsnd/app/v", preexisting, "old.conf")); err != nil || string(b) != "old" {
		t.Errorf("preexisting directory not kept: %v", err)
	}
	if fi, _ := os.Lstat(filepath.Join(out, "app")); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("stable path is not a symlink")
	}
	if _, err := Rollback(out, "app"); err != nil {
		t.Fatalf("rollback to the preexisting directory: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "app/old.conf")); err != nil || string(b) != "old" {
		t.Errorf("after rollback: %q %v", b, err)
	}
	_ = res
}

func TestGoneMovesToLatest(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	// While the first VGET is served, a new version is published and the
	// old one dropped: the rest of the fetch gets 410 and the sync moves on.
	once := true
	s.Hook = func(name string) {
		if once {
			once = false
			write(t, filepath.Join(src, "a.conf"), "changed meanwhile\n", 0o644)
			publish(t, s, "app", src, 2)
			s.DropAllBut("app")
		}
	}
	res := syncOK(t, cfg)
	if res.Seq != 2 {
		t.Errorf("synced seq %d, want 2", res.Seq)
	}
	sameTree(t, src, filepath.Join(out, "app"))
}

func TestLockedTree(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	l, err := openLayout(out, "app", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := testConfig(s, out, "app")
	if _, err := Sync(ctx, cfg); !errors.Is(err, ErrLocked) {
		t.Errorf("sync of a locked tree: %v, want ErrLocked", err)
	}
	cfg.LockWait = 5 * time.Second
	go func() { time.Sleep(300 * time.Millisecond); l.close() }()
	if _, err := Sync(ctx, cfg); err != nil {
		t.Errorf("sync waiting for the lock: %v", err)
	}
}

// After a rollback, a sync returns to the latest version from its kept
// copy, fetching nothing; a version directory removed by hand is rebuilt.
func TestSyncAfterRollbackAndRemovedVersion(t *testing.T) {
	s, src, out, cfg, _ := syncedApp(t)
	write(t, filepath.Join(src, "a.conf"), "v2\n", 0o644)
	publish(t, s, "app", src, 2)
	latest := syncOK(t, cfg)
	if _, err := Rollback(out, "app"); err != nil {
		t.Fatal(err)
	}
	res := syncOK(t, cfg)
	if res.Dir != latest.Dir || res.FilesFetched != 0 || res.FilesReused != res.Files {
		t.Errorf("sync after rollback: %+v", res)
	}
	sameTree(t, src, filepath.Join(out, "app"))

	// The current version's directory removed by hand.
	if err := removeAllPath(latest.Dir); err != nil {
		t.Fatal(err)
	}
	res = syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if res.FilesFetched == 0 {
		t.Errorf("nothing fetched to rebuild a removed version: %+v", res)
	}
}

func removeAllPath(p string) error {
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return removeAllAt(int(d.Fd()), filepath.Base(p))
}

// A partial file left by an interrupted fetch of a file that the next run
// reuses instead is removed, not left in the version.
func TestStalePartialOfReusedFile(t *testing.T) {
	s, src, out, cfg, _ := syncedApp(t)
	write(t, filepath.Join(src, "new.txt"), "new", 0o644)
	publish(t, s, "app", src, 2)
	stage := filepath.Join(out, ".zsnd/app/stage/app/deep/x/y")
	os.MkdirAll(stage, 0o700)
	part, state := receiver.PartialPaths(filepath.Join(stage, "z.bin"))
	write(t, part, "half", 0o600)
	write(t, state, "{}", 0o600)
	syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
}

// Unchanged files are hard links to the current version's. An edit that
// keeps size and mtime is found by the quick check through the stat cache
// (its inode or ctime changed), and, without a stat cache, by Verify.
func TestHardLinksAndVerify(t *testing.T) {
	s, src, out, cfg, first := syncedApp(t)
	write(t, filepath.Join(src, "new.txt"), "new", 0o644)
	publish(t, s, "app", src, 2)
	second := syncOK(t, cfg)
	a, err1 := os.Stat(filepath.Join(first.Dir, "deep/x/y/z.bin"))
	b, err2 := os.Stat(filepath.Join(second.Dir, "deep/x/y/z.bin"))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Errorf("unchanged file not hard-linked between versions (%v %v)", err1, err2)
	}

	edit := func() {
		t.Helper()
		p := filepath.Join(out, "app/deep/x/y/z.bin")
		st, _ := os.Stat(p)
		// Replace by rename, so the older version keeps its content.
		tmp := filepath.Join(out, "app/deep/x/y/tmp")
		os.WriteFile(tmp, []byte(strings.Repeat("Z", int(st.Size()))), 0o640)
		os.Chtimes(tmp, st.ModTime(), st.ModTime())
		os.Rename(tmp, p)
		os.Chtimes(filepath.Dir(p), time.Unix(0, 1), time.Unix(0, 1)) // the directory's mtime changed too; restore it below
		src1, _ := os.Stat(filepath.Join(src, "deep/x/y"))
		os.Chtimes(filepath.Dir(p), src1.ModTime(), src1.ModTime())
	}
	var drift []string
	cfg.Events = func(e Event) {
		if e.Kind == EventDrift {
			drift = append(drift, e.Path)
		}
	}
	time.Sleep(20 * time.Millisecond) // past the stat cache's fence (one clock tick)
	edit()
	if res := syncOK(t, cfg); !res.Repaired || len(drift) != 1 || drift[0] != "deep/x/y/z.bin" {
		t.Errorf("quick check with the stat cache: drift %v, %+v", drift, res)
	}
	sameTree(t, src, filepath.Join(out, "app"))

	// Without the stat cache the quick check compares size and mtime
	// only; --verify hashes everything.
	os.RemoveAll(filepath.Join(out, ".zsnd/app/s"))
	edit()
	drift = nil
	if res := syncOK(t, cfg); !res.Unchanged {
		t.Errorf("quick check without stat cache saw an edit that kept size and mtime: %+v", res)
	}
	cfg.Verify = true
	res := syncOK(t, cfg)
	if !res.Repaired || len(drift) != 1 || drift[0] != "deep/x/y/z.bin" {
		t.Errorf("--verify: drift %v, %+v", drift, res)
	}
	sameTree(t, src, filepath.Join(out, "app"))
}

// A large file whose fetch was interrupted is resumed from its partial
// file by the next sync (reconcile keeps .zrecv-HASH.part and .state
// beside a file still to fetch), not fetched again from the start.
func TestInterruptedFetchResumed(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>11)
	}
	if err := os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg.Events = func(e Event) {
		if e.Kind == EventProgress && e.BytesDone > 3<<20 {
			cancel()
		}
	}
	if _, err := Sync(ctx, cfg); err == nil {
		t.Fatal("the interrupted sync succeeded")
	}
	part, _ := receiver.PartialPaths(filepath.Join(out, ".zsnd/app/stage/app/big.bin"))
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("no partial file left: %v", err)
	}
	cfg.Events = nil
	before := s.DataBytes.Load()
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if sent := s.DataBytes.Load() - before - res.ManifestBytes; sent > int64(len(big))-(1<<20) {
		t.Errorf("resumed sync received %d bytes of data; the partial file held %d of the %d", sent, fi.Size(), len(big))
	}
}

// Fetched files are written in the staging tree under their own names
// (receiver.Request.Private), so a crash can leave one there partly
// written: after a crash on ext4 even at its full size, with zeros where
// its data never reached the disk, and with the version's mode and
// mtime. The next sync must not take it by its name or its metadata: it
// is hashed, found wrong, and fetched again.
func TestCrashedStagedFileNotTrusted(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	stage := filepath.Join(out, ".zsnd/app/stage/app")
	want := "alpha\n"
	fi, err := os.Stat(filepath.Join(src, "a.conf"))
	if err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(stage, "a.conf")
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, planted, strings.Repeat("\x00", len(want)), 0o644)
	if err := os.Chtimes(planted, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	res := syncOK(t, testConfig(s, out, "app"))
	sameTree(t, src, filepath.Join(out, "app"))
	if b, err := os.ReadFile(filepath.Join(out, "app/a.conf")); err != nil || string(b) != want {
		t.Fatalf("a.conf: %q %v", b, err)
	}
	if res.FilesFetched != 5 {
		t.Errorf("the planted copy was not fetched again: %+v", res)
	}
}
