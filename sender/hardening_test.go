package sender

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
)

func TestClampText(t *testing.T) {
	for _, in := range []string{
		"",
		"short",
		strings.Repeat("a", protocol.MaxTextLen),
		strings.Repeat("a", protocol.MaxTextLen+1),
		strings.Repeat("é", 3000),                           // 2-octet runes across the cut
		strings.Repeat("a", protocol.MaxTextLen-4) + "€€€€", // a 3-octet rune on the cut
		"bad \xff\xfe utf-8",
	} {
		out := clampText(in)
		if len(out) > protocol.MaxTextLen || !utf8.ValidString(out) {
			t.Errorf("clampText(%.20q...) = %d octets, valid UTF-8 %v", in, len(out), utf8.ValidString(out))
		}
		if len(in) <= protocol.MaxTextLen && utf8.ValidString(in) && out != in {
			t.Errorf("clampText changed a valid short text %q to %q", in, out)
		}
		// The encoded ERROR must decode.
		frames := protocol.Encode(1, &protocol.Error{Code: protocol.CodeNotFound, Message: out})
		if _, _, err := protocol.Decode(frames); err != nil {
			t.Errorf("ERROR with clamped text: %v", err)
		}
	}
}

// Opening a FIFO, a directory or a device must be refused without
// blocking: the open runs on the serving goroutine.
func TestOpenRegularRefusesWithoutBlocking(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	os.Symlink(filepath.Join(dir, "f"), link)
	for path, want := range map[string]error{
		fifo:        errNotRegular,
		dir:         errNotRegular,
		"/dev/null": errNotRegular,
		link:        syscall.ELOOP,
	} {
		done := make(chan error, 1)
		go func() {
			f, _, err := openRegular(path)
			if f != nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, want) {
				t.Errorf("%s: %v, want %v", path, err, want)
			}
		case <-time.After(2 * time.Second):
			os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0) // release it
			t.Fatalf("%s: open blocked", path)
		}
	}
	f, key, err := openRegular(filepath.Join(dir, "f"))
	if err != nil || key.size != 1 {
		t.Fatalf("regular file: %v %+v", err, key)
	}
	// The descriptor is back in blocking mode.
	fl, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_GETFL, 0)
	if errno != 0 || fl&syscall.O_NONBLOCK != 0 {
		t.Errorf("flags %#x (errno %v): O_NONBLOCK left set", fl, errno)
	}
	f.Close()
}

// Sessions that negotiated different chunk sizes share one state per file
// version, so the whole-file hash is computed once.
func TestHashCacheSharedAcrossChunkSizes(t *testing.T) {
	c := newHashCache(4)
	key := fileKey{ino: 1, size: 10}
	a := c.acquire(key)
	b := c.acquire(key)
	if a != b {
		t.Fatal("two states for one version")
	}
	data := []byte("0123456789")
	h1 := a.chunkHash(0, data)
	if h2 := b.chunkHash(0, data[:4]); h2 == h1 {
		t.Fatal("chunks of different lengths at one offset share a hash")
	}
	if a.sum == nil {
		t.Fatal("whole-file hash not completed by the in-order chunk")
	}
	c.release(a)
	c.release(b)
}

