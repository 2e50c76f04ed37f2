package mirror

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// The check of a tree on disk against a version's manifest, used by check
// (is the current version still intact?) and verify (is the staged tree
// the version?). It never builds a manifest of what is on disk: every
// directory of the version is read once (in parallel, by fsWorkers
// goroutines), each name found is looked up among the children the
// manifest gives that directory, and each entry is compared with its
// manifest entry as it is found. Names the manifest
// does not have are extra entries; manifest entries not found equal are
// missing or changed. Nothing is followed: a directory is opened beneath
// the root with openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (so a
// directory replaced by a symbolic link is not entered), everything else
// is examined with fstatat AT_SYMLINK_NOFOLLOW and readlinkat.

// fsWorkers is how many goroutines share the file system work of a sync
// that can be shared (the check of a tree, placing a new version's files,
// pruning, the stat cache). The work is mostly system calls: more than
// the cores gains little, and two already halve it on a small machine.
// Never more than GOMAXPROCS: zrecv lowers that to 1 while the machine
// is saturated (package internal/cpuload), where a second worker only
// adds scheduling to the same CPU time.
var fsWorkers = 2

// procs is GOMAXPROCS now (a variable for the tests, which run any
// worker count whatever the machine).
var procs = func() int { return runtime.GOMAXPROCS(0) }

// workers is how many goroutines forRuns uses now.
func workers() int { return max(1, min(fsWorkers, procs())) }

// forRuns calls, from workers() goroutines (the caller's among them), each
// one's do for runs of run consecutive indexes that together cover [0, n)
// once; newWorker makes a goroutine's do and the done it calls at its
// end. A caller that stops early makes its do return at once.
func forRuns(n, run int, newWorker func() (do func(lo, hi int), done func())) {
	var next atomic.Int64
	work := func() {
		do, done := newWorker()
		defer done()
		for {
			lo := int(next.Add(int64(run)) - int64(run))
			if lo >= n {
				return
			}
			do(lo, min(lo+run, n))
		}
	}
	var wg sync.WaitGroup
	for range min(workers(), (n+run-1)/run) - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
}

// placeRun is the run of forRuns over a manifest's entries: mostly
// entries of one directory, in manifest order.
const placeRun = 64

// childIndex lists, for each directory entry of a manifest, the indexes of
// its children in manifest order (which is their names' bytewise order).
type childIndex struct {
	start []int32 // by entry index: kids[start[i]:start[i+1]] are i's children
	kids  []int32
}

// newChildIndex indexes a valid manifest (every parent an earlier
// directory entry).
func newChildIndex(m *manifest.Manifest) childIndex {
	es := m.Entries
	n := len(es)
	parent := make([]int32, n)
	count := make([]int32, n+1)
	for j := 1; j < n; j++ {
		dir, _ := split(es[j].Path)
		prev := j - 1
		var p int
		switch {
		case es[prev].Path == dir:
			p = prev
		case prev > 0 && parentPath(es[prev].Path) == dir:
			p = int(parent[prev])
		default:
			p = indexOf(m, dir)
		}
		parent[j] = int32(p)
		count[p+1]++
	}
	// count becomes start: start[i] = number of children of entries < i.
	for i := 1; i <= n; i++ {
		count[i] += count[i-1]
	}
	kids := make([]int32, n)
	fill := parent // reused: next free slot per directory
	next := make([]int32, n)
	copy(next, count[:n])
	for j := 1; j < n; j++ {
		p := fill[j]
		kids[next[p]] = int32(j)
		next[p]++
	}
	return childIndex{start: count, kids: kids[:max(n-1, 0)]}
}

func parentPath(p string) string { d, _ := split(p); return d }

// of returns the children of entry i.
func (c *childIndex) of(i int) []int32 { return c.kids[c.start[i]:c.start[i+1]] }

// entry states of a treeCheck.
const (
	stUnseen uint8 = iota // not found (yet), or found different
	stEqual               // found, equal to the version's entry
)

// treeCheck compares the tree below root with want (whose modes are as a
// node has them: see localized).
type treeCheck struct {
	root *os.File
	want *manifest.Manifest
	kids childIndex
	// hash: compare file contents too. A file for which trust (when set)
	// returns true is not read: its content is the version's.
	hash  bool
	trust func(i int, st *unix.Stat_t) bool
	// dirTrust, when set, tells whether directory i (found with its own
	// entry equal, with stat st) is known to hold exactly the names the
	// version gives it: its children are then examined by name, without
	// reading the directory. record (when set) gets each directory
	// found equal with nothing extra in it.
	dirTrust func(i int, st *unix.Stat_t) bool
	// record, when set, gets the stat of each file found equal: the
	// lstat of a trusted one, the fstat of a hashed one (taken before
	// reading it). Called for each index at most once, from any worker.
	record func(i int, st *unix.Stat_t, hashed bool)
	// firstDiff: stop at the first difference (verify); otherwise every
	// difference is collected (check).
	firstDiff bool
	// maxExtra: more extra entries than this stop the check with
	// errTooMany (what is collected stays bounded).
	maxExtra int

	state  []uint8
	extra  []string // paths on disk that the version does not have
	diff   string   // with firstDiff: the first difference found
	nExtra atomic.Int64
	stop   atomic.Bool
	mu     sync.Mutex
	err    error
}

