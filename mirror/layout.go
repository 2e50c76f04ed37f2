package mirror

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// preexisting names the plain directory found at OUT/T by the first sync,
// kept as the oldest version.
const preexisting = "00000000000000000000-preexisting"

// layout is the open state directory of one tree.
type layout struct {
	tree  string
	out   *os.File // OUT
	t     *os.File // OUT/.zsnd/T
	v     *os.File // OUT/.zsnd/T/v
	m     *os.File // OUT/.zsnd/T/m
	lock  *os.File
	paths struct{ out, t string }
	// unlinked, when not nil, collects the inodes (device, number) of the
	// hard-linked files emptyTrash removes a name of (statcache.go).
	unlinked map[[2]uint64]bool
	// linked is the version the symlink at OUT/newLink points to, made
	// ahead of a switch by linkAhead; "" when there is none of ours.
	linked string
}

func (l *layout) close() {
	for _, f := range []*os.File{l.v, l.m, l.t, l.out, l.lock} {
		if f != nil {
			f.Close() // closing the lock file releases the flock
		}
	}
}

// openLayout opens (creating as needed) OUT/.zsnd/T and its directories,
// takes the tree's lock (waiting up to wait), and finishes a switch from a
// plain directory that an interrupted run left half done.
func openLayout(out, tree string, wait time.Duration) (*layout, error) {
	l := &layout{tree: tree}
	l.paths.out = out
	fd, err := unix.Open(out, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open output directory", Path: out, Err: err}
	}
	l.out = os.NewFile(uintptr(fd), out)
	ok := false
	defer func() {
		if !ok {
			l.close()
		}
	}()
	z, err := mkdirPlain(l.out, ".zsnd", 0o755)
	if err != nil {
		return nil, err
	}
	l.t, err = mkdirPlain(z, tree, 0o755)
	z.Close()
	if err != nil {
		return nil, err
	}
	l.paths.t = filepath.Join(out, ".zsnd", tree)
	lfd, err := unix.Openat(int(l.t.Fd()), "lock", unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(l.paths.t, "lock"), Err: err}
	}
	l.lock = os.NewFile(uintptr(lfd), "lock")
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(lfd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("locking %s: %w", filepath.Join(l.paths.t, "lock"), err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s is locked by another process", ErrLocked, filepath.Join(l.paths.t, "lock"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l.v, err = mkdirPlain(l.t, "v", 0o755); err != nil {
		return nil, err
	}
	if l.m, err = mkdirPlain(l.t, "m", 0o755); err != nil {
		return nil, err
	}
	if err := l.recoverLinkTmp(); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// mkdirPlain makes (or opens) a directory of the state layout; a symbolic
// link or anything else in its place is an error, never followed.
func mkdirPlain(dir *os.File, name string, mode uint32) (*os.File, error) {
	if err := unix.Mkdirat(int(dir.Fd()), name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, &os.PathError{Op: "mkdir", Path: join(dir.Name(), name), Err: err}
	}
	d, err := openDir(dir, name)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (a directory of the mirror's state must be a plain directory)", ErrLayout, err)
	}
	return d, nil
}

// recoverLinkTmp finishes or undoes an interrupted switch: link.tmp is a
// symlink not yet renamed (removed), or the old plain directory that
// RENAME_EXCHANGE swapped out of OUT/T (kept as the preexisting version).
func (l *layout) recoverLinkTmp() error {
	if err := l.removeNewLink(); err != nil {
		return err
	}
	st, err := lstatAt(int(l.t.Fd()), "link.tmp")
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lstat link.tmp: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return l.keepPreexisting()
	}
	return removeAllAt(int(l.t.Fd()), "link.tmp")
}

// keepPreexisting moves link.tmp (the former plain OUT/T) into v/.
func (l *layout) keepPreexisting() error {
	name := preexisting
	for i := 1; ; i++ {
		if _, err := lstatAt(int(l.v.Fd()), name); errors.Is(err, unix.ENOENT) {
			break
		}
		name = fmt.Sprintf("%s.%d", preexisting, i)
	}
	if err := unix.Renameat(int(l.t.Fd()), "link.tmp", int(l.v.Fd()), name); err != nil {
		return fmt.Errorf("keeping the former %s as %s: %w", l.tree, name, err)
	}
	return errors.Join(fsyncDir(l.v), fsyncDir(l.t))
}

// current is what the stable path shows.
type current struct {
	kind int    // curNone, curManaged, curPlain
	name string // version directory name (curManaged)
	seq  uint64
	id12 string
}

const (
	curNone = iota
	curManaged
	curPlain
)

