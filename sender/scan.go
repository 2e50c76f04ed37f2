package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// The scanner turns a served directory into a manifest. It walks with
// openat/fstatat relative to directory descriptors and never follows a
// symlink: a symlink is published as a symlink (its target text), and a
// directory is opened with O_NOFOLLOW|O_DIRECTORY and checked by fstat to
// be the directory fstatat saw. Each new regular file is copied into the
// store while it is hashed (store.Put), so what a version lists is exactly
// what the store keeps, whatever happens to the source afterwards.

// statKeyOf is the part of a stat that, unchanged, means unchanged content
// (the stat cache's key).
type statKeyOf struct {
	dev, ino        uint64
	size            int64
	mtimeNs, ctimeN int64
}

// statCache remembers, for the files of one scan's manifest, what makes
// their hash trustworthy at the next scan: device, inode and ctime, beside
// the size and mtime the manifest holds already. It is aligned with the
// manifest's entries, so it costs one small record per entry and no second
// copy of any path (a tree of 100,000 entries: about 2.4 MiB).
type statCache struct {
	m   *manifest.Manifest
	ext []fileExtra // ext[i] describes m.Entries[i]
}

// fileExtra is 24 octets: the zero value (a ctime of 0, which no file
// has) is a record the cache does not trust, so no flag is needed.
type fileExtra struct {
	dev, ino uint64
	ctimeNs  int64 // 0: not trusted (not a regular file, or its stat too recent to vouch for its content)
}

func (x fileExtra) trusted() bool { return x.ctimeNs != 0 }

// dirExtra is what the stat cache keeps of a directory: its device and
// inode, which tell an incremental scan whether it is still the same
// directory (never trusted as a file's record: its ctime is 0).
func dirExtra(st *unix.Stat_t) fileExtra { return fileExtra{dev: uint64(st.Dev), ino: st.Ino} }

// lookup returns the hash of path if its stat k is the one cached.
func (c *statCache) lookup(path string, k statKeyOf) (store.Hash, bool) {
	if c == nil {
		return store.Hash{}, false
	}
	es := c.m.Entries
	i := sort.Search(len(es), func(i int) bool { return es[i].Path >= path })
	if i == len(es) || es[i].Path != path || es[i].Type != manifest.TypeFile {
		return store.Hash{}, false
	}
	e, x := &es[i], c.ext[i]
	if !x.trusted() || x.dev != k.dev || x.ino != k.ino || x.ctimeNs != k.ctimeN || e.Size != uint64(k.size) || e.MtimeNs != k.mtimeNs {
		return store.Hash{}, false
	}
	return store.Hash(e.Hash), true
}

// copyRetries bounds the attempts to copy a file that keeps changing
// while it is copied; after them the whole scan fails and the previous
// version stays the latest.
const copyRetries = 3

// errUnstable: a file kept changing during the scan.
var errUnstable = errors.New("a file kept changing while it was being published")

// racyWindow: a file whose ctime is this close to the scan's start is not
// trusted to the stat cache next time (it may change again within the
// file system's timestamp granularity without its stat changing).
const racyWindow = 2 * time.Second

// scanClock is the scan's notion of now (tests move it).
var scanClock = time.Now

// testHookBeforePut, if set, runs between the open (and fstat) of a file
// and its copy: tests change the file there.
var testHookBeforePut func(path string)

type scanner struct {
	ctx     context.Context // a scan stops between entries once it is done
	st      *store.Batch
	old     *statCache // from the previous scan; nil at first
	cache   *statCache // built by this scan
	skipped func(path, why string)
	buf     []byte
	start   time.Time
	// The entries found, in chunks of entryChunk: one slice grown by
	// appending would copy itself again and again, and a collection that
	// starts while it grows counts the old array and the new one as live,
	// doubling what the collector lets the heap reach (a tree of 10^5
	// entries: 20 MiB more). They are assembled once, at the end.
	entries [][]manifest.Entry
	extras  [][]fileExtra // extras[i][j] for entries[i][j]
	n       int           // entries in all
	dirs    []string      // every directory path, for the watcher ("" = root)
	stored  int           // files copied into the store
	hashed  int           // files hashed and found stored already (no copy)
	// hashFirst: hash a file the stat cache does not vouch for before
	// copying it, as its content is probably stored already.
	hashFirst bool
	// trustStore: a file the stat cache vouches for is taken as stored
	// without looking (incremental scans: scandirty.go).
	trustStore bool
	// descend, when set, tells walk whether to walk a directory found
	// (with its fstat); a directory not walked still gets its entry.
	descend func(path string, st *unix.Stat_t) bool
}

