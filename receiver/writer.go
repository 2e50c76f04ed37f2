package receiver

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/safefs"
	"github.com/zsend/zsend/protocol"
)

// The writer goroutine owns a session's file I/O: it pwrites verified
// chunks, feeds the whole-file hasher, checks END, and commits verified
// files (fsync, rename, directory fsync). The session loop keeps decoding,
// checking credit and verifying chunk hashes meanwhile, so network, hashing
// and disk overlap. Credit is returned only when a write completes, so the
// data queued here is bounded by the window.
//
// Ownership: while a task has operations in flight (task.inflight > 0) its
// file, hasher and written offset belong to the writer; the session loop
// waits for them (drainTask) before it touches those.

type opKind int

const (
	opWrite  opKind = iota // append data at task.written
	opEnd                  // the file is complete: check size and hash
	opCommit               // make verified files durable and visible
)

type op struct {
	kind  opKind
	t     *task
	data  []byte
	whole bool          // opWrite: data is the whole file, and hash its verified BLAKE3
	hash  protocol.Hash // opEnd: what the server says; opWrite: see whole
	size  int64         // opEnd: END's size
	batch []*task       // opCommit
	// deferSync (opCommit): the caller makes the files durable itself
	// (Config.DeferSync); no fsync or syncfs here.
	deferSync bool
	// record (opCommit): note in task.inode the inode of each file linked
	// from an unnamed file (Config.RecordInodes).
	record bool
}

type result struct {
	kind  opKind
	t     *task
	n     int
	err   error
	sum   protocol.Hash
	batch []*task
	errs  []error // opCommit: per task, nil on success
}

type writer struct {
	ops chan op
	res chan result
}

func startWriter() *writer {
	w := &writer{ops: make(chan op, 64), res: make(chan result, 64)}
	go func() {
		defer close(w.res)
		for o := range w.ops {
			w.res <- w.do(o)
		}
	}()
	return w
}

func (w *writer) stop() { close(w.ops) }

func (w *writer) do(o op) result {
	t := o.t
	switch o.kind {
	case opWrite:
		if t.werr != nil {
			return result{kind: opWrite, t: t, n: len(o.data)} // already failed: just return the credit
		}
		t.werr = t.write(o.data, o.whole, o.hash)
		return result{kind: opWrite, t: t, n: len(o.data), err: t.werr}
	case opEnd:
		if t.werr != nil {
			return result{kind: opEnd, t: t, err: t.werr}
		}
		sum, err := t.verifyEnd(o.size, o.hash)
		return result{kind: opEnd, t: t, sum: sum, err: err}
	case opCommit:
		return result{kind: opCommit, batch: o.batch, errs: commit(o.batch, o.deferSync, o.record)}
	}
	panic(fmt.Sprintf("writer: unknown op %d", o.kind))
}

// directAlign is the alignment O_DIRECT needs of buffers, offsets and
// lengths (the logical block size is at most this on Linux file systems).
const directAlign = 4096

// write stores a verified chunk at the next offset. Whole aligned chunks go
// through the O_DIRECT descriptor when there is one: the data is DMAed from
// the frame buffer, with no copy into the page cache (on the machines we
// measured, page-cache writes cost several times more CPU and were far
// less steady). Anything else (the last chunk of a file, an unaligned
// buffer) goes through the page cache; the final fsync covers both.
//
// When data is the whole file (whole), its hash, verified by the session
// loop, is the whole-file hash: it is kept instead of hashing again.
func (t *task) write(data []byte, whole bool, sum protocol.Hash) error {
	f := t.f
	if t.df != nil && len(data)%directAlign == 0 && t.written%directAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(data)))%directAlign == 0 {
		f = t.df
	}
	if _, err := f.WriteAt(data, t.written); err != nil {
		return fmt.Errorf("writing %s: %w", t.partPath, err)
	}
	if whole && t.written == 0 && int64(len(data)) == t.size {
		t.oneChunk, t.chunkSum = true, sum
	} else {
		if t.whole == nil {
			t.whole = blake3.New()
		}
		t.whole.Write(data)
	}
	t.written += int64(len(data))
	if f == t.f && t.written-t.synced >= writeBackEvery {
		// Start write-back now; the final fsync then waits for little.
		_ = unix.SyncFileRange(int(t.f.Fd()), t.synced, t.written-t.synced, unix.SYNC_FILE_RANGE_WRITE)
		t.synced = t.written
	}
	return nil
}

