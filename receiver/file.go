package receiver

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/protocol"
)

// writeBackEvery is how much data is written before write-back of it is
// started, so the final fsync has little left to do.
const writeBackEvery = 8 << 20

// commitBatch is the most verified files waiting for one commit.
const commitBatch = 128

// task is one requested name, across sessions and restarts.
type task struct {
	name      string
	dest      string // final path
	partPath  string
	statePath string

	req  uint32 // current request id; 0 when none is outstanding
	done bool
	err  error

	// Set by FILE.
	open     bool
	f        *os.File
	size     int64
	mode     uint32
	mtimeNS  int64
	tag      protocol.Tag
	next     int64 // next offset expected; all bytes before it are verified (and written or queued)
	restarts int   // source changes and verification failures so far
	inflight int   // writer operations not yet answered (session loop's count)
	ended    bool  // END received: no new request until the writer has checked it
	verified bool  // END matched; waiting for commit
	sum      protocol.Hash

	// Owned by the writer while inflight > 0 (see writer.go).
	df    *os.File       // the partial file opened with O_DIRECT, or nil
	whole *blake3.Hasher // nil until the first chunk, and for a file of one chunk
	// oneChunk: the file came as a single verified chunk, whose hash is
	// therefore the whole-file hash (no second pass over the data).
	oneChunk bool
	chunkSum protocol.Hash
	written  int64 // bytes written to the partial file
	synced   int64 // bytes handed to write-back
	werr     error // first write error

	// What the last GET offered from a partial file of an earlier attempt.
	asked       uint64
	askedTag    protocol.Tag
	stateOnDisk bool // a state file may exist and must be removed with the partial
	// partAbsent: the last look found no partial file on disk, so a small
	// file may be written unnamed (anon) without leaving an old one behind.
	partAbsent bool
	anon       bool // f was opened with O_TMPFILE: it has no name until commit links it

	wire, reused int64
	b            taskBudget // retry and restart budgets, byte accounting (budget.go)
	lastReport   time.Time
	lastReported int64
	result       Result
}

// partialState is the JSON description kept beside a partial file.
type partialState struct {
	Name    string `json:"name"`
	Tag     string `json:"tag"`
	Size    int64  `json:"size"`
	Mode    uint32 `json:"mode"`
	MtimeNS int64  `json:"mtime_ns"`
}

func newTask(outDir, name string) (*task, error) {
	if err := protocol.ValidName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	dest := filepath.Join(outDir, filepath.FromSlash(name))
	dir, base := filepath.Split(dest)
	return &task{
		name: name, dest: dest,
		partPath:  filepath.Join(dir, "."+base+".zrecv-part"),
		statePath: filepath.Join(dir, "."+base+".zrecv-state"),
	}, nil
}

// resumePoint reads an earlier attempt's partial state: the verified
// length and version tag to put in GET. It returns 0 and a zero tag when
// there is nothing usable.
func (t *task) resumePoint() (uint64, protocol.Tag) {
	var tag protocol.Tag
	fi, err := os.Stat(t.partPath) // the cheap test first: usually there is none
	t.partAbsent = os.IsNotExist(err)
	if err != nil || !fi.Mode().IsRegular() {
		return 0, tag
	}
	t.stateOnDisk = true
	b, err := os.ReadFile(t.statePath)
	if err != nil {
		return 0, tag
	}
	var st partialState
	if json.Unmarshal(b, &st) != nil || st.Name != t.name {
		return 0, tag
	}
	raw, err := hex.DecodeString(st.Tag)
	if err != nil || len(raw) != protocol.TagLen {
		return 0, tag
	}
	n := fi.Size()
	if n > st.Size {
		n = st.Size
	}
	copy(tag[:], raw)
	return uint64(n), tag
}

// begin handles FILE: it opens (or reopens) the partial file and positions
// the transfer at m.Offset, reusing the verified prefix when the version
// matches. It returns a note for a restart event ("" if none).
func (t *task) begin(m *protocol.File, resume bool, chunk int64, dirs map[string]bool) (string, error) {
	if m.Name != t.name {
		return "", fmt.Errorf("%w: FILE names %q for a request of %q", ErrProtocol, m.Name, t.name)
	}
	note := ""
	reuse := int64(0)
	if resume || t.open {
		have, tag := t.asked, t.askedTag // what the GET offered, from the partial file
		if t.open {
			have, tag = uint64(t.next), t.tag
		}
		switch {
		case m.Tag == tag && m.Offset <= have:
			reuse = int64(m.Offset)
		case have > 0 && m.Tag != tag:
			note = "source changed since the partial transfer; starting over"
		}
	} else if m.Offset != 0 {
		return "", fmt.Errorf("%w: server resumes at %d, nothing was asked", ErrProtocol, m.Offset)
	}
	if m.Offset != uint64(reuse) {
		// The server offered to resume where we hold nothing usable.
		return "", fmt.Errorf("%w: server resumes at %d but %d bytes are usable", ErrProtocol, m.Offset, reuse)
	}
	if err := t.openPartial(m, reuse, chunk, dirs); err != nil {
		return note, err
	}
	return note, nil
}

