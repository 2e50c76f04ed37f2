// Package store is the publisher's content-addressed store: one immutable
// copy of every distinct file content that a kept version references, named
// by its BLAKE3-256 (store/ab/<64 hex digits>, mode 0400).
//
// A blob is written under a temporary name, fsynced, then renamed into
// place, so a name in the store always holds exactly the content it names.
// Copying from a live source hashes while it copies, and checks with fstat
// before and after that the source did not change meanwhile; a changed
// source is reported (ErrChanged) and nothing is stored. Where the file
// system supports it, the copy is a reflink (FICLONE) and costs no space
// until either side changes.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// Hash is a BLAKE3-256 digest, the name of a blob.
type Hash [32]byte

// ErrChanged means the source file changed while it was being copied.
var ErrChanged = errors.New("source changed while being copied")

// Store is a content-addressed directory. Its methods are safe for
// concurrent use.
type Store struct {
	dir string
}

// Open creates (if needed) and opens the store at dir, and removes the
// temporary files a crash may have left.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("opening store %s: %w", dir, err)
	}
	tmp := filepath.Join(dir, "tmp")
	names, _ := readNames(tmp)
	for _, n := range names {
		os.RemoveAll(filepath.Join(tmp, n)) // a file, or a batch's directory
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path is where the blob of h lives.
func (s *Store) Path(h Hash) string {
	x := hex.EncodeToString(h[:])
	return filepath.Join(s.dir, x[:2], x)
}

// Has reports whether the blob of h is in the store.
func (s *Store) Has(h Hash) bool {
	var st unix.Stat_t
	return unix.Lstat(s.Path(h), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// OpenBlob opens the blob of h for reading.
func (s *Store) OpenBlob(h Hash) (*os.File, error) {
	fd, err := unix.Open(s.Path(h), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: s.Path(h), Err: err}
	}
	return os.NewFile(uintptr(fd), s.Path(h)), nil
}

// Stat is what Put compares before and after a copy to tell whether the
// source changed.
type Stat struct {
	Dev, Ino       uint64
	Size           int64
	MtimeNs, Ctime int64
	Mode           uint32
}

// FStat returns the Stat of an open file.
func FStat(f *os.File) (Stat, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Stat{}, err
	}
	return StatOf(&st), nil
}

// StatOf converts a unix.Stat_t.
func StatOf(st *unix.Stat_t) Stat {
	return Stat{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, MtimeNs: st.Mtim.Nano(), Ctime: st.Ctim.Nano(), Mode: st.Mode}
}

// Put copies src (open for reading, at any position) into the store and
// returns its hash and size, durably: it is one Batch of one file.
func (s *Store) Put(src *os.File, before Stat, buf []byte) (Hash, int64, error) {
	b := s.Begin()
	h, n, err := b.Put(src, before, buf)
	if err != nil {
		b.Abort()
		return Hash{}, 0, err
	}
	return h, n, b.Commit()
}

// Batch stores many files with two file-system syncs in all instead of two
// fsyncs per file (a tree of 10,000 small files would otherwise spend most
// of its publishing time waiting for the disk). Blobs are written under
// temporary names; Commit syncs them, renames them into place and syncs the
// renames. Until Commit returns, none of them is in the store, so a crash
// never leaves a blob whose name does not match durable content.
//
// The pending blobs are the batch's own directory (tmp/batch-<random>/<64
// hex>), not a set in memory: a first publish of a tree of 10^5 files
// would otherwise hold 10^5 hashes in a map until Commit.
type Batch struct {
	s       *Store
	dir     string          // tmp/batch-<random>, made at the first Put
	made    bool            // dir exists
	pending int             // blobs waiting in dir
	dirs    map[string]bool // store subdirectories known to exist
}

// Begin starts a batch. A batch is not safe for concurrent use.
func (s *Store) Begin() *Batch {
	var r [8]byte
	rand.Read(r[:])
	return &Batch{s: s, dir: filepath.Join(s.dir, "tmp", "batch-"+hex.EncodeToString(r[:])), dirs: map[string]bool{}}
}

// pendingPath is where the batch keeps the blob of h until Commit.
func (b *Batch) pendingPath(h Hash) string {
	return filepath.Join(b.dir, hex.EncodeToString(h[:]))
}

// Has reports whether h is in the store or pending in the batch.
func (b *Batch) Has(h Hash) bool {
	if b.s.Has(h) {
		return true
	}
	if b.pending == 0 {
		return false
	}
	var st unix.Stat_t
	return unix.Lstat(b.pendingPath(h), &st) == nil
}

// Put copies src into a temporary file of the batch, hashing it. before
// is src's Stat taken when it was opened; if src differs from it after the
// copy (or its length differs), Put returns ErrChanged and keeps nothing.
// Content already stored (or pending) is not kept twice. buf is scratch.
func (b *Batch) Put(src *os.File, before Stat, buf []byte) (Hash, int64, error) {
	if !b.made {
		if err := os.Mkdir(b.dir, 0o700); err != nil {
			return Hash{}, 0, fmt.Errorf("store: %w", err)
		}
		b.made = true
	}
	tmp, err := b.s.tempFile(b.dir)
	if err != nil {
		return Hash{}, 0, err
	}
	tmpName := tmp.Name()
	keep := false
	defer func() {
		tmp.Close()
		if !keep {
			os.Remove(tmpName)
		}
	}()
	h, n, err := b.s.fill(tmp, src, before, buf)
	if err != nil {
		return Hash{}, 0, err
	}
	after, err := FStat(src)
	if err != nil {
		return Hash{}, 0, fmt.Errorf("stat of source after copy: %w", err)
	}
	if after != before || n != before.Size {
		return Hash{}, 0, ErrChanged
	}
	if b.s.Has(h) {
		return h, n, nil // same content stored already: the copy is dropped
	}
	if err := tmp.Chmod(0o400); err != nil {
		return Hash{}, 0, fmt.Errorf("store: %w", err)
	}
	// Pending already (the same content earlier in the batch): the copy
	// is dropped too. The name is taken without replacing, which tells.
	switch err := renameNoReplace(tmpName, b.pendingPath(h)); {
	case errors.Is(err, unix.EEXIST):
		return h, n, nil
	case err != nil:
		return Hash{}, 0, fmt.Errorf("store: %w", err)
	}
	keep = true
	b.pending++
	return h, n, nil
}

// renameNoReplace renames from to to unless to exists (EEXIST). Where the
// file system cannot rename without replacing, it checks first (a batch
// is not used concurrently, so nothing else adds names to its directory).
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return err
	}
	var st unix.Stat_t
	if unix.Lstat(to, &st) == nil {
		return unix.EEXIST
	}
	return os.Rename(from, to)
}