// The whole-file hash of a file sent in one chunk is that chunk's hash,
// taken without a second pass; a file of several chunks is hashed in order,
// and a prefix that was never sent is read back. Both must equal BLAKE3 of
// the whole file.
func TestHashCacheWholeFileHash(t *testing.T) {
	c := newHashCache(4)
	data := []byte("0123456789abcdef")
	one := c.acquire(fileKey{ino: 1, size: int64(len(data))})
	one.chunkHash(0, data)
	if one.sum == nil || *one.sum != protocol.Hash(blake3.Sum256(data)) {
		t.Fatal("one-chunk file: whole-file hash missing or wrong")
	}
	if one.whole != nil {
		t.Fatal("one-chunk file: a whole-file hasher was made")
	}
	two := c.acquire(fileKey{ino: 2, size: int64(len(data))})
	two.chunkHash(0, data[:10])
	if two.sum != nil {
		t.Fatal("whole-file hash complete after the first of two chunks")
	}
	two.chunkHash(10, data[10:])
	if two.sum == nil || *two.sum != protocol.Hash(blake3.Sum256(data)) {
		t.Fatal("two-chunk file: whole-file hash missing or wrong")
	}
	// A resumed transfer: only the second chunk is sent, the prefix is
	// read from the file.
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, data, 0o644)
	f, _ := os.Open(path)
	defer f.Close()
	three := c.acquire(fileKey{ino: 3, size: int64(len(data))})
	three.chunkHash(10, data[10:])
	sum, err := three.wholeHash(f, make([]byte, 4), nil)
	if err != nil || sum != protocol.Hash(blake3.Sum256(data)) {
		t.Fatalf("resumed file: whole-file hash %v, %v", sum, err)
	}
	for _, fs := range []*fileState{one, two, three} {
		c.release(fs)
	}
}

// Names below a served directory are resolved by the kernel beneath it
// (openat2 RESOLVE_BENEATH): a symlink inside that points outside, at any
// depth, is refused; one that stays inside is served.
func TestOpenBeneath(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "secret")
	os.WriteFile(outside, []byte("s"), 0o644)
	dir := filepath.Join(base, "pub")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "ok"), []byte("ok"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "abs-out"))
	os.Symlink("../secret", filepath.Join(dir, "rel-out"))
	os.Symlink("../../secret", filepath.Join(dir, "sub", "deep-out"))
	os.Symlink(base, filepath.Join(dir, "dir-out"))
	os.Symlink("sub/ok", filepath.Join(dir, "in"))
	os.Symlink("sub", filepath.Join(dir, "subdir-in"))
	os.Symlink("../ok", filepath.Join(dir, "sub", "up-ok")) // pub/sub/../ok: stays below
	os.WriteFile(filepath.Join(dir, "ok"), []byte("ok"), 0o644)
	os.Symlink(filepath.Join(dir, "sub", "ok"), filepath.Join(dir, "abs-in"))
	os.Symlink("../pub/sub/ok", filepath.Join(dir, "up-in"))
	os.Symlink("loop", filepath.Join(dir, "loop"))
	c, err := newCatalogue([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	t.Run("openat2", func(t *testing.T) { checkBeneath(t, c) })
	// The same table through the fallback for kernels without openat2.
	fallback := &catalogue{roots: map[string]root{}}
	for k, r := range c.roots {
		r.fd = -1
		fallback.roots[k] = r
	}
	t.Run("fallback", func(t *testing.T) { checkBeneath(t, fallback) })
}

func checkBeneath(t *testing.T, c *catalogue) {
	for name, want := range map[string]protocol.Code{
		"pub/abs-out": protocol.CodeRefused, "pub/rel-out": protocol.CodeRefused,
		"pub/sub/deep-out": protocol.CodeRefused, "pub/dir-out/secret": protocol.CodeRefused,
		"pub/nope": protocol.CodeNotFound, "pub/sub/ok/x": protocol.CodeNotFound,
		// PROTOCOL.md section 6: an absolute link is refused even when it
		// points inside, and so is one that goes above the directory on
		// its way back in.
		"pub/abs-in": protocol.CodeRefused, "pub/up-in": protocol.CodeRefused,
		"pub/loop": protocol.CodeRefused, "pub/subdir-in": protocol.CodeRefused,
	} {
		_, _, err := c.open(name)
		var le *lookupError
		if !errors.As(err, &le) || le.code != want {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	for _, name := range []string{"pub/sub/ok", "pub/in", "pub/subdir-in/ok", "pub/sub/up-ok"} {
		f, _, err := c.open(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		f.Close()
	}
}
