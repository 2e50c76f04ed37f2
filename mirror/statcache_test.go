package mirror

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An in-place edit (same inode, same size, mtime put back) is invisible to
// a size and mtime comparison; the stat cache sees its ctime change, and
// the quick check hashes that file, finds the drift and repairs it.
func TestStatCacheSeesInPlaceEdit(t *testing.T) {
	_, src, out, cfg, _ := syncedApp(t)
	time.Sleep(20 * time.Millisecond) // past the cache's fence

	p := filepath.Join(out, "app/a.conf")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("ALPHA"), 0)
	f.Close()
	os.Chtimes(p, st.ModTime(), st.ModTime())

	var drift []string
	cfg.Events = func(e Event) {
		if e.Kind == EventDrift {
			drift = append(drift, e.Path)
		}
	}
	res := syncOK(t, cfg)
	if !res.Repaired || len(drift) != 1 || drift[0] != "a.conf" {
		t.Errorf("in-place edit: drift %v, %+v", drift, res)
	}
	sameTree(t, src, filepath.Join(out, "app"))
	if res := syncOK(t, cfg); !res.Unchanged {
		t.Errorf("after the repair: %+v", res)
	}
}

// The stat cache lets a sync reuse the current version's files without
// reading them; a file edited in place (ctime changed) is not trusted: it
// is hashed, found changed, and fetched.
func TestStatCacheReuseSkipsEditedFile(t *testing.T) {
	s, src, out, cfg, first := syncedApp(t)
	time.Sleep(20 * time.Millisecond)

	// Edit the big file of version 1 in place, keeping size and mtime.
	p := filepath.Join(out, "app/deep/x/y/z.bin")
	st, _ := os.Stat(p)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte(strings.Repeat("Q", 10)), 100)
	f.Close()
	os.Chtimes(p, st.ModTime(), st.ModTime())

	write(t, filepath.Join(src, "new.txt"), "new", 0o644)
	publish(t, s, "app", src, 2)
	var drift []string
	cfg.Events = func(e Event) {
		if e.Kind == EventDrift {
			drift = append(drift, e.Path)
		}
	}
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	if len(drift) != 1 || drift[0] != "deep/x/y/z.bin" || res.FilesFetched != 2 {
		t.Errorf("drift %v, %+v", drift, res)
	}
	// The untouched files were linked, not copied.
	a, _ := os.Stat(filepath.Join(first.Dir, "a.conf"))
	b, _ := os.Stat(filepath.Join(res.Dir, "a.conf"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("a.conf not hard-linked")
	}
}

// A cache that does not match (torn, for another version, or edited) is
// ignored, never trusted.
func TestStatCacheRejectsDamaged(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	v := publish(t, s, "app", src, 1)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	res := syncOK(t, cfg)
	l, err := openLayout(out, "app", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	name := filepath.Base(res.Dir)
	id := v.ID
	n := int(v.Entries)
	if recs := l.loadStats(name, id, n); recs == nil {
		t.Fatalf("no stat cache after a sync")
	}
	cp := filepath.Join(out, ".zsnd/app/s", name)
	b, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{b[:len(b)-1], append(append([]byte{}, b[:40]...), append([]byte{b[40] ^ 1}, b[41:]...)...)} {
		os.WriteFile(cp, bad, 0o600)
		if recs := l.loadStats(name, id, n); recs != nil {
			t.Errorf("damaged cache (%d bytes) accepted", len(bad))
		}
	}
	os.WriteFile(cp, b, 0o600)
	var other [32]byte
	if recs := l.loadStats(name, other, n); recs != nil {
		t.Errorf("cache of another version accepted")
	}
	// Entries whose ctime is not older than the fence are not recorded.
	time.Sleep(20 * time.Millisecond)
	w, err := l.newStatWriter("x")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Stat(cp, &st)
	recs := []statRec{recOf(&st), {dev: 1, ino: 2, size: 3, mtime: 4, ctime: w.fence}}
	if err := w.commit("x", id, recs); err != nil {
		t.Fatal(err)
	}
	got := l.loadStats("x", id, 2)
	if got == nil || got[0] != recs[0] || got[1].ino != 0 {
		t.Errorf("fence: %+v", got)
	}
}

// A staged file an interrupted run hard-linked from a kept version is not
// chmod-ed in place when the new version changes only its mode: the kept
// version's file keeps its mode.
func TestStagedHardLinkNotChmodded(t *testing.T) {
	s, src, out, cfg, first := syncedApp(t)
	stage := filepath.Join(out, ".zsnd/app/stage/app")
	if err := os.MkdirAll(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(first.Dir, "a.conf"), filepath.Join(stage, "a.conf")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(src, "a.conf"), 0o600)
	publish(t, s, "app", src, 2)
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	st, err := os.Stat(filepath.Join(first.Dir, "a.conf"))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("kept version's a.conf: %v %v", st.Mode(), err)
	}
	if st2, _ := os.Stat(filepath.Join(res.Dir, "a.conf")); st2 == nil || st2.Mode().Perm() != 0o600 {
		t.Errorf("new version's a.conf mode wrong")
	}
}

