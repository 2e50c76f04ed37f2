package receiver

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/safefs"
	"github.com/zsend/zsend/protocol"
)

// writeBackEvery is how much data is written before write-back of it is
// started, so the final fsync has little left to do.
const writeBackEvery = 8 << 20

// commitBatch is the most verified files waiting for one commit.
const commitBatch = 128

// maxStateSize bounds the state file read: it holds a few short fields.
const maxStateSize = 4096

// outDir is the output directory of a fetch. Every file zrecv opens,
// creates, renames or removes in it is reached through descriptors of
// directories beneath it (internal/safefs): no symlink is ever followed, so
// files planted by someone who can write there cannot redirect zrecv
// elsewhere. The directories files go to are opened once each and shared
// by the tasks using them; up to maxCachedDirs of those no task uses stay
// open for later tasks (a tree's files come directory by directory, so a
// directory is opened about once however many there are).
type outDir struct {
	root *safefs.Dir
	mu   sync.Mutex
	dirs map[string]*sharedDir // by path relative to root, "" excluded
}

// sharedDir is an open directory and how many tasks hold it.
type sharedDir struct {
	d     *safefs.Dir
	users int
}

const maxCachedDirs = 256

func openOutDir(path string) (*outDir, error) {
	root, err := safefs.OpenDir(path)
	if err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	return &outDir{root: root, dirs: map[string]*sharedDir{}}, nil
}

func (o *outDir) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, sd := range o.dirs {
		sd.d.Close()
	}
	clear(o.dirs)
	o.root.Close()
}

