package mirror

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// The stat cache: after a version is verified, OUT/.zsnd/T/s/<version>
// records, for each of its files, the inode's device, number, size, mtime
// and ctime as they were when the file was hashed (or known, see below).
// A later sync trusts a file of that version without reading it when all
// five are still equal: any write to a file, any chmod, utimensat, link or
// rename of it sets its ctime to the current time, which no caller can set
// back. Entries whose ctime is not older than a fence taken before the
// files were examined are not recorded (the "racy" case of a change in the
// same clock tick as the examination, whose ctime would not differ), so
// they are hashed next time. The file carries its version id and a
// BLAKE3 of its content: a torn or foreign cache is ignored, never
// trusted.
//
// It records each directory too, when a check found it holding nothing
// but the version's names: creating, removing or renaming an entry in a
// directory sets its ctime, so while its five values are equal its names
// are those it had, and a later check looks at its children by name
// instead of reading it (treeCheck.dirTrust). What each child is, is
// still examined one by one.

// statRec is what the cache keeps of one file. ino == 0: nothing known.
type statRec struct {
	dev, ino, size uint64
	mtime, ctime   int64
}

func recOf(st *unix.Stat_t) statRec {
	return statRec{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: statMtime(st), ctime: statCtime(st)}
}

// matches tells whether st is the very inode recorded, unchanged since.
func (r *statRec) matches(st *unix.Stat_t) bool {
	return r.ino != 0 && *r == recOf(st)
}

func statCtime(st *unix.Stat_t) int64 { return st.Ctim.Sec*1e9 + st.Ctim.Nsec }

const statMagic = "zsnd-stat-1\n"

// statDir opens (making) OUT/.zsnd/T/s.
func (l *layout) statDir() (*os.File, error) { return mkdirPlain(l.t, "s", 0o700) }

// loadStats reads the cache of version directory name, made for the
// version id with n entries; nil when missing or not matching.
func (l *layout) loadStats(name string, id manifest.ID, n int) []statRec {
	sid, recs, ok := l.readStats(name)
	if !ok || sid != id || len(recs) != n {
		return nil
	}
	return recs
}