// scanTree scans the directory root. old is the previous stat cache (may
// be nil); the new one is in s.cache afterwards.
//
// New file contents go into the batch st; the caller commits it before it
// publishes the manifest, or aborts it.
func scanTree(ctx context.Context, root string, st *store.Batch, old *statCache, hashFirst bool, skipped func(path, why string)) (*scanner, *manifest.Manifest, error) {
	s := &scanner{ctx: ctx, st: st, old: old, skipped: skipped, hashFirst: hashFirst,
		buf: make([]byte, 256<<10), start: scanClock()}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	var rst unix.Stat_t
	if err := unix.Fstat(fd, &rst); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	s.add(manifest.Entry{Path: "", Type: manifest.TypeDir, Mode: rst.Mode & 0o7777, MtimeNs: rst.Mtim.Nano()}, dirExtra(&rst))
	s.dirs = append(s.dirs, "")
	if err := s.walk(fd, ""); err != nil {
		return nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	m, err := s.manifest()
	if err != nil {
		return nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	return s, m, nil
}

// manifest assembles the entries found into the scan's manifest, sorted
// and validated, and makes the stat cache (s.cache) aligned with it.
func (s *scanner) manifest() (*manifest.Manifest, error) {
	entries, extras := s.assemble()
	sort.Sort(byPath{entries, extras})
	m := &manifest.Manifest{Entries: entries}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	s.cache = &statCache{m: m, ext: extras}
	return m, nil
}

// entryChunk is how many entries the scan keeps per chunk.
const entryChunk = 2048

func (s *scanner) add(e manifest.Entry, x fileExtra) {
	if k := len(s.entries); k == 0 || len(s.entries[k-1]) == entryChunk {
		s.entries = append(s.entries, make([]manifest.Entry, 0, entryChunk))
		s.extras = append(s.extras, make([]fileExtra, 0, entryChunk))
	}
	k := len(s.entries) - 1
	s.entries[k] = append(s.entries[k], e)
	s.extras[k] = append(s.extras[k], x)
	s.n++
}

// collectAround is the number of entries from which assemble has the
// garbage collected before and after it copies (see there).
const collectAround = 1 << 14

// assemble moves the chunks into one slice each of exactly the entries
// found, releasing every chunk as it is copied.
//
// For a large tree it runs a collection before and after: the two big
// allocations here would otherwise likely start one while the chunks are
// still live, which counts the entries twice and lets the heap grow to
// twice that before the next collection (the peak memory of publishing a
// tree of 10^5 entries: 20 MiB more). Each costs a few milliseconds, next
// to the seconds such a scan takes.
func (s *scanner) assemble() ([]manifest.Entry, []fileExtra) {
	big := s.n >= collectAround
	if big {
		runtime.GC()
	}
	entries := make([]manifest.Entry, 0, s.n)
	extras := make([]fileExtra, 0, s.n)
	for i := range s.entries {
		entries = append(entries, s.entries[i]...)
		extras = append(extras, s.extras[i]...)
		s.entries[i], s.extras[i] = nil, nil
	}
	s.entries, s.extras = nil, nil
	if big {
		runtime.GC()
	}
	return entries, extras
}

// byPath sorts entries bytewise by path, keeping extras aligned.
type byPath struct {
	e []manifest.Entry
	x []fileExtra
}

func (b byPath) Len() int           { return len(b.e) }
func (b byPath) Less(i, j int) bool { return b.e[i].Path < b.e[j].Path }
func (b byPath) Swap(i, j int) {
	b.e[i], b.e[j] = b.e[j], b.e[i]
	b.x[i], b.x[j] = b.x[j], b.x[i]
}

// walk scans the directory open at fd (which it closes), whose path
// relative to the root is rel.
func (s *scanner) walk(fd int, rel string) error {
	dir := os.NewFile(uintptr(fd), rel)
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("reading directory %q: %w", rel, err)
	}
	for _, name := range names {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		path := name
		if rel != "" {
			path = rel + "/" + name
		}
		if err := protocol.ValidName(path); err != nil {
			s.skipped(path, fmt.Sprintf("name cannot be published: %v", err))
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed since the listing: not part of this version
			}
			if denied(err) {
				s.skipped(path, "cannot stat (permission denied)")
				continue
			}
			return fmt.Errorf("stat of %q: %w", path, err)
		}
		mode := st.Mode & 0o7777
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				if denied(err) {
					s.skipped(path, "directory not readable (permission denied): left out with everything below it")
					continue
				}
				return fmt.Errorf("opening directory %q: %w", path, err)
			}
			var st2 unix.Stat_t
			if err := unix.Fstat(sub, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
				unix.Close(sub)
				return fmt.Errorf("%w: directory %q replaced during the scan", errUnstable, path)
			}
			s.add(manifest.Entry{Path: path, Type: manifest.TypeDir, Mode: st2.Mode & 0o7777, MtimeNs: st2.Mtim.Nano()}, dirExtra(&st2))
			s.dirs = append(s.dirs, path)
			if s.descend != nil && !s.descend(path, &st2) {
				unix.Close(sub)
				continue
			}
			if err := s.walk(sub, path); err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := readlinkat(fd, name)
			if err != nil {
				if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
					continue
				}
				return fmt.Errorf("reading symlink %q: %w", path, err)
			}
			if target == "" || len(target) > manifest.MaxTargetLen {
				s.skipped(path, "symlink target empty or too long")
				continue
			}
			s.add(manifest.Entry{Path: path, Type: manifest.TypeSymlink, Mode: mode, MtimeNs: st.Mtim.Nano(), Target: target}, fileExtra{})
		case unix.S_IFREG:
			e, x, ok, err := s.file(fd, name, path, &st)
			if err != nil {
				return err
			}
			if ok {
				s.add(e, x)
			}
		default:
			s.skipped(path, "not a regular file, directory or symlink ("+fileKind(st.Mode)+")")
		}
	}
	return nil
}

