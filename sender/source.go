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
		c.roots[name] = root{path: real, isDir: fi.IsDir()}
	}
	return c, nil
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
		return nil, fileKey{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not served here", name)}
	}
	path := r.path
	if nested {
		if !r.isDir {
			return nil, fileKey{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not served here", name)}
		}
		real, err := filepath.EvalSymlinks(filepath.Join(r.path, filepath.FromSlash(rest)))
		if err != nil {
			return nil, fileKey{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not served here", name)}
		}
		if !strings.HasPrefix(real, r.path+string(filepath.Separator)) {
			return nil, fileKey{}, &lookupError{protocol.CodeRefused, fmt.Sprintf("%q leads outside the served directory", name)}
		}
		path = real
	}
	// O_NOFOLLOW: a served file swapped for a symlink after start-up is refused.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fileKey{}, &lookupError{protocol.CodeNotFound, fmt.Sprintf("%q is not served here", name)}
		}
		if errors.Is(err, syscall.ELOOP) {
			return nil, fileKey{}, &lookupError{protocol.CodeRefused, fmt.Sprintf("%q is a symbolic link", name)}
		}
		return nil, fileKey{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("opening %q: %v", name, errors.Unwrap(err))}
	}
	key, err := statKey(f)
	if err != nil {
		f.Close()
		return nil, fileKey{}, &lookupError{protocol.CodeInternal, fmt.Sprintf("stat %q: %v", name, err)}
	}
	if key.mode&syscall.S_IFMT != syscall.S_IFREG {
		f.Close()
		return nil, fileKey{}, &lookupError{protocol.CodeRefused, fmt.Sprintf("%q is not a regular file", name)}
	}
	return f, key, nil
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

func statKey(f *os.File) (fileKey, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
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
// cached by chunk index, and one whole-file hasher advances as any session
// reads the next chunk in order.
type fileState struct {
	key       fileKey
	chunkSize int64

	mu       sync.Mutex
	refs     int
	chunks   map[int64]protocol.Hash
	whole    *blake3.Hasher
	wholePos int64
	sum      *protocol.Hash
	elem     *list.Element // position in the cache's idle list when refs == 0
}

// chunkHash returns the hash of the chunk at off whose bytes are data,
// computing it only if no session has yet, and feeds the whole-file hasher
// when data is the next range it needs.
func (fs *fileState) chunkHash(off int64, data []byte) protocol.Hash {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	idx := off / fs.chunkSize
	h, ok := fs.chunks[idx]
	if !ok {
		h = blake3.Sum256(data)
		fs.chunks[idx] = h
	}
	if fs.sum == nil && fs.wholePos == off {
		fs.whole.Write(data)
		fs.wholePos += int64(len(data))
		if fs.wholePos == fs.key.size {
			s := protocol.Hash(fs.whole.Sum(nil))
			fs.sum = &s
		}
	}
	return h
}

// wholeHash returns the whole-file hash, reading and hashing whatever part
// of the file no session has fed in order (for example the prefix a resumed
// transfer skipped). f must be the same version (checked by the caller).
func (fs *fileState) wholeHash(f *os.File, buf []byte) (protocol.Hash, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.sum != nil {
		return *fs.sum, nil
	}
	for fs.wholePos < fs.key.size {
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

func (c *hashCache) acquire(key fileKey, chunkSize int64) *fileState {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs, ok := c.states[key]
	if ok && fs.chunkSize != chunkSize {
		// Same file, other chunk size: cannot share chunk hashes. Rare
		// (sessions negotiate different sizes); use a private state.
		return &fileState{key: key, chunkSize: chunkSize, refs: 1, chunks: map[int64]protocol.Hash{}, whole: blake3.New()}
	}
	if !ok {
		fs = &fileState{key: key, chunkSize: chunkSize, chunks: map[int64]protocol.Hash{}, whole: blake3.New()}
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
