package receiver

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/zsend/zsend/internal/safefs"
	"github.com/zsend/zsend/protocol"
)

// A small file is written unnamed and linked into place at commit: as a
// new name, over an existing file (atomically, through the hidden name),
// and never over a directory. Nothing else is left in the directory.
func TestLinkInto(t *testing.T) {
	dir := t.TempDir()
	d, err := safefs.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	write := func(content string) *os.File {
		t.Helper()
		f := openUnnamed(d)
		if f == nil {
			t.Skip("no O_TMPFILE on this file system")
		}
		if _, err := f.WriteString(content); err != nil {
			t.Fatal(err)
		}
		return f
	}
	dest := filepath.Join(dir, "x")
	tmp, _ := hiddenNames("x")
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("an unnamed file is visible: %v", ents)
	}

	f := write("one")
	if err := linkInto(f, d, "x", tmp); err != nil {
		t.Fatal(err)
	}
	f.Close()
	f = write("two")
	if err := linkInto(f, d, "x", tmp); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, err := os.ReadFile(dest); err != nil || string(b) != "two" {
		t.Fatalf("dest = %q, %v; want the second file", b, err)
	}

	sub := filepath.Join(dir, "d")
	os.Mkdir(sub, 0o755)
	f = write("three")
	if err := linkInto(f, d, "d", ".d.part"); err == nil {
		t.Fatal("linked over a directory")
	}
	f.Close()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 2 || names[0] != "d" || names[1] != "x" {
		t.Fatalf("directory holds %v, want [d x]", names)
	}
}

// The output directory's directories are shared by the tasks holding them
// and closed only when no task holds them and more than maxCachedDirs are
// open: a held directory stays usable however many others are opened.
func TestOutDirShared(t *testing.T) {
	o, err := openOutDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	held, err := o.dir("held/here", true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxCachedDirs + 50 {
		rel := filepath.Join("d", strconv.Itoa(i))
		d, err := o.dir(rel, true)
		if err != nil {
			t.Fatal(err)
		}
		if d2, err := o.dir(rel, false); err != nil || d2 != d {
			t.Fatalf("%s opened twice (%v)", rel, err)
		}
		o.release(rel)
		o.release(rel)
	}
	if n := len(o.dirs); n != maxCachedDirs {
		t.Errorf("%d directories open, want %d", n, maxCachedDirs)
	}
	f, err := held.CreateExclusive("x", 0o600)
	if err != nil {
		t.Fatalf("a held directory was closed: %v", err)
	}
	f.Close()
	o.release("held/here")
	if n := len(o.dirs); n != maxCachedDirs {
		t.Errorf("%d directories open after the last release, want %d", n, maxCachedDirs)
	}
}

// A Fresh request's first GET does not look for a partial file (the
// caller knows there is none); any later one (after a lost session) does,
// and resumes from what it finds.
func TestFreshLooksOnlyAfterTheFirstRequest(t *testing.T) {
	dir := t.TempDir()
	o, err := openOutDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	tk, err := newTask(o, "x")
	if err != nil {
		t.Fatal(err)
	}
	tk.fresh = true
	tag := protocol.Tag{1, 2, 3}
	st, _ := json.Marshal(partialState{Name: "x", Tag: hex.EncodeToString(tag[:]), Size: 1000, Mode: 0o644})
	if err := os.WriteFile(filepath.Join(dir, tk.partName), make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tk.stateName), st, 0o600); err != nil {
		t.Fatal(err)
	}
	if off, _ := tk.resumePoint(); off != 0 || !tk.partAbsent {
		t.Fatalf("first look of a Fresh task: offset %d, partAbsent %v; want 0, true", off, tk.partAbsent)
	}
	if off, got := tk.resumePoint(); off != 100 || got != tag || tk.partAbsent {
		t.Fatalf("second look: offset %d tag %x partAbsent %v; want 100 %x false", off, got, tk.partAbsent, tag)
	}
}
