package receiver

import (
	"os"
	"path/filepath"
	"testing"
)

// A small file is written unnamed and linked into place at commit: as a
// new name, over an existing file (atomically, through the hidden name),
// and never over a directory. Nothing else is left in the directory.
func TestLinkInto(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) *os.File {
		t.Helper()
		f := openUnnamed(dir, filepath.Join(dir, ".x.zrecv-part"))
		if f == nil {
			t.Skip("no O_TMPFILE on this file system")
		}
		if _, err := f.WriteString(content); err != nil {
			t.Fatal(err)
		}
		return f
	}
	dest := filepath.Join(dir, "x")
	tmp := filepath.Join(dir, ".x.zrecv-part")
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("an unnamed file is visible: %v", ents)
	}

	f := write("one")
	if err := linkInto(f, dest, tmp); err != nil {
		t.Fatal(err)
	}
	f.Close()
	f = write("two")
	if err := linkInto(f, dest, tmp); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, err := os.ReadFile(dest); err != nil || string(b) != "two" {
		t.Fatalf("dest = %q, %v; want the second file", b, err)
	}

	sub := filepath.Join(dir, "d")
	os.Mkdir(sub, 0o755)
	f = write("three")
	if err := linkInto(f, sub, filepath.Join(dir, ".d.zrecv-part")); err == nil {
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
