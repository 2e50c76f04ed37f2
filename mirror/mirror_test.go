package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/receiver"
)

func startServer(t *testing.T) *treetest.Server {
	t.Helper()
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// publish scans dir and publishes it as tree with seq.
func publish(t *testing.T, s *treetest.Server, tree, dir string, seq uint64) *treetest.Version {
	t.Helper()
	m, contents, err := treetest.Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	v := treetest.NewVersion(seq, m, contents)
	s.Publish(tree, v)
	return v
}

// syncedApp serves smallTree as tree "app", version 1, and syncs it into
// a new OUT: where most behaviour tests start.
func syncedApp(t *testing.T) (s *treetest.Server, src, out string, cfg Config, first Result) {
	t.Helper()
	s = startServer(t)
	src = filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out = t.TempDir()
	cfg = testConfig(s, out, "app")
	return s, src, out, cfg, syncOK(t, cfg)
}

func testConfig(s *treetest.Server, out, tree string) Config {
	return Config{Out: out, Tree: tree, Receiver: receiver.Config{Endpoint: s.Endpoint, Timeout: 3 * time.Second,
		PeerTimeout: 2 * time.Second, Heartbeat: 200 * time.Millisecond, MaxChunk: 64 << 10}}
}

func syncOK(t *testing.T, cfg Config) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Sync(ctx, cfg)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

// listing is find -printf '%P %y %m %s %T@ %l' plus a BLAKE3 per file,
// for the tree at dir (followed if it is a symlink: the stable path).
func listing(t *testing.T, dir string) []string {
	t.Helper()
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s %o %d %d.%09d", rel, st.Mode, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			line = fmt.Sprintf("%s %o %d.%09d", rel, st.Mode, st.Mtim.Sec, st.Mtim.Nsec) // dir sizes are the file system's
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			line += " -> " + l
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", blake3.Sum256(b))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, src, dst string) {
	t.Helper()
	a, b := listing(t, src), listing(t, dst)
	if !slices.Equal(a, b) {
		for i := 0; i < len(a) || i < len(b); i++ {
			var x, y string
			if i < len(a) {
				x = a[i]
			}
			if i < len(b) {
				y = b[i]
			}
			if x != y {
				t.Fatalf("trees differ at line %d:\n  source: %s\n  mirror: %s", i, x, y)
			}
		}
	}
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

// smallTree makes a tree with the shapes that matter.
func smallTree(t *testing.T, dir string) {
	t.Helper()
	write(t, filepath.Join(dir, "a.conf"), "alpha\n", 0o644)
	write(t, filepath.Join(dir, "sub dir/ünï cödé.txt"), "utf8\n", 0o600)
	write(t, filepath.Join(dir, "sub dir/empty"), "", 0o644)
	write(t, filepath.Join(dir, "deep/x/y/z.bin"), strings.Repeat("z", 200000), 0o640)
	os.MkdirAll(filepath.Join(dir, "emptydir"), 0o755)
	os.MkdirAll(filepath.Join(dir, "private"), 0o700)
	write(t, filepath.Join(dir, "private/key"), "secret", 0o600)
	os.Chmod(filepath.Join(dir, "private"), 0o700)
	os.Symlink("a.conf", filepath.Join(dir, "rel-link"))
	os.Symlink("/etc/passwd", filepath.Join(dir, "abs-link"))
	os.Symlink("deep/x", filepath.Join(dir, "dir-link"))
	os.Symlink("../../outside", filepath.Join(dir, "out-link"))
}

func TestSyncSmallTree(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	res := syncOK(t, testConfig(s, out, "app"))
	sameTree(t, src, filepath.Join(out, "app"))
	if res.FilesFetched != 5 || res.FilesReused != 0 || res.Unchanged {
		t.Errorf("first sync: %+v", res)
	}
	// Nothing outside OUT/app and OUT/.zsnd.
	if got := entries(t, out); !slices.Equal(got, []string{".zsnd", "app"}) {
		t.Errorf("output directory holds %v", got)
	}
	// No change: no data.
	before := s.DataBytes.Load()
	res = syncOK(t, testConfig(s, out, "app"))
	if !res.Unchanged || res.FilesFetched != 0 || s.DataBytes.Load() != before {
		t.Errorf("second sync fetched data: %+v (%d bytes)", res, s.DataBytes.Load()-before)
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

var _ = errors.Is

func syncE(cfg Config) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return Sync(ctx, cfg)
}