// errDiffers stops a treeCheck with firstDiff at its first difference.
var errDiffers = errors.New("differs from the version")

// run checks the tree. It returns nil when the check ran to its end (or
// stopped at a difference: see diff), errTooMany past maxExtra extra
// entries, or the error that kept it from reading the tree.
func (c *treeCheck) run() error {
	n := len(c.want.Entries)
	c.kids = newChildIndex(c.want)
	c.state = make([]uint8, n)
	var dirs []int32
	for i := range c.want.Entries {
		if c.want.Entries[i].Type == manifest.TypeDir {
			dirs = append(dirs, int32(i))
		}
	}
	forRuns(len(dirs), 1, func() (func(lo, hi int), func()) {
		w := &checkWorker{c: c, buf: make([]byte, 32<<10), link: make([]byte, manifest.MaxTargetLen+1)}
		do := func(lo, hi int) {
			for k := lo; k < hi && !c.stop.Load(); k++ {
				if err := w.dir(int(dirs[k])); err != nil {
					c.fail(err)
				}
			}
		}
		done := func() {
			if len(w.extra) > 0 {
				c.mu.Lock()
				c.extra = append(c.extra, w.extra...)
				c.mu.Unlock()
			}
		}
		return do, done
	})
	if errors.Is(c.err, errDiffers) {
		return nil
	}
	if c.err != nil {
		return c.err
	}
	slices.Sort(c.extra)
	if c.firstDiff {
		// Not stopped: report the first extra or missing entry, if any.
		if len(c.extra) > 0 {
			c.diff = fmt.Sprintf("%q is on disk but not in the version", c.extra[0])
		} else if i := slices.Index(c.state, stUnseen); i >= 0 {
			c.diff = fmt.Sprintf("%q is missing on disk", c.want.Entries[i].Path)
		}
	}
	return nil
}

// fail records the first error and stops the workers.
func (c *treeCheck) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.stop.Store(true)
}

// differs notes a difference: with firstDiff it stops the check.
func (c *treeCheck) differs(why func() string) {
	if !c.firstDiff {
		return
	}
	c.mu.Lock()
	if c.err == nil {
		c.err, c.diff = errDiffers, why()
	}
	c.mu.Unlock()
	c.stop.Store(true)
}

