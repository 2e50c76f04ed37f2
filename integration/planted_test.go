package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Files planted in the output directory by someone who may write there
// (zrecv often runs as root) cannot make zrecv write or read elsewhere,
// block it, or exhaust its memory. Each test plants one thing next to a
// real zsend and checks that the file outside is untouched and nothing is
// written outside the output directory.

// plantSize has several chunks: a state file is written.
const plantSize = 6 << 20

// plantFixture is a parent directory holding "out" (the output directory)
// and "outside" (with a secret file that must never change).
type plantFixture struct {
	out, outside, secret string
	secretData           []byte
}

func newPlantFixture(t *testing.T) *plantFixture {
	t.Helper()
	root := t.TempDir()
	fx := &plantFixture{out: filepath.Join(root, "out"), outside: filepath.Join(root, "outside")}
	for _, d := range []string{fx.out, fx.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Larger than a chunk, so that a resume from it is possible.
	fx.secret = writeRandom(t, fx.outside, "secret", 2<<20+123)
	b, err := os.ReadFile(fx.secret)
	if err != nil {
		t.Fatal(err)
	}
	fx.secretData = b
	return fx
}

// untouched fails the test unless "outside" holds only the intact secret,
// with a single link again.
func (fx *plantFixture) untouched(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(fx.secret)
	if err != nil || !bytes.Equal(b, fx.secretData) {
		t.Errorf("the file outside the output directory was changed: %d bytes starting %q, %v", len(b), b[:min(len(b), 40)], err)
	}
	if got := entries(t, fx.outside); !slices.Equal(got, []string{"secret"}) {
		t.Errorf("written outside the output directory: %v", got)
	}
}

// interrupted runs a fetch of name and cancels it once some data is
// verified, so a partial file and its state file are left for a resume.
func interrupted(t *testing.T, ep, out, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: out, Timeout: 5 * time.Second,
		Progress: func(e receiver.Event) {
			if e.Kind == receiver.EventProgress && e.Done >= 2<<20 {
				cancel()
			}
		}}, name)
	if err == nil {
		t.Fatalf("the fetch to interrupt completed: %+v", res)
	}
	part, state := receiver.PartialPaths(filepath.Join(out, filepath.FromSlash(name)))
	if fileSize(part) <= 0 || fileSize(state) <= 0 {
		t.Fatalf("no partial state left by the interrupted fetch (%d, %d)", fileSize(part), fileSize(state))
	}
}

// fetchBounded runs a fetch that must end within bound; if it does not,
// unblock is called (to release a blocked system call) and the test fails.
func fetchBounded(t *testing.T, bound time.Duration, unblock func(), cfg receiver.Config, names ...string) ([]receiver.Result, error) {
	t.Helper()
	type outcome struct {
		res []receiver.Result
		err error
	}
	done := make(chan outcome, 1)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	go func() {
		res, err := receiver.Fetch(ctx, cfg, names...)
		done <- outcome{res, err}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-time.After(bound + 5*time.Second):
		if unblock != nil {
			unblock()
		}
		t.Fatalf("Fetch did not return within %v", bound)
		return nil, nil
	}
}

// A planted .zrecv-HASH.state symlink (to an existing file outside, or to
// a name outside that does not exist yet) or hard link (to a file outside)
// is neither followed nor written through: the fetch succeeds, the target
// is untouched, no file is created outside, and the planted name is gone.
func TestPlantedStateFile(t *testing.T) {
	for _, c := range []struct {
		name  string
		plant func(fx *plantFixture, state string) error
	}{
		{"symlink", func(fx *plantFixture, state string) error { return os.Symlink(fx.secret, state) }},
		{"dangling-symlink", func(fx *plantFixture, state string) error {
			return os.Symlink(filepath.Join(fx.outside, "created-by-zrecv"), state)
		}},
		{"hardlink", func(fx *plantFixture, state string) error { return os.Link(fx.secret, state) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newPlantFixture(t)
			src, ep, _ := serveRandom(t, "f.bin", plantSize, sender.Config{})
			dest := filepath.Join(fx.out, "f.bin")
			_, state := receiver.PartialPaths(dest)
			if err := c.plant(fx, state); err != nil {
				t.Fatal(err)
			}
			if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: fx.out}, "f.bin"); err != nil {
				t.Fatal(err)
			}
			sameFile(t, src, dest)
			fx.untouched(t)
			if got := entries(t, fx.out); !slices.Equal(got, []string{"f.bin"}) {
				t.Errorf("output directory holds %v", got)
			}
		})
	}
}