// Len is the number of blobs the batch will add.
func (b *Batch) Len() int { return b.pending }

// Commit makes the batch's blobs durable and puts them in place: a sync of
// the store's file system (the data), the renames, and another sync (the
// directory entries). On error, what was not renamed is removed.
func (b *Batch) Commit() error {
	if b.pending == 0 {
		b.Abort() // the directory, if a Put made it
		return nil
	}
	defer b.Abort() // whatever was not renamed
	if err := b.s.syncFS(); err != nil {
		return err
	}
	// The pending blobs are listed a slice at a time, each renamed out as
	// it is read; a pass that renames nothing more ends it (entries
	// renamed out while the directory is read do not hide the others, but
	// the extra pass does not rely on that).
	for {
		moved, err := b.commitPass()
		if err != nil {
			return err
		}
		if moved == 0 {
			break
		}
	}
	if b.pending != 0 {
		return fmt.Errorf("store: %d pending blobs went missing before the commit", b.pending)
	}
	return b.s.syncFS()
}

func (b *Batch) commitPass() (int, error) {
	f, err := os.Open(b.dir)
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	moved := 0
	for {
		names, err := f.Readdirnames(1024)
		for _, n := range names {
			var h Hash
			if len(n) != 2*len(h) {
				continue // a copy in progress (none once Put returned)
			}
			if _, err := hex.Decode(h[:], []byte(n)); err != nil {
				continue
			}
			final := b.s.Path(h)
			dir := filepath.Dir(final)
			if !b.dirs[dir] {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return moved, fmt.Errorf("store: %w", err)
				}
				b.dirs[dir] = true
			}
			if err := os.Rename(filepath.Join(b.dir, n), final); err != nil {
				return moved, fmt.Errorf("store: %w", err)
			}
			b.pending--
			moved++
		}
		if err == io.EOF {
			return moved, nil
		}
		if err != nil {
			return moved, fmt.Errorf("store: %w", err)
		}
	}
}