// readStats reads the cache of version directory name: the version id it
// was made for and its records. ok is false when it is missing, torn or
// not a cache.
func (l *layout) readStats(name string) (id manifest.ID, recs []statRec, ok bool) {
	fd, err := unix.Openat(int(l.t.Fd()), "s/"+name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return id, nil, false
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	const headLen = len(statMagic) + 32 + 8
	if unix.Fstat(fd, &st) != nil || st.Size < int64(headLen+32) || (st.Size-int64(headLen+32))%40 != 0 {
		return id, nil, false
	}
	n := int((st.Size - int64(headLen+32)) / 40)
	// Read in pieces (a cache of 100,000 files is 4 MB), hashing as read.
	r := bufio.NewReaderSize(f, 64<<10)
	h := blake3.New()
	head := make([]byte, headLen)
	if _, err := io.ReadFull(r, head); err != nil {
		return id, nil, false
	}
	h.Write(head)
	if string(head[:len(statMagic)]) != statMagic || binary.LittleEndian.Uint64(head[len(statMagic)+32:]) != uint64(n) {
		return id, nil, false
	}
	copy(id[:], head[len(statMagic):])
	recs = make([]statRec, n)
	buf := make([]byte, 40*1024) // records, hashed a block at a time
	for i := 0; i < n; {
		k := min(n-i, len(buf)/40)
		q := buf[:k*40]
		if _, err := io.ReadFull(r, q); err != nil {
			return id, nil, false
		}
		h.Write(q)
		for ; len(q) > 0; q = q[40:] {
			recs[i] = statRec{dev: binary.LittleEndian.Uint64(q[:]), ino: binary.LittleEndian.Uint64(q[8:]), size: binary.LittleEndian.Uint64(q[16:]),
				mtime: int64(binary.LittleEndian.Uint64(q[24:])), ctime: int64(binary.LittleEndian.Uint64(q[32:]))}
			i++
		}
	}
	var sum [32]byte
	if _, err := io.ReadFull(r, sum[:]); err != nil || !bytes.Equal(h.Sum(nil), sum[:]) {
		return id, nil, false
	}
	return id, recs, true
}

// statWriter is a cache being made: its file is created first, and its
// ctime is the fence (see above).
type statWriter struct {
	s     *os.File
	f     *os.File
	tmp   string
	fence int64
}

// fsNow is the file system's clock now (the ctime of a file just
// written), or 0 when it cannot be read (then nothing is cached).
func (l *layout) fsNow() int64 {
	w, err := l.newStatWriter("fence")
	if err != nil {
		return 0
	}
	defer w.abort()
	return w.fence
}

// newStatWriter starts the cache of a version.
func (l *layout) newStatWriter(name string) (*statWriter, error) {
	s, err := l.statDir()
	if err != nil {
		return nil, err
	}
	tmp := name + ".tmp"
	fd, err := unix.Openat(int(s.Fd()), tmp, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		s.Close()
		return nil, &os.PathError{Op: "create", Path: join(s.Name(), tmp), Err: err}
	}
	w := &statWriter{s: s, f: os.NewFile(uintptr(fd), tmp), tmp: tmp}
	// Write a byte so the fence is the file system's clock now (creating
	// alone sets it too; the write makes sure on every file system).
	var st unix.Stat_t
	if _, err := w.f.Write([]byte{0}); err == nil && unix.Fstat(fd, &st) == nil {
		w.fence = statCtime(&st)
	}
	return w, nil
}

// abort drops an unfinished cache.
func (w *statWriter) abort() {
	if w == nil || w.f == nil {
		return
	}
	w.f.Close()
	unix.Unlinkat(int(w.s.Fd()), w.tmp, 0)
	w.s.Close()
	w.f = nil
}

// commit writes recs (indexed like the manifest's entries; those not
// older than the fence are dropped) and renames the cache into place as
// s/name. No fsync: a cache lost or torn by a crash is ignored.
func (w *statWriter) commit(name string, id manifest.ID, recs []statRec) error {
	defer w.abort()
	if w.fence == 0 {
		return nil // no fence, no cache
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("writing the stat cache: %w", err)
	}
	if err := w.f.Truncate(0); err != nil {
		return fmt.Errorf("writing the stat cache: %w", err)
	}
	h := blake3.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w.f, h), 64<<10)
	b := make([]byte, 0, len(statMagic)+32+8)
	b = append(b, statMagic...)
	b = append(b, id[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(recs)))
	bw.Write(b)
	for _, r := range recs {
		if r.ctime >= w.fence {
			r = statRec{}
		}
		b = binary.LittleEndian.AppendUint64(b[:0], r.dev)
		b = binary.LittleEndian.AppendUint64(b, r.ino)
		b = binary.LittleEndian.AppendUint64(b, r.size)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.mtime))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.ctime))
		bw.Write(b)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the stat cache: %w", err)
	}
	if _, err := w.f.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("writing the stat cache: %w", err)
	}
	if err := unix.Renameat(int(w.s.Fd()), w.tmp, int(w.s.Fd()), name); err != nil {
		return fmt.Errorf("saving the stat cache: %w", err)
	}
	return nil
}