// Whatever is planted as the partial file is never truncated, written or
// resumed from: a hard link to a file outside (for a fresh fetch, and in
// place of the partial file of an interrupted one, where zrecv would
// resume and write after the verified prefix), a symlink, a FIFO, and a
// partial file that belongs to another user, who keeps it open to change
// it after it is verified. zrecv unlinks it and starts a new file.
func TestPlantedPartialFile(t *testing.T) {
	for _, c := range []struct {
		name   string
		resume bool
		plant  func(t *testing.T, fx *plantFixture, part string) (check func())
	}{
		{"hardlink", false, plantHardlink},
		{"hardlink-resume", true, plantHardlink},
		{"symlink-resume", true, func(t *testing.T, fx *plantFixture, part string) func() {
			os.Remove(part)
			if err := os.Symlink(fx.secret, part); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{"fifo", false, func(t *testing.T, fx *plantFixture, part string) func() {
			if err := syscall.Mkfifo(part, 0o600); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{"foreign-owner-resume", true, func(t *testing.T, fx *plantFixture, part string) func() {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the partial file to another user")
			}
			if err := os.Chown(part, 12345, 12345); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(part) // the other user's descriptor
			if err != nil {
				t.Fatal(err)
			}
			before, _ := io.ReadAll(f)
			return func() {
				defer f.Close()
				after, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
				if err != nil || !bytes.Equal(before, after) {
					t.Errorf("the other user's file was written: %d bytes before, %d after", len(before), len(after))
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newPlantFixture(t)
			src, ep, _ := serveRandom(t, "f.bin", plantSize, sender.Config{})
			dest := filepath.Join(fx.out, "f.bin")
			part, _ := receiver.PartialPaths(dest)
			if c.resume {
				interrupted(t, ep, fx.out, "f.bin")
			}
			check := c.plant(t, fx, part)
			res, err := fetchBounded(t, 20*time.Second, nil, receiver.Config{Endpoint: ep, OutputDir: fx.out}, "f.bin")
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Reused != 0 {
				t.Errorf("reused %d bytes of a planted partial file", res[0].Reused)
			}
			sameFile(t, src, dest)
			fx.untouched(t)
			if check != nil {
				check()
			}
			if got := entries(t, fx.out); !slices.Equal(got, []string{"f.bin"}) {
				t.Errorf("output directory holds %v", got)
			}
		})
	}
}

// plantHardlink puts a hard link to the secret at part; its check is that
// the link is gone again.
func plantHardlink(t *testing.T, fx *plantFixture, part string) func() {
	os.Remove(part)
	if err := os.Link(fx.secret, part); err != nil {
		t.Fatal(err)
	}
	return func() {
		var st syscall.Stat_t
		if err := syscall.Stat(fx.secret, &st); err != nil || st.Nlink != 1 {
			t.Errorf("the planted link to the secret is still there (%d links)", st.Nlink)
		}
	}
}

// A symlinked subdirectory on the way to the destination is refused with
// an error naming it; nothing is written where it points. Both the named
// partial file (a large file) and the unnamed one (a one-chunk file) are
// tried, and the symlink both as the last and as an inner directory.
func TestPlantedSymlinkedSubdirectory(t *testing.T) {
	srcDir := filepath.Join(t.TempDir(), "src")
	for _, d := range []string{"sub", "sub/deeper"} {
		if err := os.MkdirAll(filepath.Join(srcDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeRandom(t, filepath.Join(srcDir, "sub"), "big.bin", plantSize)
	writeRandom(t, filepath.Join(srcDir, "sub"), "small.bin", 1000)
	writeRandom(t, filepath.Join(srcDir, "sub/deeper"), "small.bin", 1000)
	ep, _ := serve(t, sender.Config{Paths: []string{srcDir}})
	for _, name := range []string{"src/sub/big.bin", "src/sub/small.bin", "src/sub/deeper/small.bin"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			fx := newPlantFixture(t)
			if err := os.Mkdir(filepath.Join(fx.out, "src"), 0o755); err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Join(fx.outside, "deeper"), 0o755)
			defer os.Remove(filepath.Join(fx.outside, "deeper"))
			link := filepath.Join(fx.out, "src", "sub")
			if err := os.Symlink(fx.outside, link); err != nil {
				t.Fatal(err)
			}
			_, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: fx.out}, name)
			if err == nil {
				t.Fatal("fetched through a symlinked directory")
			}
			if !strings.Contains(err.Error(), link) || !strings.Contains(err.Error(), "symbolic link") {
				t.Errorf("error does not name the symlink %s: %v", link, err)
			}
			if testing.Verbose() {
				t.Log(err)
			}
			os.Remove(filepath.Join(fx.outside, "deeper"))
			fx.untouched(t)
		})
	}
}

// A state file that is a FIFO, a symlink to /dev/zero or a 100 MB file
// beside a real partial file is not read: the fetch neither blocks nor
// allocates the file's size; it starts over and succeeds.
func TestPlantedHostileStateFile(t *testing.T) {
	for _, kind := range []string{"fifo", "dev-zero", "huge"} {
		t.Run(kind, func(t *testing.T) {
			fx := newPlantFixture(t)
			src, ep, _ := serveRandom(t, "f.bin", plantSize, sender.Config{})
			dest := filepath.Join(fx.out, "f.bin")
			interrupted(t, ep, fx.out, "f.bin")
			_, state := receiver.PartialPaths(dest)
			if err := os.Remove(state); err != nil {
				t.Fatal(err)
			}
			var unblock func()
			switch kind {
			case "fifo":
				if err := syscall.Mkfifo(state, 0o600); err != nil {
					t.Fatal(err)
				}
				unblock = func() { // a writer releases a reader blocked in open
					if f, err := os.OpenFile(state, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
						f.Close()
					}
				}
			case "dev-zero":
				if err := os.Symlink("/dev/zero", state); err != nil {
					t.Fatal(err)
				}
			case "huge":
				// Valid JSON at the start, then 100 MB of spaces.
				f, err := os.OpenFile(state, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString(`{"name":"f.bin"}`)
				buf := make([]byte, 1<<20)
				for i := range buf {
					buf[i] = ' '
				}
				for range 100 {
					f.Write(buf)
				}
				f.Close()
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			res, err := fetchBounded(t, 20*time.Second, unblock, receiver.Config{Endpoint: ep, OutputDir: fx.out}, "f.bin")
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Reused != 0 {
				t.Errorf("resumed %d bytes with a %s as state file", res[0].Reused, kind)
			}
			sameFile(t, src, dest)
			// The fetch of a 6 MiB file with the default window allocates
			// some tens of MiB; reading the state file would add 100 MiB.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 80<<20 {
				t.Errorf("the fetch allocated %d MiB", alloc>>20)
			}
			if got := entries(t, fx.out); !slices.Equal(got, []string{"f.bin"}) {
				t.Errorf("output directory holds %v", got)
			}
			fx.untouched(t)
		})
	}
}

// A name whose final component is 255 octets (the most a file system
// allows) is fetched, interrupted, and resumed: the hidden names zrecv
// keeps beside it are short whatever the name's length.
func TestLongNameFetchAndResume(t *testing.T) {
	long := strings.Repeat("n", 251) + ".bin"
	if len(long) != 255 {
		t.Fatal(len(long))
	}
	srcDir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(srcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := writeRandom(t, srcDir, long, plantSize)
	small := writeRandom(t, srcDir, strings.Repeat("s", 255), 100)
	ep, _ := serve(t, sender.Config{Paths: []string{srcDir}})
	out := t.TempDir()
	name := "d/" + long

	interrupted(t, ep, out, name)
	res, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, name, "d/"+filepath.Base(small))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Reused == 0 {
		t.Error("the second fetch did not resume")
	}
	sameFile(t, src, filepath.Join(out, "d", long))
	sameFile(t, small, filepath.Join(out, "d", filepath.Base(small)))
	if got := entries(t, filepath.Join(out, "d")); len(got) != 2 {
		t.Errorf("left behind: %v", got)
	}
	// Over existing destinations too (the one-chunk file is then linked
	// under its hidden name and renamed).
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, NoResume: true}, name, "d/"+filepath.Base(small)); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, filepath.Join(out, "d")); len(got) != 2 {
		t.Errorf("left behind: %v", got)
	}
}

// The hidden names are recognisable and bounded.
func TestPartialPaths(t *testing.T) {
	part, state := receiver.PartialPaths(filepath.Join("out", strings.Repeat("x", 255)))
	for _, p := range []string{part, state} {
		base := filepath.Base(p)
		if filepath.Dir(p) != "out" || !strings.HasPrefix(base, ".zrecv-") || len(base) > 64 {
			t.Errorf("hidden path %q", p)
		}
	}
	if !strings.HasSuffix(part, ".part") || !strings.HasSuffix(state, ".state") {
		t.Errorf("hidden names %q, %q", part, state)
	}
	if p2, _ := receiver.PartialPaths(filepath.Join("out", "y")); p2 == part {
		t.Error("two names share a partial file")
	}
}

// A symlink planted at the destination's own name is replaced by the
// verified file, never written through, for the named partial file (a
// large file) and for the unnamed one (a one-chunk file).
func TestPlantedDestinationSymlink(t *testing.T) {
	for _, size := range []int64{plantSize, 1000} {
		fx := newPlantFixture(t)
		src, ep, _ := serveRandom(t, "f.bin", size, sender.Config{})
		dest := filepath.Join(fx.out, "f.bin")
		if err := os.Symlink(fx.secret, dest); err != nil {
			t.Fatal(err)
		}
		if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: fx.out}, "f.bin"); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(dest); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("destination is not a regular file: %v", err)
		}
		sameFile(t, src, dest)
		fx.untouched(t)
	}
}

