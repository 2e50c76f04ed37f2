package safefs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// modes runs f with openat2 (where the kernel has it) and with the
// per-component fallback.
func modes(t *testing.T, f func(t *testing.T)) {
	t.Run("openat2", func(t *testing.T) {
		if !openat2Available() {
			t.Skip("no openat2 on this kernel")
		}
		f(t)
	})
	t.Run("walk", func(t *testing.T) {
		forceWalk = true
		t.Cleanup(func() { forceWalk = false })
		f(t)
	})
}

// fixture is an output directory "out" beside an "outside" directory
// holding a file that must never change.
type fixture struct {
	root, out, outside, secret string
	d                          *Dir
}

const secretContent = "do not touch"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	fx := &fixture{root: root, out: filepath.Join(root, "out"), outside: filepath.Join(root, "outside")}
	for _, d := range []string{fx.out, fx.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fx.secret = filepath.Join(fx.outside, "secret")
	if err := os.WriteFile(fx.secret, []byte(secretContent), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(fx.out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	fx.d = d
	return fx
}

// untouched fails unless the outside directory holds only the intact secret.
func (fx *fixture) untouched(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(fx.secret)
	if err != nil || string(b) != secretContent {
		t.Errorf("the file outside was changed: %q, %v", b, err)
	}
	ents, _ := os.ReadDir(fx.outside)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("written outside: %v", names)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

func TestOpenFileRefusesSymlinks(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		os.Symlink(fx.secret, filepath.Join(fx.out, "link"))
		os.Symlink(fx.outside, filepath.Join(fx.out, "sub"))
		os.Symlink(filepath.Join(fx.outside, "new"), filepath.Join(fx.out, "dangling"))
		for _, rel := range []string{"link", "sub/secret", "dangling"} {
			for _, flag := range []int{os.O_RDONLY, os.O_RDWR | os.O_CREATE | os.O_TRUNC, os.O_WRONLY | os.O_CREATE} {
				f, err := fx.d.OpenFile(rel, flag, 0o644)
				if err == nil {
					f.Close()
				}
				wantErr(t, err, ErrSymlink)
				if !strings.Contains(err.Error(), filepath.Join(fx.out, rel)) {
					t.Errorf("error %q does not name %s", err, rel)
				}
			}
		}
		_, err := fx.d.CreateExclusive("sub/new", 0o644)
		wantErr(t, err, ErrSymlink)
		fx.untouched(t)
	})
}

func TestPathsMustBeBeneath(t *testing.T) {
	fx := newFixture(t)
	for _, rel := range []string{"/etc/passwd", "../outside/secret", "a/../../outside/secret", "", "."} {
		_, err := fx.d.OpenFile(rel, os.O_RDONLY, 0)
		wantErr(t, err, ErrNotBeneath)
	}
	wantErr(t, fx.d.Rename("../outside/secret", "x"), ErrNotBeneath)
	wantErr(t, fx.d.Unlink("../outside/secret"), ErrNotBeneath)
	fx.untouched(t)
}

func TestMkdirAll(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		if err := fx.d.MkdirAll("a/b/c", 0o755); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(fx.out, "a/b/c")); err != nil || !fi.IsDir() {
			t.Fatalf("a/b/c not made: %v", err)
		}
		sub, err := fx.d.MkdirAllOpen("a/b/c", 0o755) // exists: opened
		if err != nil {
			t.Fatal(err)
		}
		sub.Close()

		// A symlinked directory on the way is refused, named, and nothing
		// is created through it.
		os.Symlink(fx.outside, filepath.Join(fx.out, "a/evil"))
		err = fx.d.MkdirAll("a/evil/x/y", 0o755)
		wantErr(t, err, ErrSymlink)
		if !strings.Contains(err.Error(), filepath.Join(fx.out, "a/evil")+":") {
			t.Errorf("error %q does not name the symlink", err)
		}
		// A symlink to a directory as the last component too.
		wantErr(t, fx.d.MkdirAll("a/evil", 0o755), ErrSymlink)
		// A file on the way.
		os.WriteFile(filepath.Join(fx.out, "file"), nil, 0o644)
		if err := fx.d.MkdirAll("file/x", 0o755); !errors.Is(err, syscall.ENOTDIR) {
			t.Fatalf("through a file: %v, want ENOTDIR", err)
		}
		fx.untouched(t)
	})
}