// linkPrefix is the stable symlink's target before the version name.
func (l *layout) linkPrefix() string { return ".zsnd/" + l.tree + "/v/" }

// newLink is the name, in OUT itself, of the symlink a switch renames
// over OUT/T: OUT/.zsnd.T.new (for a name too long for that,
// OUT/.zsnd.<16 hex of the name's BLAKE3>.new). A rename within one
// directory takes no lock of the whole file system; one between
// directories takes the kernel's rename mutex, which the node's other
// renames between directories (pruning, spares, other trees' syncs, other
// processes) hold too: with 50 followers on one file system, a switch
// from OUT/.zsnd/T/ waited up to 150 ms for it (BENCHMARKS.md).
func (l *layout) newLink() string {
	if n := ".zsnd." + l.tree + ".new"; len(n) <= 255 {
		return n
	}
	h := blake3.Sum256([]byte(l.tree))
	return ".zsnd." + hex.EncodeToString(h[:8]) + ".new"
}

// removeNewLink removes a symlink left at OUT/newLink by a switch that was
// interrupted before its rename (the layout is opened under the tree's
// lock, so no other switch is making one). Anything else there is not
// ours: it is left alone, and a switch fails clearly (switchTo).
func (l *layout) removeNewLink() error {
	n := l.newLink()
	st, err := lstatAt(int(l.out.Fd()), n)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("lstat %s: %w", filepath.Join(l.paths.out, n), err)
	case st.Mode&unix.S_IFMT != unix.S_IFLNK:
		return nil
	}
	if err := unix.Unlinkat(int(l.out.Fd()), n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s: %w", filepath.Join(l.paths.out, n), err)
	}
	return nil
}

// current reads OUT/T.
func (l *layout) current() (current, error) {
	st, err := lstatAt(int(l.out.Fd()), l.tree)
	if errors.Is(err, unix.ENOENT) {
		return current{}, nil
	}
	if err != nil {
		return current{}, fmt.Errorf("lstat %s: %w", filepath.Join(l.paths.out, l.tree), err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return current{kind: curPlain}, nil
	case unix.S_IFLNK:
	default:
		return current{}, fmt.Errorf("%w: %s exists and is not a directory or a symlink made by zrecv; move it away", ErrLayout, filepath.Join(l.paths.out, l.tree))
	}
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(int(l.out.Fd()), l.tree, buf)
	if err != nil {
		return current{}, fmt.Errorf("readlink %s: %w", filepath.Join(l.paths.out, l.tree), err)
	}
	target := string(buf[:n])
	name, ok := strings.CutPrefix(target, l.linkPrefix())
	seq, id12, okName := parseVersionName(name)
	if !ok || !okName {
		return current{}, fmt.Errorf("%w: %s is a symlink to %q, not to a version kept by zrecv; move it away", ErrLayout, filepath.Join(l.paths.out, l.tree), target)
	}
	return current{kind: curManaged, name: name, seq: seq, id12: id12}, nil
}

// versionName is v/'s name for a version.
func versionName(seq uint64, id manifest.ID) string { return fmt.Sprintf("%020d-%s", seq, id.Short()) }

// parseVersionName reads "<20 digits>-<12 hex>" or the preexisting names.
func parseVersionName(name string) (uint64, string, bool) {
	if name == preexisting || strings.HasPrefix(name, preexisting+".") {
		return 0, "", true
	}
	if len(name) != 20+1+12 || name[20] != '-' || strings.ContainsAny(name, "/") {
		return 0, "", false
	}
	seq, err := strconv.ParseUint(name[:20], 10, 64)
	if err != nil {
		return 0, "", false
	}
	for _, c := range name[21:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0, "", false
		}
	}
	return seq, name[21:], true
}

// versions lists v/ sorted by sequence (oldest first).
func (l *layout) versions() ([]string, error) {
	names, err := readNames(l.v)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", l.v.Name(), err)
	}
	var vs []string
	for _, n := range names {
		if _, _, ok := parseVersionName(n); ok {
			vs = append(vs, n)
		}
	}
	slices.Sort(vs) // 20-digit sequence first: lexical order is sequence order
	return vs, nil
}