// file publishes one regular file: from the stat cache if its stat is
// unchanged and its blob is still stored, else by copying it into the
// store (retrying a few times if it changes meanwhile).
func (s *scanner) file(dirfd int, name, path string, lst *unix.Stat_t) (manifest.Entry, fileExtra, bool, error) {
	k := statKeyOf{dev: uint64(lst.Dev), ino: lst.Ino, size: lst.Size, mtimeNs: lst.Mtim.Nano(), ctimeN: lst.Ctim.Nano()}
	if h, ok := s.old.lookup(path, k); ok && (s.trustStore || s.st.Has(h)) {
		return manifest.Entry{Path: path, Type: manifest.TypeFile, Mode: lst.Mode & 0o7777, MtimeNs: k.mtimeNs, Size: uint64(k.size), Hash: h}, s.extra(k), true, nil
	}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return manifest.Entry{}, fileExtra{}, false, nil
			}
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) {
				if attempt < copyRetries {
					continue
				}
				return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("%w: %q was replaced during the scan", errUnstable, path)
			}
			if denied(err) {
				s.skipped(path, "file not readable (permission denied)")
				return manifest.Entry{}, fileExtra{}, false, nil
			}
			return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("opening %q: %w", path, err)
		}
		f := os.NewFile(uintptr(fd), path)
		before, err := store.FStat(f)
		if err != nil {
			f.Close()
			return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("stat of %q: %w", path, err)
		}
		if before.Mode&unix.S_IFMT != unix.S_IFREG {
			f.Close()
			if attempt < copyRetries {
				continue
			}
			return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("%w: %q was replaced during the scan", errUnstable, path)
		}
		unix.SetNonblock(fd, false)
		if testHookBeforePut != nil {
			testHookBeforePut(path)
		}
		if s.hashFirst {
			// Probably content the store holds already (a restart, or a
			// file too recent for the cache last time): hash it without
			// writing a copy, and copy only if the store lacks it.
			if h, ok := s.storedAlready(f, before); ok {
				f.Close()
				k = statKeyOf{dev: before.Dev, ino: before.Ino, size: before.Size, mtimeNs: before.MtimeNs, ctimeN: before.Ctime}
				s.hashed++
				return manifest.Entry{Path: path, Type: manifest.TypeFile, Mode: before.Mode & 0o7777, MtimeNs: before.MtimeNs, Size: uint64(before.Size), Hash: h}, s.extra(k), true, nil
			}
		}
		h, n, err := s.st.Put(f, before, s.buf)
		f.Close()
		if errors.Is(err, store.ErrChanged) {
			if attempt < copyRetries {
				continue
			}
			return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("%w: %q changed during %d copies", errUnstable, path, attempt+1)
		}
		if err != nil {
			return manifest.Entry{}, fileExtra{}, false, fmt.Errorf("publishing %q: %w", path, err)
		}
		s.stored++
		k = statKeyOf{dev: before.Dev, ino: before.Ino, size: before.Size, mtimeNs: before.MtimeNs, ctimeN: before.Ctime}
		return manifest.Entry{Path: path, Type: manifest.TypeFile, Mode: before.Mode & 0o7777, MtimeNs: before.MtimeNs, Size: uint64(n), Hash: h}, s.extra(k), true, nil
	}
}

// extra is what the stat cache keeps of a file; it is trusted at the next
// scan unless its stat is too recent to vouch for its content.
func (s *scanner) extra(k statKeyOf) fileExtra {
	racy := s.start.Sub(time.Unix(0, k.ctimeN)) < racyWindow || s.start.Sub(time.Unix(0, k.mtimeNs)) < racyWindow
	if racy || k.ctimeN == 0 {
		return fileExtra{}
	}
	return fileExtra{dev: k.dev, ino: k.ino, ctimeNs: k.ctimeN}
}

// storedAlready hashes f and reports whether the store holds that
// content and f did not change meanwhile.
func (s *scanner) storedAlready(f *os.File, before store.Stat) (store.Hash, bool) {
	hs := blake3.New()
	n, err := io.CopyBuffer(hs, io.NewSectionReader(f, 0, before.Size+1), s.buf)
	if err != nil || n != before.Size {
		return store.Hash{}, false
	}
	h := store.Hash(hs.Sum(nil))
	after, err := store.FStat(f)
	if err != nil || after != before || !s.st.Has(h) {
		return store.Hash{}, false
	}
	return h, true
}

func denied(err error) bool { return errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) }

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; size <= 1<<16; size *= 4 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
	return "", fmt.Errorf("symlink target too long")
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("type %#o", mode&unix.S_IFMT)
}