// A directory opened before it was swapped for a symlink keeps being the
// directory it was: nothing goes to the symlink's target.
func TestDirSwappedForSymlink(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		sub, err := fx.d.MkdirAllOpen("sub", 0o755)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		os.WriteFile(filepath.Join(fx.out, "sub/a"), []byte("a"), 0o644)
		if err := os.Rename(filepath.Join(fx.out, "sub"), filepath.Join(fx.out, "moved")); err != nil {
			t.Fatal(err)
		}
		os.Symlink(fx.outside, filepath.Join(fx.out, "sub"))

		// Through the old descriptor: the moved directory.
		f, err := sub.CreateExclusive("new", 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if _, err := os.Stat(filepath.Join(fx.out, "moved/new")); err != nil {
			t.Errorf("not created in the directory opened: %v", err)
		}
		// Through the root: every name-based call refuses the symlink.
		wantErr(t, fx.d.Rename("sub/secret", "stolen"), ErrSymlink)
		wantErr(t, fx.d.Rename("moved/a", "sub/a"), ErrSymlink)
		wantErr(t, fx.d.Unlink("sub/secret"), ErrSymlink)
		wantErr(t, fx.d.Link("sub/secret", "hard"), ErrSymlink)
		wantErr(t, fx.d.Symlink("x", "sub/s"), ErrSymlink)
		wantErr(t, fx.d.Rmdir("sub/x"), ErrSymlink)
		_, err = fx.d.Lstat("sub/secret")
		wantErr(t, err, ErrSymlink)
		_, err = fx.d.Sub("sub")
		wantErr(t, err, ErrSymlink)
		_, err = fx.d.ReadFileBounded("sub/secret", 100)
		wantErr(t, err, ErrSymlink)
		fx.untouched(t)
	})
}