// verifyEnd checks that the file is complete and its BLAKE3 is the
// server's, then sets mode and mtime on the partial file.
func (t *task) verifyEnd(size int64, want protocol.Hash) (protocol.Hash, error) {
	var sum protocol.Hash
	if size != t.size || t.written != t.size {
		return sum, fmt.Errorf("%w: END at %d bytes of %d, size %d", ErrProtocol, t.written, t.size, size)
	}
	switch {
	case t.oneChunk:
		sum = t.chunkSum
	case t.whole == nil: // empty file
		sum = blake3.Sum256(nil)
	default:
		copy(sum[:], t.whole.Sum(nil))
	}
	if sum != want {
		return sum, fmt.Errorf("%w: whole-file BLAKE3 %s, server says %s", ErrVerify, sum, want)
	}
	// Permission bits only: setuid, setgid and sticky bits from a remote
	// peer are not restored.
	if err := t.f.Chmod(os.FileMode(t.mode & 0o777)); err != nil {
		return sum, err
	}
	if err := futimens(t.f, t.mtimeNS); err != nil {
		return sum, &os.PathError{Op: "utimensat", Path: t.partPath, Err: err}
	}
	return sum, nil
}

// fstatInode returns f's inode as fstat sees it; zero if fstat fails.
func fstatInode(f *os.File) Inode {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Inode{}
	}
	return Inode{Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, Size: st.Size,
		MtimeNS: st.Mtim.Sec*1e9 + st.Mtim.Nsec, CtimeNS: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
}

// futimens sets the access and modification times of f to ns since the
// epoch through its descriptor (no path lookup), as futimens(3) does:
// utimensat(fd, NULL, times, 0). x/sys/unix offers only the path form.
func futimens(f *os.File, ns int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(ns), unix.NsecToTimespec(ns)}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, f.Fd(), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// commit makes a batch of verified partial files durable, then renames
// each over its destination and syncs the directories. A few files are
// fsynced one by one; a larger batch takes one syncfs, which costs one
// journal commit instead of one per file.
//
// With record, a file linked from an unnamed file it wrote from its first
// byte gets its inode noted in task.inode: fstat through the descriptor
// the data went to, after the link (which sets the ctime), before close.
func commit(batch []*task, deferSync, record bool) []error {
	errs := make([]error, len(batch))
	if deferSync {
		// Nothing to sync: the caller syncs the file system before it
		// relies on the files (the mirror, before its switch).
	} else if len(batch) > 4 {
		if err := unix.Syncfs(int(batch[0].f.Fd())); err != nil {
			for i := range errs {
				errs[i] = fmt.Errorf("syncing %s: %w", batch[i].partPath, err)
			}
		}
	} else {
		for i, t := range batch {
			if err := t.f.Sync(); err != nil {
				errs[i] = fmt.Errorf("syncing %s: %w", t.partPath, err)
			}
		}
	}
	dirs := map[*safefs.Dir]bool{}
	for i, t := range batch {
		t.closeDirect()
		d, derr := t.openDir(false)
		if derr != nil && errs[i] == nil {
			errs[i] = derr
		}
		var lerr error
		named := t.named
		t.named = false // committed or failed, closed below either way
		if t.anon && errs[i] == nil {
			lerr = linkInto(t.f, d, t.base, t.partName) // before close: the file has no other name
			if lerr == nil && record && t.reused == 0 {
				t.inode = fstatInode(t.f)
			}
		} else if named && errs[i] == nil && record {
			t.inode = fstatInode(t.f) // already at its name since its first byte
		}
		if err := t.f.Close(); err != nil && errs[i] == nil {
			errs[i] = fmt.Errorf("closing %s: %w", t.partPath, err)
		}
		t.f = nil
		if errs[i] != nil {
			if named && d != nil {
				d.Unlink(t.base) // not durable: it does not stay under its name
			}
			continue
		}
		err := lerr
		if !t.anon && !named {
			err = d.Rename(t.partName, t.base)
		}
		if err != nil {
			if fi, serr := d.Lstat(t.base); serr == nil && fi.IsDir() {
				err = unix.EISDIR // the caller names t.dest
			}
			errs[i] = err
			continue
		}
		dirs[d] = true
	}
	if !deferSync {
		for d := range dirs {
			d.Sync()
		}
	}
	for i, t := range batch {
		if errs[i] == nil {
			t.removeState()
		}
		t.releaseDir()
	}
	return errs
}