// verify compares the tree on disk with the version entry by entry: a
// changed, extra or missing entry is ErrMismatch; a file it may trust
// (placed: the inode it linked, with its ctime after the link) is not
// read, unless its ctime changed (an in-place edit, mtime put back).
func TestVerifyEntryByEntry(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "app")
	smallTree(t, dir)
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	man, err := scanTree(root, true, 1000, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &syncer{cfg: &Config{Tree: "app"}, res: &Result{}}
	id := man.ID()
	none := make([]placedRec, len(man.Entries))
	if _, err := s.verify(root, man, id, none, nil); err != nil {
		t.Fatalf("identical tree: %v", err)
	}
	p := filepath.Join(dir, "a.conf")
	i := indexOf(man, "a.conf")
	var st unix.Stat_t
	unix.Lstat(p, &st)
	placed := make([]placedRec, len(man.Entries))
	placed[i] = placedRec{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), ctime: statCtime(&st)}
	fi, _ := os.Stat(p)
	time.Sleep(20 * time.Millisecond) // a later clock tick for the edit's ctime
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("ALPHA"), 0)
	f.Close()
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if _, err := s.verify(root, man, id, placed, nil); !errors.Is(err, ErrMismatch) {
		t.Errorf("in-place edit of a placed file: %v", err)
	}
	os.WriteFile(p, []byte("alpha\n"), 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if _, err := s.verify(root, man, id, none, nil); err != nil {
		t.Fatalf("restored: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "extra"), nil, 0o644)
	rootMt := time.Unix(0, man.Entries[0].MtimeNs)
	os.Chtimes(dir, rootMt, rootMt)
	if _, err := s.verify(root, man, id, none, nil); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "extra") {
		t.Errorf("extra file: %v", err)
	}
	os.Remove(filepath.Join(dir, "extra"))
	os.Remove(filepath.Join(dir, "sub dir/empty"))
	for _, d := range []string{"", "sub dir"} {
		mt := time.Unix(0, man.Entries[indexOf(man, d)].MtimeNs)
		os.Chtimes(filepath.Join(dir, d), mt, mt)
	}
	if _, err := s.verify(root, man, id, none, nil); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

// restat keeps a file's record only while it is the same inode with the
// same size and mtime, and its new ctime is accepted; the rest are zeroed.
func TestRestat(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"same", "chmodded", "replaced", "grown", "gone"} {
		write(t, filepath.Join(dir, "d", n), "content of "+n, 0o644)
	}
	man, prev := scanned(t, dir)
	idx := func(p string) int {
		i := indexOf(man, p)
		if i < 0 {
			t.Fatalf("%s not scanned", p)
		}
		return i
	}
	time.Sleep(20 * time.Millisecond) // a later ctime tick
	os.Chmod(filepath.Join(dir, "d/chmodded"), 0o600)
	write(t, filepath.Join(dir, "d/replaced.tmp"), "content of replaced", 0o644)
	os.Rename(filepath.Join(dir, "d/replaced.tmp"), filepath.Join(dir, "d/replaced"))
	f, _ := os.OpenFile(filepath.Join(dir, "d/grown"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("more")
	f.Close()
	os.Remove(filepath.Join(dir, "d/gone"))
	root, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, ctimeMayChange := range []bool{false, true} {
		out := make([]statRec, len(prev))
		restat(root, man, prev, out, func(was, now *statRec) bool { return ctimeMayChange || now.ctime == was.ctime })
		if out[idx("d/same")] != prev[idx("d/same")] {
			t.Errorf("unchanged file: %+v, was %+v", out[idx("d/same")], prev[idx("d/same")])
		}
		if got := out[idx("d/chmodded")].ino != 0; got != ctimeMayChange {
			t.Errorf("chmodded file kept = %v with ctime accepted = %v", got, ctimeMayChange)
		}
		for _, p := range []string{"d/replaced", "d/grown", "d/gone", "d"} {
			if out[idx(p)] != (statRec{}) {
				t.Errorf("%s: record kept: %+v", p, out[idx(p)])
			}
		}
	}
	// In place (out is prev): the comparison is with the old record.
	restat(root, man, prev, prev, func(was, now *statRec) bool { return now.ctime == was.ctime })
	if prev[idx("d/same")].ino == 0 || prev[idx("d/chmodded")].ino != 0 {
		t.Errorf("in place: %+v, %+v", prev[idx("d/same")], prev[idx("d/chmodded")])
	}
}