// Abort removes the batch's temporary files.
func (b *Batch) Abort() {
	if b.made {
		os.RemoveAll(b.dir)
		b.made = false
	}
	b.pending = 0
}

// syncFS flushes the store's file system (syncfs(2)).
func (s *Store) syncFS() error {
	fd, err := unix.Open(s.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("store: syncfs: %w", err)
	}
	return nil
}

// fill copies src into tmp and hashes it: by reflink when the file system
// can (then hashing the private clone, which nothing else can change), by
// reading and writing otherwise (hashing the bytes as they pass).
func (s *Store) fill(tmp, src *os.File, before Stat, buf []byte) (Hash, int64, error) {
	if before.Size > 0 && unix.IoctlFileClone(int(tmp.Fd()), int(src.Fd())) == nil {
		hs := blake3.New()
		n, err := io.CopyBuffer(hs, io.NewSectionReader(tmp, 0, 1<<62), buf)
		if err != nil {
			return Hash{}, 0, fmt.Errorf("store: hashing clone: %w", err)
		}
		return Hash(hs.Sum(nil)), n, nil
	}
	hs := blake3.New()
	var off int64
	for {
		k, err := src.ReadAt(buf, off)
		if k > 0 {
			hs.Write(buf[:k])
			if _, werr := tmp.Write(buf[:k]); werr != nil {
				return Hash{}, 0, fmt.Errorf("store: writing copy: %w", werr)
			}
			off += int64(k)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return Hash{}, 0, fmt.Errorf("reading source: %w", err)
		}
		if off > before.Size {
			return Hash{}, 0, ErrChanged // grew while copying
		}
	}
	return Hash(hs.Sum(nil)), off, nil
}

// tempFile creates a new temporary file in dir (tmp/ or a batch's).
func (s *Store) tempFile(dir string) (*os.File, error) {
	var r [8]byte
	rand.Read(r[:])
	name := filepath.Join(dir, hex.EncodeToString(r[:]))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return f, nil
}

// Remove deletes the blob of h (no error if it is already gone).
func (s *Store) Remove(h Hash) error {
	if err := os.Remove(s.Path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// GC removes every blob for which keep is false, and reports how many it
// removed. A caller must not Put concurrently with GC: a blob stored
// meanwhile and not yet kept would be removed.
func (s *Store) GC(keep func(Hash) bool) (int, error) {
	subs, err := readNames(s.dir)
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	removed := 0
	for _, sub := range subs {
		if len(sub) != 2 {
			continue
		}
		names, err := readNames(filepath.Join(s.dir, sub))
		if err != nil {
			continue
		}
		for _, n := range names {
			var h Hash
			if b, err := hex.DecodeString(n); err != nil || len(b) != len(h) {
				continue
			} else {
				copy(h[:], b)
			}
			if keep(h) {
				continue
			}
			if os.Remove(filepath.Join(s.dir, sub, n)) == nil {
				removed++
			}
		}
	}
	return removed, nil
}

// Empty reports whether the store holds no blob (then nothing needs
// collecting until something is removed from what is kept).
func (s *Store) Empty() (bool, error) {
	subs, err := readNames(s.dir)
	if err != nil {
		return false, fmt.Errorf("store: %w", err)
	}
	for _, sub := range subs {
		if len(sub) != 2 {
			continue
		}
		names, err := readNames(filepath.Join(s.dir, sub))
		if err != nil || len(names) != 0 {
			return false, nil
		}
	}
	return true, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// syncDir fsyncs a directory, making the renames in it durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store: fsync %s: %w", dir, err)
	}
	return nil
}

// SyncDir fsyncs a directory (exported for the publisher's state files).
func SyncDir(dir string) error { return syncDir(dir) }