// loadManifest reads m/<id hex> and checks it against its name. ok is
// false when it is missing or does not match (it is then removed). A
// manifest this process decoded lately comes from memory (mancache.go)
// when m/ holds a file of its size.
func (l *layout) loadManifest(id manifest.ID, lim manifest.Limits) (*manifest.Manifest, bool) {
	if man, size := decoded.get(id, lim); man != nil {
		// Only if this layout keeps it too (the cache is the process's:
		// another tree or output directory may have put it there).
		if st, err := lstatAt(int(l.m.Fd()), id.String()); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == int64(size) {
			return man, true
		}
	}
	fd, err := unix.Openat(int(l.m.Fd()), id.String(), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	f := os.NewFile(uintptr(fd), id.String())
	defer f.Close()
	b, err := readSmallFile(f, int64(lim.MaxBytes))
	if err != nil || manifest.IDOf(b) != id {
		unix.Unlinkat(int(l.m.Fd()), id.String(), 0)
		return nil, false
	}
	man, err := manifest.Decode(b, lim)
	if err != nil {
		unix.Unlinkat(int(l.m.Fd()), id.String(), 0)
		return nil, false
	}
	decoded.put(id, man, len(b))
	return man, true
}

// manifestFor finds the kept manifest of a version directory by its
// 12-hex id prefix.
func (l *layout) manifestFor(id12 string, lim manifest.Limits) (*manifest.Manifest, manifest.ID, bool) {
	if id12 == "" {
		return nil, manifest.ID{}, false
	}
	names, err := readNames(l.m)
	if err != nil {
		return nil, manifest.ID{}, false
	}
	for _, n := range names {
		if !strings.HasPrefix(n, id12) || len(n) != 64 {
			continue
		}
		var id manifest.ID
		if b, err := hex.DecodeString(n); err != nil || len(b) != len(id) {
			continue
		} else {
			copy(id[:], b)
		}
		if man, ok := l.loadManifest(id, lim); ok {
			return man, id, true
		}
	}
	return nil, manifest.ID{}, false
}

// switchTo points the stable path at v/name atomically: a new symlink
// renamed over OUT/T, or, when OUT/T is a plain directory (the first
// sync), exchanged with it (renameat2 RENAME_EXCHANGE), the old directory
// being kept as the preexisting version. OUT is synced. It returns the
// time of the rename (when readers see the new version).
func (l *layout) switchTo(name string, cur current) (time.Time, error) {
	tfd, ofd := int(l.t.Fd()), int(l.out.Fd())
	if cur.kind == curPlain {
		if err := removeAllAt(tfd, "link.tmp"); err != nil {
			return time.Time{}, err
		}
		if err := unix.Symlinkat(l.linkPrefix()+name, tfd, "link.tmp"); err != nil {
			return time.Time{}, fmt.Errorf("creating the new stable link: %w", err)
		}
		if err := unix.Renameat2(tfd, "link.tmp", ofd, l.tree, unix.RENAME_EXCHANGE); err != nil {
			removeAllAt(tfd, "link.tmp")
			return time.Time{}, fmt.Errorf("switching %s (exchanging the plain directory with the stable link): %w", filepath.Join(l.paths.out, l.tree), err)
		}
		at := time.Now()
		if err := fsyncDir(l.out); err != nil {
			return time.Time{}, err
		}
		return at, l.keepPreexisting()
	}
	// Over a symlink (or nothing): the new symlink is made beside OUT/T
	// (unless linkAhead made it) and renamed within OUT (newLink says
	// why).
	if l.linked != name {
		if err := l.linkAhead(name); err != nil {
			return time.Time{}, err
		}
	}
	nl := l.newLink()
	l.linked = ""
	if err := unix.Renameat(ofd, nl, ofd, l.tree); err != nil {
		unix.Unlinkat(ofd, nl, 0)
		return time.Time{}, fmt.Errorf("switching %s: %w", filepath.Join(l.paths.out, l.tree), err)
	}
	return time.Now(), nil // the caller fsyncs OUT (syncSwitch)
}

// linkAhead makes the symlink a switch to version name renames over
// OUT/T, at OUT/newLink, so that the switch itself is one rename (a
// barrier's switch at a set instant: section 17 of PROTOCOL.md). A
// leftover of ours was removed when the layout was opened
// (recoverLinkTmp), and one linkAhead made is replaced: anything else
// there is not zrecv's, and is an error.
func (l *layout) linkAhead(name string) error {
	ofd, nl := int(l.out.Fd()), l.newLink()
	l.unlinkAhead()
	if err := unix.Symlinkat(l.linkPrefix()+name, ofd, nl); errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: %s is in the way of the switch (zrecv makes a symlink there while it switches): remove it",
			ErrLayout, filepath.Join(l.paths.out, nl))
	} else if err != nil {
		return fmt.Errorf("creating the new stable link: %w", err)
	}
	l.linked = name
	return nil
}

// unlinkAhead removes the symlink linkAhead made, if any.
func (l *layout) unlinkAhead() {
	if l.linked != "" {
		unix.Unlinkat(int(l.out.Fd()), l.newLink(), 0)
		l.linked = ""
	}
}