func TestNameOperations(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		if err := fx.d.MkdirAll("d", 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := fx.d.CreateExclusive("d/a", 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("A")
		f.Close()
		if _, err := fx.d.CreateExclusive("d/a", 0o600); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("second exclusive create: %v", err)
		}
		if err := fx.d.Link("d/a", "b"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Rename("b", "d/c"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Symlink(fx.secret, "d/s"); err != nil {
			t.Fatal(err)
		}
		fi, err := fx.d.Lstat("d/s")
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 || fi.Name() != "s" {
			t.Fatalf("lstat of a symlink: %v, %v", fi, err)
		}
		fi, err = fx.d.Lstat("d/c")
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != 1 || fi.Sys().(*unix.Stat_t).Nlink != 2 {
			t.Fatalf("lstat of a file: %v, %v", fi, err)
		}
		// Unlink of a symlink removes the link, not its target.
		if err := fx.d.Unlink("d/s"); err != nil {
			t.Fatal(err)
		}
		// Renaming over a symlink replaces the link.
		fx.d.Symlink(fx.secret, "d/s2")
		if err := fx.d.Rename("d/c", "d/s2"); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(fx.out, "d/s2")); string(b) != "A" {
			t.Fatalf("rename over a symlink: %q", b)
		}
		if err := fx.d.Unlink("d/a"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Unlink("d/s2"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Rmdir("d"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Sync(); err != nil {
			t.Fatal(err)
		}
		fx.untouched(t)
	})
}

func TestOpenPrivate(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		// Fresh: created, empty.
		f, err := fx.d.OpenPrivate("p", 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("data")
		f.Close()
		// Existing: kept (no truncation).
		f, err = fx.d.OpenPrivate("p", 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if fi, _ := f.Stat(); fi.Size() != 4 {
			t.Fatalf("existing file truncated by open: %d", fi.Size())
		}
		f.Close()

		// A hard link to a file elsewhere: refused, both names intact.
		if err := os.Link(fx.secret, filepath.Join(fx.out, "hard")); err != nil {
			t.Fatal(err)
		}
		_, err = fx.d.OpenPrivate("hard", 0o600)
		wantErr(t, err, ErrLinked)
		// A symlink: refused.
		os.Symlink(fx.secret, filepath.Join(fx.out, "sym"))
		_, err = fx.d.OpenPrivate("sym", 0o600)
		wantErr(t, err, ErrSymlink)
		// A FIFO: refused without blocking.
		if err := unix.Mkfifo(filepath.Join(fx.out, "fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = fx.d.OpenPrivate("fifo", 0o600)
		wantErr(t, err, ErrNotRegular)
		// A directory: refused.
		os.Mkdir(filepath.Join(fx.out, "dir"), 0o755)
		if _, err := fx.d.OpenPrivate("dir", 0o600); err == nil {
			t.Fatal("opened a directory")
		}
		fx.untouched(t)
	})
}

func TestCheckPrivate(t *testing.T) {
	fx := newFixture(t)
	p := filepath.Join(fx.out, "f")
	os.WriteFile(p, nil, 0o600)
	check := func() error {
		f, err := fx.d.OpenFile("f", os.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return CheckPrivate(f)
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o666)
	wantErr(t, check(), ErrNotOwned)
	os.Chmod(p, 0o600)
	if os.Geteuid() == 0 {
		os.Chown(p, 12345, 12345)
		wantErr(t, check(), ErrNotOwned)
	}
}

func TestReadFileBounded(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		os.WriteFile(filepath.Join(fx.out, "small"), []byte("hello"), 0o600)
		b, err := fx.d.ReadFileBounded("small", 5)
		if err != nil || string(b) != "hello" {
			t.Fatalf("read %q, %v", b, err)
		}
		if cap(b) > 6 {
			t.Errorf("allocated %d bytes for a 5-byte file", cap(b))
		}
		_, err = fx.d.ReadFileBounded("small", 4)
		wantErr(t, err, ErrTooLarge)
		os.WriteFile(filepath.Join(fx.out, "empty"), nil, 0o600)
		if b, err := fx.d.ReadFileBounded("empty", 4); err != nil || len(b) != 0 {
			t.Fatalf("empty: %q, %v", b, err)
		}

		// A huge (sparse) file: refused at once, nothing read.
		huge := filepath.Join(fx.out, "huge")
		hf, _ := os.Create(huge)
		hf.Truncate(100 << 20)
		hf.Close()
		_, err = fx.d.ReadFileBounded("huge", 4096)
		wantErr(t, err, ErrTooLarge)

		// A FIFO with no writer: refused, without blocking.
		unix.Mkfifo(filepath.Join(fx.out, "fifo"), 0o600)
		done := make(chan error, 1)
		go func() { _, err := fx.d.ReadFileBounded("fifo", 4096); done <- err }()
		select {
		case err := <-done:
			wantErr(t, err, ErrNotRegular)
		case <-time.After(10 * time.Second):
			t.Fatal("reading a FIFO blocked")
		}

		// A symlink to /dev/zero: refused.
		os.Symlink("/dev/zero", filepath.Join(fx.out, "zero"))
		_, err = fx.d.ReadFileBounded("zero", 4096)
		wantErr(t, err, ErrSymlink)

		// A directory: refused.
		os.Mkdir(filepath.Join(fx.out, "dir"), 0o755)
		_, err = fx.d.ReadFileBounded("dir", 4096)
		wantErr(t, err, ErrNotRegular)

		// A character device (as root, a real one planted by mknod).
		if os.Geteuid() == 0 {
			if err := unix.Mknod(filepath.Join(fx.out, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))); err == nil {
				_, err = fx.d.ReadFileBounded("dev", 4096)
				wantErr(t, err, ErrNotRegular)
			} else {
				t.Logf("mknod not allowed here (%v); device case not run", err)
			}
		}
	})
}

// A file that grows past the limit between fstat and read is refused
// (the read stops at max+1 bytes).
func TestReadFileBoundedGrowing(t *testing.T) {
	fx := newFixture(t)
	// /proc files report size 0 but hold data: the same as a file that
	// grew after fstat. Reach one beneath a Dir opened on /proc/self.
	d, err := OpenDir("/proc/self")
	if err != nil {
		t.Skip("no /proc")
	}
	defer d.Close()
	_, err = d.ReadFileBounded("mountinfo", 8)
	wantErr(t, err, ErrTooLarge)
	b, err := d.ReadFileBounded("mountinfo", 1<<20)
	if err != nil || len(b) == 0 {
		t.Fatalf("mountinfo: %d bytes, %v", len(b), err)
	}
	fx.untouched(t)
}

// TestTmpfileLink runs with linkat(AT_EMPTY_PATH) where it works (root)
// and through /proc as without the capability.
func TestTmpfileLink(t *testing.T) {
	defer emptyPathLink.Store(0)
	for _, how := range []int32{0, -1} {
		t.Run(map[int32]string{0: "AT_EMPTY_PATH if allowed", -1: "through /proc"}[how], func(t *testing.T) {
			emptyPathLink.Store(how)
			testTmpfileLink(t)
		})
	}
}

func testTmpfileLink(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		sub, err := fx.d.MkdirAllOpen("s", 0o755)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		f, err := sub.OpenTmpfile(0o600)
		if errors.Is(err, ErrNoTmpfile) {
			t.Skip("no O_TMPFILE here")
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		f.WriteString("x")
		if ents, _ := os.ReadDir(filepath.Join(fx.out, "s")); len(ents) != 0 {
			t.Fatal("the unnamed file is visible")
		}
		if err := fx.d.LinkFile(f, "s/name"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.LinkFile(f, "s/name"); !errors.Is(err, fs.ErrExist) {
			t.Fatalf("link over an existing name: %v", err)
		}
		os.Symlink(fx.outside, filepath.Join(fx.out, "evil"))
		wantErr(t, fx.d.LinkFile(f, "evil/x"), ErrSymlink)
		var names []string
		ents, _ := os.ReadDir(filepath.Join(fx.out, "s"))
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, []string{"name"}) {
			t.Fatalf("directory holds %v", names)
		}
		fx.untouched(t)
	})
}

func TestSameFile(t *testing.T) {
	fx := newFixture(t)
	a, _ := fx.d.CreateExclusive("a", 0o600)
	defer a.Close()
	b, _ := fx.d.OpenFile("a", os.O_RDONLY, 0)
	defer b.Close()
	c, _ := fx.d.CreateExclusive("c", 0o600)
	defer c.Close()
	if !SameFile(a, b) || SameFile(a, c) {
		t.Fatal("SameFile is wrong")
	}
}

func TestExchangeReadlinkReadDir(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		if err := fx.d.MkdirAll("v/1", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Symlink("v/1", "cur"); err != nil {
			t.Fatal(err)
		}
		if err := fx.d.Symlink("v/2", "next"); err != nil {
			t.Fatal(err)
		}
		if got, err := fx.d.Readlink("cur"); err != nil || got != "v/1" {
			t.Fatalf("readlink: %q, %v", got, err)
		}
		long := strings.Repeat("x/", 300)
		fx.d.Symlink(long, "long")
		if got, err := fx.d.Readlink("long"); err != nil || got != long {
			t.Fatalf("readlink of a long target: %d octets, %v", len(got), err)
		}
		if err := fx.d.Exchange("cur", "next"); err != nil {
			t.Fatal(err)
		}
		if got, _ := fx.d.Readlink("cur"); got != "v/2" {
			t.Fatalf("after exchange cur -> %q", got)
		}
		// A directory and a symlink swap too.
		if err := fx.d.Exchange("v", "next"); err != nil {
			t.Fatal(err)
		}
		if fi, _ := fx.d.Lstat("next"); !fi.IsDir() {
			t.Fatal("exchange of a directory and a symlink")
		}
		ents, err := fx.d.ReadDir("")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, []string{"cur", "long", "next", "v"}) {
			t.Fatalf("ReadDir: %v", names)
		}
		// ReadDir does not follow a symlink to a directory.
		fx.d.Symlink(fx.outside, "out")
		_, err = fx.d.ReadDir("out")
		wantErr(t, err, ErrSymlink)
		fx.untouched(t)
	})
}