// diffPaths returns the paths that differ (check): extra entries, and
// entries of the version not found equal, sorted.
func (c *treeCheck) diffPaths() []string {
	out := c.extra
	for i, s := range c.state {
		if s != stEqual {
			out = append(out, c.want.Entries[i].Path)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkWorker is one goroutine's buffers.
type checkWorker struct {
	c     *treeCheck
	buf   []byte // getdents
	link  []byte // readlinkat
	fh    *fileHasher
	extra []string
}

// dir reads directory entry i of the version: its own type, mode and
// mtime, and each of its children but directories (read by their own
// dir call).
func (w *checkWorker) dir(i int) error {
	c := w.c
	e := &c.want.Entries[i]
	// The root too is opened again: getdents moves the offset of the
	// open file description it reads.
	fd, err := openBeneath(int(c.root.Fd()), e.Path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	switch {
	case err == nil:
		defer unix.Close(fd)
	case i != 0 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV)):
		// Gone, not a directory, or beneath something that is not one
		// (a symbolic link): missing, and so is all below it.
		c.differs(func() string { return fmt.Sprintf("%q is missing on disk or not a directory", e.Path) })
		return nil
	default:
		return &os.PathError{Op: "open", Path: join(c.root.Name(), e.Path), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: join(c.root.Name(), e.Path), Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR && uint32(st.Mode)&0o7777 == e.Mode && statMtime(&st) == e.MtimeNs {
		c.state[i] = stEqual
	} else {
		c.differs(func() string { return describe(e, &st) })
	}
	kids := c.kids.of(i)
	prefix := len(e.Path) + 1
	if i == 0 {
		prefix = 0
	}
	es := c.want.Entries
	if c.state[i] == stEqual && c.dirTrust != nil && c.dirTrust(i, &st) {
		// Its names are the version's (its inode and ctime are those
		// recorded when they were): each child is looked at by name.
		for _, j := range kids {
			if es[j].Type == manifest.TypeDir {
				continue // dir(j) opens it
			}
			if err := w.child(fd, int(j), es[j].Path[prefix:], unix.DT_UNKNOWN); err != nil {
				return err
			}
			if c.stop.Load() {
				return nil
			}
		}
		if c.record != nil {
			c.record(i, &st, false)
		}
		return nil
	}
	if testHookListed != nil {
		testHookListed(e.Path)
	}
	var failed error // from the comparison, not the reading
	extra := false
	err = direntsOf(fd, w.buf, func(name string, typ uint8) error {
		k, found := slices.BinarySearchFunc(kids, name, func(j int32, name string) int {
			return strings.Compare(es[j].Path[prefix:], name)
		})
		if !found {
			extra = true
			failed = w.extraName(e.Path, name)
		} else {
			failed = w.child(fd, int(kids[k]), name, typ)
		}
		if failed != nil {
			return failed
		}
		if c.stop.Load() {
			return errStopped
		}
		return nil
	})
	switch {
	case failed != nil:
		return failed
	case err == errStopped:
		return nil
	case err != nil:
		return &os.PathError{Op: "getdents", Path: join(c.root.Name(), e.Path), Err: err}
	}
	if !extra && c.state[i] == stEqual && c.record != nil {
		// Nothing but the version's names (a name missing on disk is
		// a child found unequal: its directory's names change when it
		// is put back).
		c.record(i, &st, false)
	}
	return nil
}

// testHookListed, when set (tests), is called with each directory a
// check reads.
var testHookListed func(path string)

// errStopped ends a directory's reading when the check stops.
var errStopped = errors.New("stopped")

// extraName notes a name on disk the version does not have.
func (w *checkWorker) extraName(dir, name string) error {
	c := w.c
	p := join(dir, name)
	if dir == "" {
		p = strings.Clone(name)
	}
	c.differs(func() string { return fmt.Sprintf("%q is on disk but not in the version", p) })
	if c.nExtra.Add(1) > int64(c.maxExtra) {
		return errTooMany
	}
	w.extra = append(w.extra, p)
	return nil
}

// child compares the child j of directory fd, found under name with
// directory entry type typ (DT_*, possibly DT_UNKNOWN), with the version.
// A directory of the version is left to its own dir call.
func (w *checkWorker) child(fd, j int, name string, typ uint8) error {
	c := w.c
	e := &c.want.Entries[j]
	if e.Type == manifest.TypeDir {
		return nil // dir(j) opens it, or finds it missing
	}
	if typ == unix.DT_DIR {
		c.differs(func() string { return fmt.Sprintf("%q: the version has a %v, the disk a directory", e.Path, e.Type) })
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			c.differs(func() string { return fmt.Sprintf("%q is missing on disk", e.Path) })
			return nil
		}
		return &os.PathError{Op: "lstat", Path: join(c.root.Name(), e.Path), Err: err}
	}
	switch e.Type {
	case manifest.TypeFile:
		if st.Mode&unix.S_IFMT != unix.S_IFREG || uint32(st.Mode)&0o7777 != e.Mode || statMtime(&st) != e.MtimeNs || uint64(st.Size) != e.Size {
			c.differs(func() string { return describe(e, &st) })
			return nil
		}
		if !c.hash {
			c.state[j] = stEqual
			return nil
		}
		if c.trust != nil && c.trust(j, &st) {
			c.state[j] = stEqual
			if c.record != nil {
				c.record(j, &st, false)
			}
			return nil
		}
		if w.fh == nil {
			w.fh = newFileHasher()
		}
		sum, st2, err := hashAtFd(fd, name, w.fh)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, errNotRegular) {
				c.differs(func() string { return fmt.Sprintf("%q changed while being checked", e.Path) })
				return nil
			}
			return fmt.Errorf("hashing %s: %w", e.Path, err)
		}
		if st2.Dev != st.Dev || st2.Ino != st.Ino || st2.Size != st.Size || statMtime(&st2) != e.MtimeNs || uint32(st2.Mode)&0o7777 != e.Mode {
			c.differs(func() string { return fmt.Sprintf("%q changed while being checked", e.Path) })
			return nil
		}
		if sum != e.Hash {
			c.differs(func() string {
				return fmt.Sprintf("%q: content differs from the version (same size %d)", e.Path, e.Size)
			})
			return nil
		}
		c.state[j] = stEqual
		if c.record != nil {
			c.record(j, &st2, true)
		}
	case manifest.TypeSymlink:
		if st.Mode&unix.S_IFMT != unix.S_IFLNK || statMtime(&st) != e.MtimeNs {
			c.differs(func() string { return describe(e, &st) })
			return nil
		}
		k, err := unix.Readlinkat(fd, name, w.link)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
				c.differs(func() string { return fmt.Sprintf("%q changed while being checked", e.Path) })
				return nil
			}
			return &os.PathError{Op: "readlink", Path: join(c.root.Name(), e.Path), Err: err}
		}
		if string(w.link[:k]) != e.Target {
			got := string(w.link[:k])
			c.differs(func() string { return fmt.Sprintf("%q: symlink to %q, the version has %q", e.Path, got, e.Target) })
			return nil
		}
		c.state[j] = stEqual
	}
	return nil
}

// describe tells how what st shows differs from e.
func describe(e *manifest.Entry, st *unix.Stat_t) string {
	var typ string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		typ = "file"
	case unix.S_IFDIR:
		typ = "dir"
	case unix.S_IFLNK:
		typ = "symlink"
	default:
		typ = "special file"
	}
	return fmt.Sprintf("%q: version has %v mode %#o mtime %d size %d, disk has %s mode %#o mtime %d size %d",
		e.Path, e.Type, e.Mode, e.MtimeNs, e.Size, typ, uint32(st.Mode)&0o7777, statMtime(st), st.Size)
}
