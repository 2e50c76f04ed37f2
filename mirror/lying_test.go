package mirror

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/manifest"
)

// rawVersion builds a version from entries as given (not validated), with
// file contents matching their hashes.
func rawVersion(seq uint64, entries []manifest.Entry) *treetest.Version {
	m := &manifest.Manifest{Entries: entries}
	b := m.Encode()
	v := &treetest.Version{Seq: seq, Manifest: b, ID: manifest.IDOf(b), Entries: uint64(len(entries)), Files: map[string]*treetest.File{}}
	for _, e := range entries {
		if e.Type == manifest.TypeFile {
			v.Files[e.Path] = &treetest.File{Content: []byte("evil"), Mode: e.Mode, MtimeNs: e.MtimeNs, Hash: e.Hash}
		}
	}
	return v
}

func fileEntry(p string) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.TypeFile, Mode: 0o644, MtimeNs: 1e18, Size: 4, Hash: blake3.Sum256([]byte("evil"))}
}
func dirEntry(p string) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.TypeDir, Mode: 0o755, MtimeNs: 1e18}
}
func linkEntry(p, target string) manifest.Entry {
	return manifest.Entry{Path: p, Type: manifest.TypeSymlink, Mode: 0o777, MtimeNs: 1e18, Target: target}
}

func TestLyingServer(t *testing.T) {
	cases := []struct {
		name    string
		version func() *treetest.Version
		want    error
	}{
		{"dotdot", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("../escape")})
		}, ErrBadManifest},
		{"dotdot inside", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), dirEntry("a"), fileEntry("a/../../escape")})
		}, ErrBadManifest},
		{"absolute", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("/tmp/escape")})
		}, ErrBadManifest},
		{"NUL", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a\x00b")})
		}, ErrBadManifest},
		{"duplicate", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a"), fileEntry("a")})
		}, ErrBadManifest},
		{"file and dir at one path", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a"), fileEntry("a/b")})
		}, ErrBadManifest},
		{"entry below a symlink", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), linkEntry("link", "/tmp"), fileEntry("link/x")})
		}, ErrBadManifest},
		{"no root", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{fileEntry("a")})
		}, ErrBadManifest},
		{"reserved partial name", func() *treetest.Version {
			return rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry(".zrecv-0123.part"), fileEntry("a")})
		}, ErrBadManifest},
		{"1e7 entries announced", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.Entries = 10_000_000
			return v
		}, ErrBadManifest},
		{"1e7 entries in the manifest", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			b := append([]byte(nil), v.Manifest...)
			binary.BigEndian.PutUint64(b[8:], 10_000_000)
			v.Manifest, v.ID = b, manifest.IDOf(b)
			return v
		}, ErrBadManifest},
		{"huge manifest announced", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.AnnounceSize = 300 << 20 // beyond the 256 MiB limit
			return v
		}, ErrBadManifest},
		{"version id mismatch", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.ID[0] ^= 1
			return v
		}, ErrBadManifest},
		{"file content does not match the manifest", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.Files["a"].Content = []byte("EVIL")
			return v
		}, nil},
		{"END hash is the content's, not the manifest's", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.Files["a"].Content = []byte("EVIL")
			v.Files["a"].Hash = blake3.Sum256([]byte("EVIL"))
			return v
		}, nil},
		{"FILE size is not the manifest's", func() *treetest.Version {
			v := rawVersion(2, []manifest.Entry{dirEntry(""), fileEntry("a")})
			v.Files["a"].Content = []byte("evil and much more")
			v.Files["a"].Hash = blake3.Sum256(v.Files["a"].Content)
			return v
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t)
			parent := t.TempDir()
			src := filepath.Join(parent, "src")
			smallTree(t, src)
			publish(t, s, "app", src, 1)
			out := filepath.Join(parent, "out")
			os.Mkdir(out, 0o755)
			cfg := testConfig(s, out, "app")
			cfg.Receiver.Retries = 1
			good := syncOK(t, cfg)
			before := listing(t, filepath.Join(out, "app"))

			v := c.version()
			s.Publish("app", v)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := Sync(ctx, cfg)
			if err == nil {
				t.Fatalf("sync of a lying version succeeded")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
			t.Logf("error: %v", err)
			if got := entries(t, parent); !slices.Equal(got, []string{"out", "src"}) {
				t.Errorf("written outside the output directory: %v", got)
			}
			if got := entries(t, out); !slices.Equal(got, []string{".zsnd", "app"}) {
				t.Errorf("output directory holds %v", got)
			}
			if after := listing(t, filepath.Join(out, "app")); !slices.Equal(before, after) {
				t.Errorf("the old version changed")
			}
			if dst, _ := filepath.EvalSymlinks(filepath.Join(out, "app")); dst != good.Dir {
				t.Errorf("stable path points at %s, want %s", dst, good.Dir)
			}
		})
	}
}

