package sender

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/protocol"
)

// catalogue maps served names to paths. Each configured path is served
// under its base name; a configured directory also serves the regular files
// below it as "base/rel/path".
type catalogue struct {
	roots map[string]root
}

type root struct {
	path  string // absolute, symlinks resolved at start-up
	isDir bool
	fd    int // a directory's O_PATH descriptor, for openat2; -1 if none
}

func newCatalogue(paths []string) (*catalogue, error) {
	if len(paths) == 0 {
		return nil, errors.New("no paths to serve")
	}
	c := &catalogue{roots: make(map[string]root)}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("serving %s: %w", p, err)
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, fmt.Errorf("serving %s: %w", p, err)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return nil, fmt.Errorf("serving %s: %w", p, err)
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() {
			return nil, fmt.Errorf("serving %s: not a regular file or directory", p)
		}
		name := filepath.Base(abs)
		if err := protocol.ValidName(name); err != nil {
			return nil, fmt.Errorf("serving %s: %w", p, err)
		}
		if prev, dup := c.roots[name]; dup {
			return nil, fmt.Errorf("serving %s: name %q already serves %s", p, name, prev.path)
		}
		r := root{path: real, isDir: fi.IsDir(), fd: -1}
		if r.isDir {
			if fd, err := unix.Open(real, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
				r.fd = fd
			}
		}
		c.roots[name] = r
	}
	return c, nil
}

// hasDir reports whether a directory (a tree) is served.
func (c *catalogue) hasDir() bool {
	for _, r := range c.roots {
		if r.isDir {
			return true
		}
	}
	return false
}

// close releases the directory descriptors.
func (c *catalogue) close() {
	for _, r := range c.roots {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
	}
}

// lookupError carries the protocol code to send back.
type lookupError struct {
	code protocol.Code
	msg  string
}

func (e *lookupError) Error() string { return e.msg }

// open resolves a requested name and opens it for reading. It refuses
// names that are invalid, unknown, not regular files, or that resolve
// (through symlinks) outside the served root.
func (c *catalogue) open(name string) (*os.File, fileKey, error) {
	if err := protocol.ValidName(name); err != nil {
		return nil, fileKey{}, &lookupError{protocol.CodeRefused, err.Error()}
	}
	first, rest, nested := strings.Cut(name, "/")
	r, ok := c.roots[first]
	if !ok {
		return nil, fileKey{}, &lookupError{protocol.CodeNotFound, "not served here"}
	}
	path := r.path
	if nested && r.isDir && r.fd >= 0 {
		f, key, err := openBeneath(r.fd, rest)
		if !errors.Is(err, unix.ENOSYS) {
			return f, key, lookupFailure(name, err)
		}
	}
	if nested {
		if !r.isDir {
			return nil, fileKey{}, &lookupError{protocol.CodeNotFound, "not served here"}
		}
		// No openat2 (Linux before 5.6): resolve with the same rules,
		// then open the result without following a link.
		real, err := resolveBeneath(r.path, rest)
		if err != nil {
			return nil, fileKey{}, lookupFailure(name, err)
		}
		path = real
	}
	f, key, err := openRegular(path)
	return f, key, lookupFailure(name, err)
}

// lookupFailure turns an open error into the ERROR to send (nil stays nil).
func lookupFailure(name string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return &lookupError{protocol.CodeNotFound, "not served here"}
	case errors.Is(err, syscall.EXDEV):
		return &lookupError{protocol.CodeRefused, "leads outside the served directory"}
	case errors.Is(err, syscall.ELOOP):
		return &lookupError{protocol.CodeRefused, "a symbolic link, not followed"}
	case errors.Is(err, errNotRegular):
		return &lookupError{protocol.CodeRefused, "not a regular file"}
	}
	return &lookupError{protocol.CodeInternal, fmt.Sprintf("cannot open: %v", errors.Unwrap(err))}
}

// openBeneath opens rel below the directory dirfd in one system call,
// with the kernel refusing any resolution that leaves the directory
// (RESOLVE_BENEATH: "..", absolute symlinks, symlinks pointing outside).
// Unlike resolving first and opening after, nothing can be swapped in
// between, and it costs one call instead of an lstat per component.
func openBeneath(dirfd int, rel string) (*os.File, fileKey, error) {
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fileKey{}, &os.PathError{Op: "openat2", Path: rel, Err: err}
	}
	return adoptRegular(fd, rel)
}