// saveStats writes the stat cache of version directory name once the
// versions beyond --keep are pruned: pruning unlinks names of inodes the
// version shares with them (hard links), which sets their ctime. Each file
// is looked at again: its record (from verify, vrecs) is kept, with the
// new ctime, when device, inode, size and mtime are unchanged and either
// the ctime is too or the inode is one whose other name this run unlinked
// (l.unlinked). What this trusts: no write to such an inode that also put
// its mtime back happened between verify and this look (a window of this
// run's switch and prune). When nothing was unlinked, the records are
// written as verify made them, with no second look: a file changed since
// has another ctime, so its record does not match and it is hashed.
func (s *syncer) saveStats(name string, id manifest.ID, man *manifest.Manifest, vrecs []statRec) {
	l := s.l
	w, err := l.newStatWriter(name)
	if err != nil {
		return
	}
	defer w.abort()
	recs := vrecs // updated in place
	if len(l.unlinked) == 0 {
		// No other name of any inode was unlinked since verify: the
		// records stand as verify made them. A file changed since has
		// another ctime, so its record will not match (it is hashed).
		for i := range recs {
			if t := man.Entries[i].Type; t != manifest.TypeFile && t != manifest.TypeDir {
				recs[i] = statRec{}
			}
		}
		if err := w.commit(name, id, recs); err != nil {
			s.emit(Event{Kind: EventNote, Message: err.Error()})
		}
		return
	}
	root, err := openDir(l.v, name)
	if err != nil {
		return
	}
	defer root.Close()
	restat(root, man, recs, recs, func(was, now *statRec) bool {
		return now.ctime == was.ctime || l.unlinked[[2]uint64{now.dev, now.ino}]
	})
	if err := w.commit(name, id, recs); err != nil {
		s.emit(Event{Kind: EventNote, Message: err.Error()})
	}
}

// restat looks again (forRuns) at each file and directory (but the root)
// of the version tree root whose record in prev names an inode, and sets
// out[i] to its record now when it is still that inode (device, number,
// size and mtime) and trusted(prev[i], now) accepts its ctime; every
// other out[i] is zeroed.
// out may be prev.
func restat(root *os.File, man *manifest.Manifest, prev, out []statRec, trusted func(was, now *statRec) bool) {
	forRuns(len(man.Entries), placeRun, func() (func(lo, hi int), func()) {
		dirs := &dirCache{root: root}
		return func(lo, hi int) {
			for i := lo; i < hi; i++ {
				p := prev[i]
				out[i] = statRec{}
				if t := man.Entries[i].Type; p.ino == 0 || i == 0 || t != manifest.TypeFile && t != manifest.TypeDir {
					continue
				}
				parent, base := split(man.Entries[i].Path)
				d, err := dirs.get(parent)
				if err != nil {
					continue
				}
				st, err := lstatAt(int(d.Fd()), base)
				if err != nil {
					continue
				}
				r := recOf(&st)
				if r.dev == p.dev && r.ino == p.ino && r.size == p.size && r.mtime == p.mtime && trusted(&p, &r) {
					out[i] = r
				}
			}
		}, dirs.close
	})
}

// toTrash moves dir/name into trash/ (to be deleted by prune).
func (l *layout) toTrash(dir *os.File, name string) error {
	tr, err := mkdirPlain(l.t, "trash", 0o700)
	if err != nil {
		return err
	}
	defer tr.Close()
	n := "staged-" + name
	if err := removeAllAt(int(tr.Fd()), n); err != nil {
		return err
	}
	if err := unix.Renameat(int(dir.Fd()), name, int(tr.Fd()), n); err != nil {
		return fmt.Errorf("moving the replaced copy to trash: %w", err)
	}
	return nil
}

// pruneStats removes the caches of versions no longer kept (kept names
// the kept versions and the spare).
func (l *layout) pruneStats(kept map[string]bool) {
	s, err := l.statDir()
	if err != nil {
		return
	}
	defer s.Close()
	names, err := readNames(s)
	if err != nil {
		return
	}
	for _, n := range names {
		if !kept[n] {
			unix.Unlinkat(int(s.Fd()), n, 0)
		}
	}
}

// indexOf is the index of path in m's (sorted) entries, or -1.
func indexOf(m *manifest.Manifest, path string) int {
	lo, hi := 0, len(m.Entries)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if m.Entries[h].Path < path {
			lo = h + 1
		} else {
			hi = h
		}
	}
	if lo < len(m.Entries) && m.Entries[lo].Path == path {
		return lo
	}
	return -1
}