// A symlink out of the tree is published as a symlink and never followed
// while writing, even when the next version puts a directory at its path.
func TestSymlinkOutOfTreeNeverFollowed(t *testing.T) {
	s := startServer(t)
	parent := t.TempDir()
	victim := filepath.Join(parent, "victim")
	os.Mkdir(victim, 0o755)
	s.Publish("app", rawVersion(1, []manifest.Entry{dirEntry(""), linkEntry("d", victim), linkEntry("up", "../../..")}))
	out := filepath.Join(parent, "out")
	os.Mkdir(out, 0o755)
	cfg := testConfig(s, out, "app")
	syncOK(t, cfg)
	if l, err := os.Readlink(filepath.Join(out, "app/d")); err != nil || l != victim {
		t.Fatalf("symlink not mirrored: %q %v", l, err)
	}
	// Version 2: d is a directory with a file in it.
	s.Publish("app", rawVersion(2, []manifest.Entry{dirEntry(""), dirEntry("d"), fileEntry("d/f"), linkEntry("up", "../../..")}))
	syncOK(t, cfg)
	if got := entries(t, victim); len(got) != 0 {
		t.Errorf("written through a symlink: %v", got)
	}
	if b, err := os.ReadFile(filepath.Join(out, "app/d/f")); err != nil || string(b) != "evil" {
		t.Errorf("d/f: %q %v", b, err)
	}
	// A staging area whose directory was replaced by a symlink (an
	// interrupted run, or a local attacker) is not followed either.
	s.Publish("app", rawVersion(3, []manifest.Entry{dirEntry(""), dirEntry("d"), fileEntry("d/f"), fileEntry("d/g"), linkEntry("up", "../../..")}))
	stage := filepath.Join(out, ".zsnd/app/stage/app")
	os.MkdirAll(stage, 0o700)
	os.Symlink(victim, filepath.Join(stage, "d"))
	syncOK(t, cfg)
	if got := entries(t, victim); len(got) != 0 {
		t.Errorf("written through a staged symlink: %v", got)
	}
}

// setuid and setgid bits are not restored; the sticky bit and permission
// bits are, and the check before the switch accepts exactly that.
func TestSetIDBitsNotRestored(t *testing.T) {
	s := startServer(t)
	f := fileEntry("tool")
	f.Mode = 0o4755
	g := fileEntry("group")
	g.Mode = 0o2750
	d := dirEntry("tmp")
	d.Mode = 0o1777
	s.Publish("app", rawVersion(1, []manifest.Entry{dirEntry(""), g, d, f}))
	out := t.TempDir()
	syncOK(t, testConfig(s, out, "app"))
	for p, want := range map[string]os.FileMode{"tool": 0o755, "group": 0o750, "tmp": os.ModeDir | os.ModeSticky | 0o777} {
		fi, err := os.Lstat(filepath.Join(out, "app", p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v (%v)", p, fi.Mode(), want, err)
		}
	}
}