func TestRemoveAll(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		if err := fx.d.MkdirAll("tree/a/b/c", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"tree/f", "tree/a/f", "tree/a/b/c/f"} {
			os.WriteFile(filepath.Join(fx.out, f), []byte("x"), 0o644)
		}
		// Symlinks beneath are removed, not followed.
		os.Symlink(fx.outside, filepath.Join(fx.out, "tree/a/to-outside"))
		os.Symlink(fx.secret, filepath.Join(fx.out, "tree/a/b/secret"))
		os.Link(fx.secret, filepath.Join(fx.out, "tree/hard"))
		unix.Mkfifo(filepath.Join(fx.out, "tree/fifo"), 0o600)
		if err := fx.d.RemoveAll("tree"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(fx.out, "tree")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("tree still there: %v", err)
		}
		if err := fx.d.RemoveAll("tree"); err != nil {
			t.Fatalf("removing a missing tree: %v", err)
		}
		// A symlink given as rel is removed itself.
		os.Symlink(fx.outside, filepath.Join(fx.out, "link"))
		if err := fx.d.RemoveAll("link"); err != nil {
			t.Fatal(err)
		}
		// A symlinked directory on the way is refused.
		os.Symlink(fx.outside, filepath.Join(fx.out, "sub"))
		wantErr(t, fx.d.RemoveAll("sub/secret"), ErrSymlink)
		fx.untouched(t)
	})
}