// syncSwitch makes a switch durable: it fsyncs OUT, whose entry T the
// switch renamed over.
func (l *layout) syncSwitch() error { return fsyncDir(l.out) }

// prune removes kept versions beyond keep (never the current one, name)
// and manifests no kept version uses.
func (l *layout) prune(keep int, name string) ([]string, error) {
	vs, err := l.versions()
	if err != nil {
		return nil, err
	}
	var others []string
	for _, v := range vs {
		if v != name {
			others = append(others, v)
		}
	}
	var removed []string
	var errs []error
	kept := map[string]bool{name: true}
	pruned := max(0, len(others)-(keep-1))
	for i, v := range others {
		if i >= pruned {
			kept[v] = true
			continue
		}
		// Out of v/ first, in one rename: killed while deleting, a pruned
		// version must not stay behind half removed, where a rollback
		// could pick it. The newest one pruned becomes the spare, which
		// the next sync recycles (spare.go); the others are deleted.
		var err error
		if i == pruned-1 {
			err = l.toSpare(v)
		} else {
			err = l.trash(v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pruning %s: %w", v, err))
			continue
		}
		removed = append(removed, v)
	}
	errs = append(errs, l.emptyTrash(), removeAllAt(int(l.t.Fd()), "spare.tmp")) // a copy warmSpares left unfinished
	for _, sp := range l.spares() {
		base, _ := spareBase(sp)
		kept[base] = true // its manifest and stat cache stay while it does
	}
	l.pruneStats(kept)
	if len(removed) > 0 {
		errs = append(errs, fsyncDir(l.v))
	}
	// Manifests: keep those whose 12-hex prefix names a kept version (or
	// the spare).
	if names, err := readNames(l.m); err == nil {
		for _, n := range names {
			used := false
			for v := range kept {
				if _, id12, _ := parseVersionName(v); id12 != "" && strings.HasPrefix(n, id12) && len(n) == 64 {
					used = true
				}
			}
			if !used {
				unix.Unlinkat(int(l.m.Fd()), n, 0)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// trash moves v/name to trash/ (atomically), to be deleted there.
func (l *layout) trash(name string) error {
	tr, err := mkdirPlain(l.t, "trash", 0o700)
	if err != nil {
		return err
	}
	defer tr.Close()
	if err := removeAllAt(int(tr.Fd()), name); err != nil {
		return err
	}
	return unix.Renameat(int(l.v.Fd()), name, int(tr.Fd()), name)
}

// emptyTrash deletes what trash/ holds (versions pruned now, or by a run
// killed while deleting them).
func (l *layout) emptyTrash() error {
	if _, err := lstatAt(int(l.t.Fd()), "trash"); errors.Is(err, unix.ENOENT) {
		return nil
	}
	return removeAllNoting(int(l.t.Fd()), "trash", l.unlinked)
}

// Rollback switches OUT/tree to the kept version with the highest sequence
// below the current one, without any network. It returns the version
// directory now shown.
func Rollback(out, tree string) (string, error) {
	if err := ValidTree(tree); err != nil {
		return "", err
	}
	l, err := openLayout(out, tree, 0)
	if err != nil {
		return "", err
	}
	defer l.close()
	cur, err := l.current()
	if err != nil {
		return "", err
	}
	if cur.kind != curManaged {
		return "", fmt.Errorf("%w: %s is not a version switched to by zrecv", ErrNoPrevious, filepath.Join(out, tree))
	}
	vs, err := l.versions()
	if err != nil {
		return "", err
	}
	prev := ""
	for _, v := range vs {
		if v < cur.name {
			prev = v
		}
	}
	if prev == "" {
		return "", fmt.Errorf("%w: %s shows %s, the oldest one kept", ErrNoPrevious, filepath.Join(out, tree), cur.name)
	}
	if _, err := l.switchTo(prev, cur); err != nil {
		return "", err
	}
	if err := l.syncSwitch(); err != nil {
		return "", err
	}
	return filepath.Join(l.v.Name(), prev), nil
}

// readSmallFile reads f whole, up to max+1 bytes (more is for the caller
// to refuse), in one buffer of the size fstat gives (plus what a file
// growing meanwhile adds).
func readSmallFile(f *os.File, max int64) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	n := min(st.Size, max) + 1 // +1: to see the end (or a file beyond max)
	b := make([]byte, 0, n)
	for int64(len(b)) <= max {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		k, err := f.Read(b[len(b):min(int64(cap(b)), max+1)])
		b = b[:len(b)+k]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}