func (t *task) openPartial(m *protocol.File, reuse, chunk int64, dirs map[string]bool) error {
	// Every system call counts when files are small: directories are made
	// once per fetch, a fresh partial file is truncated by open itself, and
	// O_DIRECT is used only for files large enough to gain from it.
	if dir := filepath.Dir(t.dest); !dirs[dir] {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		dirs[dir] = true
	}
	if t.f == nil && t.partAbsent && reuse == 0 && int64(m.Size) <= chunk {
		// A file of one chunk cannot be resumed, so it needs no name until
		// it is complete: an unnamed file (O_TMPFILE) in the destination
		// directory, linked into place at commit, costs one directory
		// update instead of three (create, then rename's remove and add),
		// and vanishes by itself if zrecv dies. Where the file system
		// lacks O_TMPFILE, the named partial file below is used.
		t.f = openUnnamed(filepath.Dir(t.dest), t.partPath)
		t.anon = t.f != nil
	}
	if t.f == nil {
		t.anon, t.partAbsent = false, false
		flags := unix.O_RDWR | unix.O_CREAT | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if reuse == 0 {
			flags |= unix.O_TRUNC
		}
		fd, err := unix.Open(t.partPath, flags, 0o600)
		if err != nil {
			return &os.PathError{Op: "open", Path: t.partPath, Err: err}
		}
		t.f = os.NewFile(uintptr(fd), t.partPath)
		if int64(m.Size) >= directMin {
			t.df = openDirect(t.partPath)
		}
	}
	if reuse > 0 || t.open {
		if err := t.f.Truncate(reuse); err != nil {
			return err
		}
	}
	// Rehash the reused prefix unless the hasher is already exactly there.
	// A fresh file gets its hasher with its first chunk (see task.write).
	if !(t.open && t.whole != nil && t.written == reuse && t.werr == nil) {
		t.whole, t.oneChunk = nil, false
		if reuse > 0 {
			t.whole = blake3.New()
			if _, err := io.Copy(t.whole, io.NewSectionReader(t.f, 0, reuse)); err != nil {
				return fmt.Errorf("rehashing partial file: %w", err)
			}
		}
		t.reused = reuse
	}
	t.open, t.ended, t.verified, t.werr = true, false, false, nil
	t.size, t.mode, t.mtimeNS, t.tag = int64(m.Size), m.Mode, m.MtimeNS, m.Tag
	t.next, t.written, t.synced = reuse, reuse, reuse
	if t.size <= chunk {
		// One chunk at most: nothing to resume, so no state file (a file
		// creation costs as much as the whole transfer of a small file).
		return nil
	}
	st, _ := json.Marshal(partialState{Name: t.name, Tag: hex.EncodeToString(m.Tag[:]), Size: t.size, Mode: t.mode, MtimeNS: t.mtimeNS})
	t.stateOnDisk = true
	return os.WriteFile(t.statePath, st, 0o600)
}

// close releases the partial file. With discard it also removes the
// partial state, as after a verification failure; otherwise the state is
// kept for a later resume.
func (t *task) close(discard bool) {
	t.closeDirect()
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
	t.open, t.ended, t.verified = false, false, false
	if discard {
		os.Remove(t.partPath)
		t.removeState()
	}
}

// restart drops the partial data so the next GET starts from zero.
func (t *task) restart() {
	t.close(true)
	t.whole, t.oneChunk = nil, false
	t.next, t.written = 0, 0
}

// removeState removes the state file if this task may have one.
func (t *task) removeState() {
	if t.stateOnDisk {
		os.Remove(t.statePath)
		t.stateOnDisk = false
	}
}

// noTmpfile remembers directories whose file system refused O_TMPFILE.
var noTmpfile sync.Map

// openUnnamed opens an unnamed regular file in dir (O_TMPFILE), or returns
// nil where that is not supported. name is only for error messages.
func openUnnamed(dir, name string) *os.File {
	if _, no := noTmpfile.Load(dir); no {
		return nil
	}
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			noTmpfile.Store(dir, true)
		}
		return nil
	}
	return os.NewFile(uintptr(fd), name)
}

// linkInto gives the unnamed file f the name dest, replacing any file
// there atomically. linkat cannot replace, so over an existing dest the
// file is linked under tmp (its hidden partial name) and renamed over dest.
func linkInto(f *os.File, dest, tmp string) error {
	err := linkFD(f, dest)
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	os.Remove(tmp) // nothing is expected there: the partial file was absent
	if err := linkFD(f, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// linkFD links the file behind f's descriptor at path: through /proc (any
// user), else with AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH).
func linkFD(f *os.File, path string) error {
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		if err2 := unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, path, unix.AT_EMPTY_PATH); err2 == nil || errors.Is(err2, unix.EEXIST) {
			err = err2
		}
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: path, Err: err}
	}
	return nil
}

// directMin is the smallest file written with O_DIRECT: below it the extra
// descriptor costs more than the page-cache copy it saves.
const directMin = 4 << 20

// openDirect opens path for O_DIRECT writes; nil where the file system
// does not support it (tmpfs, some network file systems).
func openDirect(path string) *os.File {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), path)
}

func (t *task) closeDirect() {
	if t.df != nil {
		t.df.Close()
		t.df = nil
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