// A directory flipped between a real directory and a symlink to the
// outside, while files are created, directories made and names renamed
// through it, never lets anything through to the outside.
func TestConcurrentSwapToSymlink(t *testing.T) {
	modes(t, func(t *testing.T) {
		fx := newFixture(t)
		// "sub" and "other" are swapped atomically, again and again: sub is
		// in turn a directory and a symlink to the outside.
		sub := filepath.Join(fx.out, "sub")
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(fx.outside, filepath.Join(fx.out, "other")); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		flipped := make(chan int)
		go func() {
			n := 0
			defer func() { flipped <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if unix.Renameat2(unix.AT_FDCWD, sub, unix.AT_FDCWD, filepath.Join(fx.out, "other"), unix.RENAME_EXCHANGE) == nil {
					n++
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
		deadline := time.Now().Add(500 * time.Millisecond)
		for i := 0; time.Now().Before(deadline); i++ {
			name := "sub/f" + strings.Repeat("x", i%7)
			if f, err := fx.d.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600); err == nil {
				f.WriteString("y")
				f.Close()
			}
			fx.d.MkdirAll("sub/d/e", 0o755)
			fx.d.Rename("sub/f", "sub/g")
			fx.d.Unlink("sub/secret")
			fx.d.Symlink("x", "sub/s")
			fx.d.Link("sub/g", "sub/h")
			fx.d.ReadFileBounded("sub/secret", 1<<20)
		}
		close(stop)
		if n := <-flipped; n < 10 {
			t.Fatalf("the directory was flipped only %d times", n)
		}
		fx.untouched(t)
	})
}