// resolveBeneath resolves rel below the directory root by the rules of
// RESOLVE_BENEATH, for kernels without openat2: a symbolic link is
// followed only if its target is relative and no step of the resolution
// goes above root (EXDEV otherwise). It returns the resolved path. It
// resolves, then the caller opens: unlike openat2 this leaves a window in
// which a component can be swapped, which only matters on those kernels.
func resolveBeneath(root, rel string) (string, error) {
	const maxLinks = 40 // as the kernel's ELOOP bound
	parts := strings.Split(rel, "/")
	var done []string // resolved components below root, none a link
	links := 0
	for len(parts) > 0 {
		p := parts[0]
		parts = parts[1:]
		switch p {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", &os.PathError{Op: "resolve", Path: rel, Err: syscall.EXDEV}
			}
			done = done[:len(done)-1]
			continue
		}
		cur := filepath.Join(root, filepath.Join(done...), p)
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			done = append(done, p)
			continue
		}
		if links++; links > maxLinks {
			return "", &os.PathError{Op: "resolve", Path: rel, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			return "", &os.PathError{Op: "resolve", Path: rel, Err: syscall.EXDEV}
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return filepath.Join(root, filepath.Join(done...)), nil
}

var errNotRegular = errors.New("not a regular file")

// openRegular opens path for reading only if it is a regular file.
// O_NOFOLLOW refuses a served file swapped for a symlink after start-up.
// O_NONBLOCK keeps the open itself from blocking: opening a FIFO for
// reading would otherwise wait for a writer, and hold the serving
// goroutine (and so every session) until one came. The descriptor is
// checked with fstat before anything is read, and O_NONBLOCK is cleared
// (it means nothing for regular files anyway).
func openRegular(path string) (*os.File, fileKey, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fileKey{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return adoptRegular(fd, path)
}

// adoptRegular takes a descriptor opened with O_NONBLOCK and keeps it only
// if it is a regular file.
func adoptRegular(fd int, path string) (*os.File, fileKey, error) {
	key, err := statFD(fd)
	if err == nil && key.mode&syscall.S_IFMT != syscall.S_IFREG {
		err = errNotRegular
	}
	if err == nil {
		// Before os.NewFile, which would hand a non-blocking descriptor
		// to the network poller.
		err = syscall.SetNonblock(fd, false)
	}
	if err != nil {
		syscall.Close(fd)
		return nil, fileKey{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), key, nil
}

// fileKey identifies one version of a file: if any field changes, the
// content may have changed.
type fileKey struct {
	dev, ino uint64
	size     int64
	mtimeNS  int64
	ctimeNS  int64
	mode     uint32
}

func statKey(f *os.File) (fileKey, error) { return statFD(int(f.Fd())) }

func statFD(fd int) (fileKey, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fileKey{}, err
	}
	return fileKey{
		dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mode: st.Mode,
		mtimeNS: st.Mtim.Nano(), ctimeNS: st.Ctim.Nano(),
	}, nil
}

// tag derives the wire version tag from the key.
func (k fileKey) tag() protocol.Tag {
	var b [48]byte
	binary.BigEndian.PutUint64(b[0:], k.dev)
	binary.BigEndian.PutUint64(b[8:], k.ino)
	binary.BigEndian.PutUint64(b[16:], uint64(k.size))
	binary.BigEndian.PutUint64(b[24:], uint64(k.mtimeNS))
	binary.BigEndian.PutUint64(b[32:], uint64(k.ctimeNS))
	binary.BigEndian.PutUint32(b[40:], k.mode)
	sum := blake3.Sum256(b[:])
	var t protocol.Tag
	copy(t[:], sum[:])
	return t
}

// errChanged means the source changed while it was being sent.
var errChanged = errors.New("source file changed while being sent")

// fileState is shared by every session sending the same version of a file,
// so that a file served to many receivers is hashed once: chunk hashes are
// cached by offset and length, and one whole-file hasher advances as any
// session reads the next chunk in order. Sessions that negotiated
// different chunk sizes share it too: the whole-file hash does not depend
// on the chunk size, so a receiver cannot make the server hash the same
// version again and again by asking each time, with a chunk size of its
// own, to resume at the end of the file.
type fileState struct {
	key fileKey

	mu       sync.Mutex
	refs     int
	chunks   map[chunkID]protocol.Hash
	whole    *blake3.Hasher // nil until needed (never for a file of one chunk)
	wholePos int64
	sum      *protocol.Hash
	elem     *list.Element // position in the cache's idle list when refs == 0
}

// chunkID names a chunk by its place in the file, whatever the chunk size.
type chunkID struct{ off, n int64 }

// maxCachedChunks bounds the chunk hashes one fileState keeps (about
// 1 MiB; 16 GiB of file at the default chunk size): a receiver that picks
// the smallest chunk size for a very large file must not make the server
// keep a hash for every 4 KiB of it. Beyond the bound, hashes are computed
// and not kept.
const maxCachedChunks = 1 << 14

// chunkHash returns the hash of the chunk at off whose bytes are data,
// computing it only if no session has yet, and feeds the whole-file hasher
// when data is the next range it needs.
func (fs *fileState) chunkHash(off int64, data []byte) protocol.Hash {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	id := chunkID{off, int64(len(data))}
	h, ok := fs.chunks[id]
	if !ok {
		h = blake3.Sum256(data)
		if len(fs.chunks) < maxCachedChunks {
			fs.chunks[id] = h
		}
	}
	if fs.sum == nil && off == 0 && int64(len(data)) == fs.key.size {
		// The file is this one chunk: its hash is the file's.
		s := h
		fs.sum = &s
	}
	if fs.sum == nil && fs.wholePos == off {
		if fs.whole == nil {
			fs.whole = blake3.New()
		}
		fs.whole.Write(data)
		fs.wholePos += int64(len(data))
		if fs.wholePos == fs.key.size {
			s := protocol.Hash(fs.whole.Sum(nil))
			fs.sum = &s
		}
	}
	return h
}

// errStopped means the transfer was halted while the producer worked.
var errStopped = errors.New("transfer halted")

// wholeHash returns the whole-file hash, reading and hashing whatever part
// of the file no session has fed in order (for example the prefix a resumed
// transfer skipped). f must be the same version (checked by the caller). It
// gives up with errStopped as soon as stop is closed; what it hashed so far
// stays for the next session.
func (fs *fileState) wholeHash(f *os.File, buf []byte, stop <-chan struct{}) (protocol.Hash, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.sum != nil {
		return *fs.sum, nil
	}
	if fs.whole == nil {
		fs.whole = blake3.New()
	}
	for fs.wholePos < fs.key.size {
		select {
		case <-stop:
			return protocol.Hash{}, errStopped
		default:
		}
		n := int64(len(buf))
		if rem := fs.key.size - fs.wholePos; rem < n {
			n = rem
		}
		got, err := f.ReadAt(buf[:n], fs.wholePos)
		if int64(got) != n {
			if err == nil || err == io.EOF {
				err = errChanged
			}
			return protocol.Hash{}, err
		}
		fs.whole.Write(buf[:n])
		fs.wholePos += n
	}
	s := protocol.Hash(fs.whole.Sum(nil))
	fs.sum = &s
	return s, nil
}

// hashCache holds fileStates: the ones in use, plus up to maxIdle recently
// used ones so a receiver arriving just after another still finds the work
// done. Stale versions never match because the key includes mtime and ctime.
type hashCache struct {
	mu      sync.Mutex
	states  map[fileKey]*fileState
	idle    *list.List
	maxIdle int
}

func newHashCache(maxIdle int) *hashCache {
	return &hashCache{states: make(map[fileKey]*fileState), idle: list.New(), maxIdle: maxIdle}
}

func (c *hashCache) acquire(key fileKey) *fileState {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs, ok := c.states[key]
	if !ok {
		fs = &fileState{key: key, chunks: map[chunkID]protocol.Hash{}} // whole: on first use
		c.states[key] = fs
	}
	if fs.elem != nil {
		c.idle.Remove(fs.elem)
		fs.elem = nil
	}
	fs.refs++
	return fs
}

func (c *hashCache) release(fs *fileState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs.refs--
	if fs.refs > 0 || c.states[fs.key] != fs {
		return
	}
	fs.elem = c.idle.PushFront(fs)
	for c.idle.Len() > c.maxIdle {
		old := c.idle.Remove(c.idle.Back()).(*fileState)
		old.elem = nil
		delete(c.states, old.key)
	}
}
