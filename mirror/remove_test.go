package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// removeAllNoting removes a trash of versions whatever is in it
// (directories of mode 0, symbolic links to outside, which stay
// untouched), and notes exactly the files that keep another name.
func TestRemoveAllNoting(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	write(t, filepath.Join(outside, "keep"), "keep", 0o644)
	write(t, filepath.Join(outside, "linked"), "shared", 0o644)
	trash := filepath.Join(base, "trash")
	for v := range 3 {
		vd := filepath.Join(trash, fmt.Sprint("v", v))
		for d := range 5 {
			write(t, filepath.Join(vd, fmt.Sprintf("d%d/sub/f", d)), "x", 0o644)
			write(t, filepath.Join(vd, fmt.Sprintf("d%d/g", d)), "y", 0o444)
		}
		write(t, filepath.Join(vd, "top"), "t", 0o644)
		os.Symlink(outside, filepath.Join(vd, "d0/to-outside"))
		os.Symlink(outside, filepath.Join(vd, "dirlink"))
		os.Chmod(filepath.Join(vd, "d1/sub"), 0)
		os.Chmod(filepath.Join(vd, "d2"), 0o500)
	}
	write(t, filepath.Join(trash, "loose"), "l", 0o644)
	os.Link(filepath.Join(outside, "linked"), filepath.Join(trash, "v1/d3/sub/hard"))
	var want unix.Stat_t
	unix.Lstat(filepath.Join(outside, "linked"), &want)

	dir, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	unlinked := map[[2]uint64]bool{}
	if err := removeAllNoting(int(dir.Fd()), "trash", unlinked); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(trash); !os.IsNotExist(err) {
		t.Errorf("trash still there: %v", err)
	}
	for _, p := range []string{"keep", "linked"} {
		if _, err := os.Stat(filepath.Join(outside, p)); err != nil {
			t.Errorf("outside/%s: %v", p, err)
		}
	}
	if len(unlinked) != 1 || !unlinked[[2]uint64{want.Dev, want.Ino}] {
		t.Errorf("noted %v, want only the inode of outside/linked", unlinked)
	}
	// Missing is not an error; a file is removed as a file.
	if err := removeAllNoting(int(dir.Fd()), "trash", nil); err != nil {
		t.Errorf("missing: %v", err)
	}
	write(t, filepath.Join(base, "trash"), "f", 0o644)
	if err := removeAllNoting(int(dir.Fd()), "trash", nil); err != nil {
		t.Errorf("a file: %v", err)
	}
	if _, err := os.Lstat(trash); !os.IsNotExist(err) {
		t.Errorf("trash file still there: %v", err)
	}
}
