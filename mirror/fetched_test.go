package mirror

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/manifest"
)

// A file fetched as an unnamed file is not read back by the check before
// the switch while it is still the inode the receiver linked, with the
// ctime the link gave it. Changed after the fetch, in place (size and
// mtime kept) or replaced by another file (same size, mode and mtime),
// it is read and the sync fails with ErrMismatch, leaving no stable path;
// touched without a change of content (its ctime moved), it is read and
// found right.
func TestFetchedFileChangedBeforeCheck(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	mt, err := os.Stat(filepath.Join(src, "a.conf"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		change func(t *testing.T, p string)
		ok     bool
	}{
		{"unchanged", func(*testing.T, string) {}, true},
		{"edited in place, mtime put back", func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("ALPHA"), 0)
			f.Close()
			os.Chtimes(p, mt.ModTime(), mt.ModTime())
		}, false},
		{"replaced by rename", func(t *testing.T, p string) {
			tmp := p + ".tmp"
			write(t, tmp, "ALPHA\n", 0o644)
			os.Chtimes(tmp, mt.ModTime(), mt.ModTime())
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"touched, content unchanged", func(t *testing.T, p string) {
			os.Chmod(p, 0o600)
			os.Chmod(p, 0o644)
		}, true},
	}
	defer func() { testAfterFetch = nil }()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			noted := false
			testAfterFetch = func(staged string, man *manifest.Manifest, placed []placedRec) {
				// The shortcut is in use: the small file was noted, the one
				// larger than a chunk (written through a partial file) not.
				noted = placed[indexOf(man, "a.conf")].ino != 0 && placed[indexOf(man, "deep/x/y/z.bin")].ino == 0
				time.Sleep(20 * time.Millisecond) // a later clock tick for the change's ctime
				c.change(t, filepath.Join(staged, "a.conf"))
			}
			_, err := syncE(testConfig(s, out, "app"))
			if !noted {
				t.Errorf("fetch did not note the small file (or noted the large one)")
			}
			if c.ok {
				if err != nil {
					t.Fatalf("sync: %v", err)
				}
				sameTree(t, src, filepath.Join(out, "app"))
				return
			}
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("sync after the change: %v, want ErrMismatch", err)
			}
			if _, err := os.Lstat(filepath.Join(out, "app")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stable path after a failed check: %v", err)
			}
		})
	}
}