// dir returns the directory rel (slash-separated, "" for the output
// directory itself), creating it and its parents when create. The caller
// gives it back with release.
func (o *outDir) dir(rel string, create bool) (d *safefs.Dir, err error) {
	if rel == "" {
		return o.root, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if sd := o.dirs[rel]; sd != nil {
		sd.users++
		return sd.d, nil
	}
	if create {
		d, err = o.root.MkdirAllOpen(rel, 0o755)
	} else {
		d, err = o.root.Sub(rel)
	}
	if err != nil {
		return nil, err
	}
	o.dirs[rel] = &sharedDir{d: d, users: 1}
	return d, nil
}

// release gives back directory rel from dir. The last user closes it when
// more than maxCachedDirs are open.
func (o *outDir) release(rel string) {
	if rel == "" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	sd := o.dirs[rel]
	if sd == nil {
		return
	}
	sd.users--
	if sd.users <= 0 && len(o.dirs) > maxCachedDirs {
		sd.d.Close()
		delete(o.dirs, rel)
	}
}

// hiddenNames returns the names of the partial file and of its state file
// for a destination whose final component is base. They are derived from
// a hash so that they stay short (44 octets) whatever the length of base:
// a 255-octet name must not need a longer hidden one.
func hiddenNames(base string) (part, state string) {
	h := blake3.Sum256([]byte(base))
	x := ".zrecv-" + hex.EncodeToString(h[:16])
	return x + ".part", x + ".state"
}

// PartialPaths returns where zrecv keeps the partial data of the
// destination path dest, and the state file describing it: hidden files
// in dest's directory named .zrecv-HASH.part and .zrecv-HASH.state, where
// HASH is the first 32 hex digits of the BLAKE3-256 of dest's final
// component.
func PartialPaths(dest string) (part, state string) {
	dir, base := filepath.Split(dest)
	p, s := hiddenNames(base)
	return filepath.Join(dir, p), filepath.Join(dir, s)
}

// task is one requested name, across sessions and restarts.
type task struct {
	name      string
	dest      string // final path (for messages and results)
	partPath  string // for messages
	statePath string // for messages

	// Where the files are: the destination's directory relative to the
	// output directory, and the names in it.
	out                       *outDir
	relDir                    string
	base, partName, stateName string
	dir                       *safefs.Dir // relDir, while held (from out); see openDir

	rq  *Request // set by FetchRequests; nil for a plain Fetch
	req uint32   // current request id; 0 when none is outstanding
	// inBatch: the BGET t waits in (its req is 0 meanwhile); noBatch: t
	// is asked for with its own VGET from now on (batch.go).
	inBatch *batch
	noBatch bool
	done    bool
	err     error

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
	fresh      bool  // Request.Fresh, until the first look
	anon       bool  // f was opened with O_TMPFILE: it has no name until commit links it
	named      bool  // f was created under its own name (Request.Private): commit links nothing
	inode      Inode // set by commit (Config.RecordInodes): see Result.Inode

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

func newTask(out *outDir, name string) (*task, error) {
	if err := protocol.ValidName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	relDir, base := path.Split(name)
	relDir = strings.TrimSuffix(relDir, "/")
	dest := filepath.Join(out.root.Name(), filepath.FromSlash(name))
	part, state := hiddenNames(base)
	dir := filepath.Dir(dest)
	return &task{
		name: name, dest: dest,
		partPath: filepath.Join(dir, part), statePath: filepath.Join(dir, state),
		out: out, relDir: relDir, base: base, partName: part, stateName: state,
	}, nil
}

// openDir returns the destination's directory, opened beneath the output
// directory without following symlinks (a symlink on the way is an error
// naming it); with create, missing directories are made.
func (t *task) openDir(create bool) (*safefs.Dir, error) {
	if t.dir != nil {
		return t.dir, nil
	}
	d, err := t.out.dir(t.relDir, create)
	if err != nil {
		return nil, err
	}
	t.dir = d
	return d, nil
}

// releaseDir lets go of the destination's directory.
func (t *task) releaseDir() {
	if t.dir != nil {
		t.out.release(t.relDir)
	}
	t.dir = nil
}

// resumePoint reads an earlier attempt's partial state: the verified
// length and version tag to put in GET. It returns 0 and a zero tag when
// there is nothing usable. A partial file is usable only if it is a
// regular file with one link, owned by this user and writable by nobody
// else (anything else was not left by zrecv: it is replaced, never
// written), and its state file a regular file of at most maxStateSize.
func (t *task) resumePoint() (uint64, protocol.Tag) {
	var tag protocol.Tag
	if t.fresh {
		t.fresh = false
		t.partAbsent = true // the caller says so (Request.Fresh)
		return 0, tag
	}
	t.partAbsent = false
	d, err := t.openDir(false)
	if err != nil {
		t.partAbsent = errors.Is(err, fs.ErrNotExist)
		return 0, tag
	}
	fi, err := d.Lstat(t.partName) // the cheap test first: usually there is none
	t.partAbsent = errors.Is(err, fs.ErrNotExist)
	if err != nil {
		return 0, tag
	}
	t.stateOnDisk = true
	if safefs.CheckPrivateInfo(t.partPath, fi.Sys().(*unix.Stat_t)) != nil {
		return 0, tag
	}
	// The state file too must be ours alone (README: a state file that is
	// a hard link or belongs to another user is never resumed from).
	b, err := d.ReadPrivateFileBounded(t.stateName, maxStateSize)
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
func (t *task) begin(m *protocol.File, resume bool, chunk int64, out *outDir) (string, error) {
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
	if err := t.openPartial(m, reuse, chunk, out); err != nil {
		return note, err
	}
	return note, nil
}

func (t *task) openPartial(m *protocol.File, reuse, chunk int64, out *outDir) error {
	// Every system call counts when files are small: directories are
	// opened (made) once per fetch, and O_DIRECT is used only for files
	// large enough to gain from it.
	if t.out == nil {
		t.out = out
	}
	d, err := t.openDir(true)
	if err != nil {
		return err
	}
	if t.f == nil && t.partAbsent && reuse == 0 && int64(m.Size) <= chunk {
		// A file of one chunk cannot be resumed, so it needs no name until
		// it is complete: an unnamed file (O_TMPFILE) in the destination
		// directory, linked into place at commit, costs one directory
		// update instead of three (create, then rename's remove and add),
		// and vanishes by itself if zrecv dies. Where the file system
		// lacks O_TMPFILE, the named partial file below is used.
		//
		// In a directory private to the caller (Request.Private) the file
		// is made under its name at once, if nothing is there: cheaper
		// still (no orphan list, no link).
		if t.rq != nil && t.rq.Private {
			if f, err := d.CreateExclusive(t.base, 0o600); err == nil {
				t.f, t.named, t.anon = f, true, false
			}
		}
		if t.f == nil {
			t.f = openUnnamed(d)
			t.anon, t.named = t.f != nil, false
		}
	}
	if t.f == nil {
		t.anon, t.named, t.partAbsent = false, false, false
		var f *os.File
		if reuse > 0 {
			// The verified prefix of an earlier attempt: opened without
			// O_TRUNC and checked before anything is written to it.
			f, err = d.OpenFile(t.partName, unix.O_RDWR, 0)
			if err == nil {
				if err = safefs.CheckPrivate(f); err != nil {
					f.Close()
				}
			}
		} else {
			// A fresh partial file is always a new file: whatever is at
			// its name (an old partial file, or something planted there:
			// a hard link, a symlink, a FIFO) is unlinked, never opened.
			f, err = createFresh(d, t.partName)
		}
		if err != nil {
			return err
		}
		t.f = f
		if int64(m.Size) >= directMin {
			t.df = openDirect(d, t.partName, t.f)
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
	f, err := createFresh(d, t.stateName)
	if err != nil {
		return err
	}
	_, err = f.Write(st)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", t.statePath, err)
	}
	return nil
}

// createFresh creates the file name in d, which must be new: whatever is
// there (a file of an earlier attempt, or anything planted: a symlink, a
// hard link, a FIFO) is unlinked first, which leaves its target and its
// other names as they were. A directory there is an error. A file made
// by O_CREAT|O_EXCL (which refuses even a dangling symlink) is a new
// regular file with one link: it needs no further check before writing.
func createFresh(d *safefs.Dir, name string) (*os.File, error) {
	f, err := d.CreateExclusive(name, 0o600)
	if errors.Is(err, fs.ErrExist) {
		if err := d.Unlink(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		f, err = d.CreateExclusive(name, 0o600)
	}
	return f, err
}

// close releases the partial file. With discard it also removes the
// partial state, as after a verification failure; otherwise the state is
// kept for a later resume.
//
// A file written under its own name (Request.Private) that was not
// committed is removed either way: a file of one chunk is never resumed,
// and nothing unverified stays under a file's name.
func (t *task) close(discard bool) {
	t.closeDirect()
	named := t.named && t.f != nil
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
	t.open, t.ended, t.verified, t.named = false, false, false, false
	if named {
		if d, err := t.openDir(false); err == nil {
			d.Unlink(t.base)
		}
	}
	if discard {
		if d, err := t.openDir(false); err == nil {
			d.Unlink(t.partName)
		}
		t.removeState()
	}
	t.releaseDir()
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
		if d, err := t.openDir(false); err == nil {
			d.Unlink(t.stateName)
		}
		t.stateOnDisk = false
	}
}

// noTmpfile remembers directories whose file system refused O_TMPFILE.
var noTmpfile sync.Map

// openUnnamed opens an unnamed regular file in d (O_TMPFILE), or returns
// nil where that is not supported.
func openUnnamed(d *safefs.Dir) *os.File {
	if _, no := noTmpfile.Load(d.Name()); no {
		return nil
	}
	f, err := d.OpenTmpfile(0o600)
	if err != nil {
		if errors.Is(err, safefs.ErrNoTmpfile) {
			noTmpfile.Store(d.Name(), true)
		}
		return nil
	}
	return f
}

// linkInto gives the unnamed file f the name base in d, replacing any file
// there atomically. linkat cannot replace, so over an existing file the
// file is linked under tmp (its hidden partial name) and renamed over base.
func linkInto(f *os.File, d *safefs.Dir, base, tmp string) error {
	err := d.LinkFile(f, base)
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	d.Unlink(tmp) // nothing is expected there: the partial file was absent
	if err := d.LinkFile(f, tmp); err != nil {
		return err
	}
	if err := d.Rename(tmp, base); err != nil {
		d.Unlink(tmp)
		return err
	}
	return nil
}

// directMin is the smallest file written with O_DIRECT: below it the extra
// descriptor costs more than the page-cache copy it saves.
const directMin = 4 << 20

// openDirect opens name in d again for O_DIRECT writes, only if it is
// still the file f; nil where the file system does not support O_DIRECT
// (tmpfs, some network file systems).
func openDirect(d *safefs.Dir, name string, f *os.File) *os.File {
	df, err := d.OpenFile(name, unix.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	if !safefs.SameFile(df, f) {
		df.Close()
		return nil
	}
	return df
}

func (t *task) closeDirect() {
	if t.df != nil {
		t.df.Close()
		t.df = nil
	}
}