// Files in more directories than zrecv keeps open at once are fetched, and
// no directory descriptor is left open afterwards.
func TestManyDirectoriesNoDescriptorLeak(t *testing.T) {
	const dirs = 400 // more than the receiver's cache of open directories
	src := filepath.Join(t.TempDir(), "t")
	var names []string
	for i := range dirs {
		d := filepath.Join(src, fmt.Sprintf("d%03d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeRandom(t, d, "f", 100)
		names = append(names, fmt.Sprintf("t/d%03d/f", i))
	}
	ep, _ := serve(t, sender.Config{Paths: []string{src}})
	out := t.TempDir()
	before := openFDs(t)
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, names...); err != nil {
		t.Fatal(err)
	}
	for i := range dirs {
		sameFile(t, filepath.Join(src, fmt.Sprintf("d%03d", i), "f"), filepath.Join(out, "t", fmt.Sprintf("d%03d", i), "f"))
	}
	// The server may still be closing its side of the session: allow a few.
	var after int
	deadline := time.Now().Add(5 * time.Second)
	for after = openFDs(t); after > before+8 && time.Now().Before(deadline); after = openFDs(t) {
		time.Sleep(20 * time.Millisecond)
	}
	if after > before+8 {
		t.Errorf("%d descriptors open before the fetch, %d after", before, after)
	}
}

// The state file of an interrupted fetch is resumed from only while it is
// ours alone: replaced by a hard link (its content kept, so it would
// parse), or given to another user, it is not trusted: nothing of the
// partial file is reused, and the file still arrives whole.
func TestPlantedStateFileOfInterruptedFetch(t *testing.T) {
	for _, c := range []struct {
		name  string
		plant func(t *testing.T, fx *plantFixture, state string) (check func())
	}{
		{"hardlink", func(t *testing.T, fx *plantFixture, state string) func() {
			other := filepath.Join(fx.outside, "state-copy")
			b, err := os.ReadFile(state)
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(state)
			if err := os.WriteFile(other, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(other, state); err != nil {
				t.Fatal(err)
			}
			return func() {
				if after, err := os.ReadFile(other); err != nil || !bytes.Equal(after, b) {
					t.Errorf("the file the planted state file is linked to was written (%v)", err)
				}
			}
		}},
		{"foreign-owner", func(t *testing.T, fx *plantFixture, state string) func() {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the state file to another user")
			}
			if err := os.Chown(state, 12345, 12345); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newPlantFixture(t)
			src, ep, _ := serveRandom(t, "f.bin", plantSize, sender.Config{})
			dest := filepath.Join(fx.out, "f.bin")
			_, state := receiver.PartialPaths(dest)
			interrupted(t, ep, fx.out, "f.bin")
			if _, err := os.Lstat(state); err != nil {
				t.Fatalf("the interrupted fetch left no state file: %v", err)
			}
			check := c.plant(t, fx, state)
			res, err := fetchBounded(t, 20*time.Second, nil, receiver.Config{Endpoint: ep, OutputDir: fx.out}, "f.bin")
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Reused != 0 {
				t.Errorf("reused %d bytes on the word of a planted state file", res[0].Reused)
			}
			sameFile(t, src, dest)
			if check != nil {
				check()
			}
		})
	}
}
