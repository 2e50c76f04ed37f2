// Package safefs works beneath a directory descriptor without ever
// following a symbolic link, so that files planted by someone who can write
// into that directory cannot redirect a privileged process elsewhere.
//
// # What is guaranteed
//
// A Dir is an open directory descriptor. Every path given to its methods
// (rel) is relative to it, must not be absolute and must not contain a ".."
// component; otherwise the call fails with ErrNotBeneath before any system
// call. For every method:
//
//   - No symbolic link is followed, neither in an intermediate component
//     nor in the final one. Paths are opened with openat2(2) and
//     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; where
//     openat2 is missing (ENOSYS, or EPERM from a seccomp filter) each
//     component is opened in turn with O_NOFOLLOW | O_DIRECTORY, and the
//     final one with O_NOFOLLOW. A symlink met on the way is reported as
//     ErrSymlink, naming the path.
//   - Operations that act on a name (mkdir, rename, exchange, unlink,
//     link, symlink, readlink, lstat, and each step of RemoveAll) are done
//     with the *at system call on a descriptor of the name's parent
//     directory, itself opened as above, so a directory swapped for a
//     symlink between two calls is not followed either: the call acts in
//     the directory that was opened, or fails.
//   - Files are opened with O_CLOEXEC, and O_NOCTTY; a file opened for
//     reading by ReadFileBounded, or for writing by OpenPrivate, is opened
//     with O_NONBLOCK first so a FIFO cannot block the open, and refused
//     unless it is a regular file.
//   - ReadFileBounded reads at most max bytes, never allocates more than
//     max+1 bytes, and never blocks on a FIFO or device.
//
// What is not guaranteed: the directory opened by OpenDir itself is found
// by an ordinary path lookup (symlinks in that path are followed: it is
// the caller's choice). A directory beneath a Dir that someone renames
// elsewhere after it was opened keeps being used through its descriptor;
// that is only ever a place the renaming user could write to. Mount points
// are crossed. Hard links cannot be refused at open time:
// CheckRegularSingleLink (and OpenPrivate, which calls it) checks the link
// count of an opened file. The Info method of an entry from ReadDir looks
// the name up by path, as package os does: use Type or Lstat instead.
//
// The package is for Linux (openat2, O_TMPFILE, renameat2).
package safefs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Errors from this package are *os.PathError (or
// *os.LinkError) wrapping one of these or an errno.
var (
	// ErrSymlink: a component of the path, or the path itself, is a
	// symbolic link, which is never followed.
	ErrSymlink = errors.New("is or passes through a symbolic link (refused)")
	// ErrNotBeneath: the path is absolute, contains "..", or is empty.
	ErrNotBeneath = errors.New("path is not beneath the directory")
	// ErrNotRegular: the file is not a regular file (a FIFO, device,
	// socket, directory...).
	ErrNotRegular = errors.New("not a regular file")
	// ErrLinked: the file has more than one hard link, so writing it would
	// change another name too.
	ErrLinked = errors.New("has other hard links")
	// ErrNotOwned: the file belongs to another user or others may write it.
	ErrNotOwned = errors.New("not owned by this user or writable by others")
	// ErrTooLarge: the file holds more than the limit given.
	ErrTooLarge = errors.New("larger than allowed")
	// ErrNoTmpfile: the file system does not support unnamed files
	// (O_TMPFILE).
	ErrNoTmpfile = errors.New("unnamed files (O_TMPFILE) not supported")
)

// resolveFlags are the openat2 resolve flags used for every lookup.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

var (
	probeOnce sync.Once
	haveOpen2 bool
	// forceWalk makes every lookup use the per-component fallback (tests).
	forceWalk bool
)

func openat2Available() bool {
	if forceWalk {
		return false
	}
	probeOnce.Do(func() {
		fd, err := unix.Openat2(unix.AT_FDCWD, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveFlags})
		if err == nil {
			unix.Close(fd)
			haveOpen2 = true
			return
		}
		haveOpen2 = !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
	})
	return haveOpen2
}

// Dir is an open directory. Its methods are safe for concurrent use as
// long as Close is not called meanwhile.
type Dir struct {
	fd   int
	name string
}

// OpenDir opens the directory at path with an ordinary lookup: symlinks in
// path itself are followed (the caller chose it). Everything done through
// the returned Dir stays beneath it.
func OpenDir(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{fd: fd, name: path}, nil
}

// Close closes the directory descriptor.
func (d *Dir) Close() error {
	if d.fd < 0 {
		return os.ErrClosed
	}
	err := unix.Close(d.fd)
	d.fd = -1
	if err != nil {
		return &os.PathError{Op: "close", Path: d.name, Err: err}
	}
	return nil
}

// Fd returns the descriptor; it stays owned by d.
func (d *Dir) Fd() int { return d.fd }

// Name returns the path the directory was opened as (for messages).
func (d *Dir) Name() string { return d.name }

// Join returns the path of rel for messages: d's name joined with rel.
func (d *Dir) Join(rel string) string {
	if rel == "" || rel == "." {
		return d.name
	}
	return filepath.Join(d.name, rel)
}

// Sync fsyncs the directory, making renames and links in it durable.
func (d *Dir) Sync() error {
	if err := unix.Fsync(d.fd); err != nil {
		return &os.PathError{Op: "fsync", Path: d.name, Err: err}
	}
	return nil
}

// split checks rel and returns its components; "" and "." give none.
func split(rel string) ([]string, error) {
	if strings.HasPrefix(rel, "/") || strings.ContainsRune(rel, 0) {
		return nil, ErrNotBeneath
	}
	var out []string
	for _, c := range strings.Split(rel, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, ErrNotBeneath
		}
		out = append(out, c)
	}
	return out, nil
}

// errno maps a lookup error onto the package's sentinels.
func lookupErr(err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return ErrSymlink
	case errors.Is(err, unix.EXDEV):
		return ErrNotBeneath
	}
	return err
}

// openBeneath opens the (checked, non-empty) components beneath dirfd with
// flags; O_NOFOLLOW and O_CLOEXEC are always added.
func openBeneath(dirfd int, comps []string, flags int, perm uint32) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if flags&(unix.O_CREAT|unix.O_TMPFILE) == 0 {
		perm = 0
	}
	if openat2Available() {
		how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(perm), Resolve: resolveFlags}
		path := strings.Join(comps, "/")
		for i := 0; ; i++ {
			fd, err := unix.Openat2(dirfd, path, &how)
			if (errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)) && i < 16 {
				continue // a concurrent rename; the kernel asks to retry
			}
			if errors.Is(err, unix.ENOTDIR) {
				// O_DIRECTORY on a symlink says ENOTDIR: the walk below
				// tells a symlink from a file, and fails the same way.
				break
			}
			if err != nil {
				return -1, lookupErr(err)
			}
			return fd, nil
		}
	}
	cur := dirfd
	for _, c := range comps[:len(comps)-1] {
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			err = walkErr(cur, c, err)
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	fd, err := unix.Openat(cur, comps[len(comps)-1], flags, perm)
	if err != nil {
		err = walkErr(cur, comps[len(comps)-1], err)
	}
	if cur != dirfd {
		unix.Close(cur)
	}
	return fd, err
}

// walkErr turns the ENOTDIR or ELOOP of an O_NOFOLLOW open of a symlink into
// ErrSymlink.
func walkErr(dirfd int, name string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return ErrSymlink
	}
	if errors.Is(err, unix.ENOTDIR) {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return ErrSymlink
		}
	}
	return err
}

// parent opens the parent directory of rel and returns its descriptor, the
// final component, and a function releasing the descriptor.
func (d *Dir) parent(op, rel string) (int, string, func(), error) {
	comps, err := split(rel)
	if err == nil && len(comps) == 0 {
		err = ErrNotBeneath
	}
	if err != nil {
		return -1, "", nil, &os.PathError{Op: op, Path: d.Join(rel), Err: err}
	}
	base := comps[len(comps)-1]
	if len(comps) == 1 {
		return d.fd, base, func() {}, nil
	}
	fd, err := openBeneath(d.fd, comps[:len(comps)-1], unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, "", nil, &os.PathError{Op: op, Path: d.Join(rel), Err: err}
	}
	return fd, base, func() { unix.Close(fd) }, nil
}

// Sub opens the existing directory rel beneath d; "" or "." opens d again.
func (d *Dir) Sub(rel string) (*Dir, error) {
	comps, err := split(rel)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Join(rel), Err: err}
	}
	if len(comps) == 0 {
		comps = []string{"."}
	}
	fd, err := openBeneath(d.fd, comps, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Join(rel), Err: err}
	}
	return &Dir{fd: fd, name: d.Join(rel)}, nil
}

// MkdirAll creates rel and any missing parents beneath d, with perm (before
// umask). An existing symlink on the way is refused with ErrSymlink naming
// it; an existing non-directory with ENOTDIR.
func (d *Dir) MkdirAll(rel string, perm os.FileMode) error {
	sub, err := d.MkdirAllOpen(rel, perm)
	if err == nil {
		sub.Close()
	}
	return err
}

// MkdirAllOpen is MkdirAll that returns the directory opened. Each component
// is created with mkdirat and opened without following symlinks before the
// next is created in it.
func (d *Dir) MkdirAllOpen(rel string, perm os.FileMode) (*Dir, error) {
	comps, err := split(rel)
	if err != nil {
		return nil, &os.PathError{Op: "mkdir", Path: d.Join(rel), Err: err}
	}
	if sub, err := d.Sub(rel); err == nil {
		return sub, nil // usually it exists already: one system call
	}
	// Walk, which also names the component at fault.
	cur := d.fd
	for i, c := range comps {
		if err := unix.Mkdirat(cur, c, uint32(perm.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
			if cur != d.fd {
				unix.Close(cur)
			}
			return nil, &os.PathError{Op: "mkdir", Path: d.Join(strings.Join(comps[:i+1], "/")), Err: err}
		}
		fd, err := openBeneath(cur, []string{c}, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if cur != d.fd {
			unix.Close(cur)
		}
		if err != nil {
			return nil, &os.PathError{Op: "mkdir", Path: d.Join(strings.Join(comps[:i+1], "/")), Err: err}
		}
		cur = fd
	}
	if cur == d.fd {
		return d.Sub(".")
	}
	return &Dir{fd: cur, name: d.Join(rel)}, nil
}

// OpenFile opens rel beneath d with flag (os.O_* / unix.O_* flags) and, when
// creating, perm (before umask). O_NOFOLLOW and O_CLOEXEC are always added,
// so a symlink is refused as the final component too. Note that O_TRUNC
// acts before the caller could check the link count: to rewrite a file that
// may be hard-linked, use OpenPrivate.
func (d *Dir) OpenFile(rel string, flag int, perm os.FileMode) (*os.File, error) {
	comps, err := split(rel)
	if err == nil && len(comps) == 0 {
		err = ErrNotBeneath
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Join(rel), Err: err}
	}
	fd, err := openBeneath(d.fd, comps, flag|unix.O_NOCTTY, uint32(perm.Perm()))
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Join(rel), Err: err}
	}
	return os.NewFile(uintptr(fd), d.Join(rel)), nil
}

// CreateExclusive creates rel, which must not exist (not even as a
// dangling symlink), for reading and writing.
func (d *Dir) CreateExclusive(rel string, perm os.FileMode) (*os.File, error) {
	return d.OpenFile(rel, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, perm)
}

// OpenPrivate opens rel for reading and writing, creating it with perm if
// it is missing, without truncating it, and checks it is a regular file
// with a single link (CheckRegularSingleLink) before returning it. The
// caller truncates it if it wants it empty: done after the check, that
// cannot touch another name of the file. A symlink at rel is refused with
// ErrSymlink; a FIFO or device is refused without blocking.
func (d *Dir) OpenPrivate(rel string, perm os.FileMode) (*os.File, error) {
	f, err := d.OpenFile(rel, unix.O_RDWR|unix.O_CREAT|unix.O_NONBLOCK, perm)
	if err != nil {
		return nil, err
	}
	if err := CheckRegularSingleLink(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "fcntl", Path: f.Name(), Err: err}
	}
	return f, nil
}

// OpenTmpfile opens an unnamed regular file in d (O_TMPFILE), to be given a
// name with LinkFile. Where the file system does not support it the error
// matches ErrNoTmpfile.
func (d *Dir) OpenTmpfile(perm os.FileMode) (*os.File, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("%w (%v)", ErrNoTmpfile, err)
		}
		return nil, &os.PathError{Op: "open", Path: d.name, Err: err}
	}
	return os.NewFile(uintptr(fd), d.Join(".unnamed")), nil
}

// LinkFile gives the open file f (typically from OpenTmpfile) the name rel
// beneath d. It fails with EEXIST if rel exists: linkat never replaces.
func (d *Dir) LinkFile(f *os.File, rel string) error {
	pfd, base, done, err := d.parent("link", rel)
	if err != nil {
		return err
	}
	defer done()
	// With AT_EMPTY_PATH where it works (it needs CAP_DAC_READ_SEARCH; it
	// costs a few microseconds less than the walk through /proc), else
	// through /proc (any user). The source is our own descriptor, so
	// following its /proc magic link is safe; the new name is never
	// followed.
	fd := int(f.Fd())
	err = unix.ENOENT
	if emptyPathLink.Load() >= 0 {
		err = unix.Linkat(fd, "", pfd, base, unix.AT_EMPTY_PATH)
		switch {
		case err == nil || errors.Is(err, unix.EEXIST):
			emptyPathLink.Store(1)
		case errors.Is(err, unix.ENOENT) && emptyPathLink.Load() == 0:
			emptyPathLink.Store(-1) // no capability: /proc from now on
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		err = unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), pfd, base, unix.AT_SYMLINK_FOLLOW)
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: d.Join(rel), Err: err}
	}
	return nil
}

// emptyPathLink: 1 once linkat(AT_EMPTY_PATH) worked in this process, -1
// once it failed with ENOENT before ever working (no CAP_DAC_READ_SEARCH),
// 0 until then.
var emptyPathLink atomic.Int32

// Rename renames oldRel to newRel, both beneath d (renameat). Like
// rename(2) it replaces a file at newRel, and a symlink at either name is
// renamed or replaced itself, never followed.
func (d *Dir) Rename(oldRel, newRel string) error {
	ofd, obase, odone, err := d.parent("rename", oldRel)
	if err != nil {
		return err
	}
	defer odone()
	nfd, nbase, ndone, err := d.parent("rename", newRel)
	if err != nil {
		return err
	}
	defer ndone()
	if err := unix.Renameat(ofd, obase, nfd, nbase); err != nil {
		return &os.LinkError{Op: "rename", Old: d.Join(oldRel), New: d.Join(newRel), Err: err}
	}
	return nil
}

// Unlink removes the non-directory rel (a symlink itself, not its target).
func (d *Dir) Unlink(rel string) error {
	pfd, base, done, err := d.parent("unlink", rel)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Unlinkat(pfd, base, 0); err != nil {
		return &os.PathError{Op: "unlink", Path: d.Join(rel), Err: err}
	}
	return nil
}

// Rmdir removes the empty directory rel.
func (d *Dir) Rmdir(rel string) error {
	pfd, base, done, err := d.parent("rmdir", rel)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err != nil {
		return &os.PathError{Op: "rmdir", Path: d.Join(rel), Err: err}
	}
	return nil
}

// Symlink creates the symlink rel pointing at target (which is stored as
// given and never resolved here).
func (d *Dir) Symlink(target, rel string) error {
	pfd, base, done, err := d.parent("symlink", rel)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Symlinkat(target, pfd, base); err != nil {
		return &os.LinkError{Op: "symlink", Old: target, New: d.Join(rel), Err: err}
	}
	return nil
}

// Link creates newRel as a hard link to oldRel, both beneath d. A symlink
// at oldRel is linked itself, not its target.
func (d *Dir) Link(oldRel, newRel string) error {
	ofd, obase, odone, err := d.parent("link", oldRel)
	if err != nil {
		return err
	}
	defer odone()
	nfd, nbase, ndone, err := d.parent("link", newRel)
	if err != nil {
		return err
	}
	defer ndone()
	if err := unix.Linkat(ofd, obase, nfd, nbase, 0); err != nil {
		return &os.LinkError{Op: "link", Old: d.Join(oldRel), New: d.Join(newRel), Err: err}
	}
	return nil
}

// Exchange atomically swaps the entries aRel and bRel, both beneath d
// (renameat2 RENAME_EXCHANGE); either may be a directory or a symlink,
// which is swapped itself.
func (d *Dir) Exchange(aRel, bRel string) error {
	afd, abase, adone, err := d.parent("exchange", aRel)
	if err != nil {
		return err
	}
	defer adone()
	bfd, bbase, bdone, err := d.parent("exchange", bRel)
	if err != nil {
		return err
	}
	defer bdone()
	if err := unix.Renameat2(afd, abase, bfd, bbase, unix.RENAME_EXCHANGE); err != nil {
		return &os.LinkError{Op: "exchange", Old: d.Join(aRel), New: d.Join(bRel), Err: err}
	}
	return nil
}

// Readlink returns the target of the symlink rel (readlinkat), which is
// not resolved.
func (d *Dir) Readlink(rel string) (string, error) {
	pfd, base, done, err := d.parent("readlink", rel)
	if err != nil {
		return "", err
	}
	defer done()
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(pfd, base, buf)
		if err != nil {
			return "", &os.PathError{Op: "readlink", Path: d.Join(rel), Err: err}
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size >= 1<<16 {
			return "", &os.PathError{Op: "readlink", Path: d.Join(rel), Err: ErrTooLarge}
		}
	}
}

// ReadDir lists the directory rel ("" for d itself), sorted by name,
// without following a symlink to it. Use each entry's Type(), or d.Lstat:
// an entry's Info() looks its name up by path.
func (d *Dir) ReadDir(rel string) ([]fs.DirEntry, error) {
	sub, err := d.Sub(rel)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(sub.fd), sub.name) // owns the descriptor now
	defer f.Close()
	ents, err := f.ReadDir(-1)
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, err
}

// RemoveAll removes rel and, if it is a directory, everything beneath it,
// never following a symlink (a symlink is removed itself). A missing rel
// is not an error.
func (d *Dir) RemoveAll(rel string) error {
	pfd, base, done, err := d.parent("remove", rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer done()
	return removeAll(pfd, base, d.Join(rel), 0)
}

// removeAll removes name in the directory dirfd; path is for messages.
func removeAll(dirfd int, name, path string, depth int) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &os.PathError{Op: "unlink", Path: path, Err: err}
	}
	if depth > 4096 {
		return &os.PathError{Op: "remove", Path: path, Err: errors.New("directories nested too deep")}
	}
	fd, err := openBeneath(dirfd, []string{name}, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return &os.PathError{Op: "readdir", Path: path, Err: err}
	}
	for _, n := range names {
		if err := removeAll(fd, n, filepath.Join(path, n), depth+1); err != nil {
			return err
		}
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "rmdir", Path: path, Err: err}
	}
	return nil
}

// Lstat describes rel without following it (fstatat AT_SYMLINK_NOFOLLOW);
// no symlink on the way to it is followed either. Sys() is *unix.Stat_t.
func (d *Dir) Lstat(rel string) (fs.FileInfo, error) {
	pfd, base, done, err := d.parent("lstat", rel)
	if err != nil {
		return nil, err
	}
	defer done()
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: d.Join(rel), Err: err}
	}
	return fileInfo(base, &st), nil
}

// ReadFileBounded reads the regular file rel, which must hold at most max
// bytes. A symlink, FIFO, device, socket or directory is refused at once
// (ErrSymlink, ErrNotRegular), a larger file with ErrTooLarge; it never
// blocks and never allocates more than max+1 bytes.
func (d *Dir) ReadFileBounded(rel string, max int64) ([]byte, error) {
	return d.readBounded(rel, max, false)
}

// ReadPrivateFileBounded is ReadFileBounded of a file that must also pass
// CheckPrivate: one link, owned by the effective user, writable by nobody
// else (ErrLinked, ErrNotOwned otherwise).
func (d *Dir) ReadPrivateFileBounded(rel string, max int64) ([]byte, error) {
	return d.readBounded(rel, max, true)
}

func (d *Dir) readBounded(rel string, max int64, private bool) ([]byte, error) {
	if max < 0 {
		max = 0
	}
	f, err := d.OpenFile(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &os.PathError{Op: "read", Path: f.Name(), Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(st.Mode))}
	}
	if private {
		if err := CheckPrivateInfo(f.Name(), &st); err != nil {
			return nil, err
		}
	}
	if st.Size > max {
		return nil, &os.PathError{Op: "read", Path: f.Name(), Err: fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, st.Size, max)}
	}
	// One byte more than the limit tells a file that grew since fstat.
	buf := make([]byte, 0, min(st.Size, max)+1)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > max {
				return nil, &os.PathError{Op: "read", Path: f.Name(), Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)}
			}
			grow := min(int64(cap(buf))*2, max+1)
			buf = append(make([]byte, 0, grow), buf...)
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if int64(len(buf)) > max {
		return nil, &os.PathError{Op: "read", Path: f.Name(), Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)}
	}
	return buf, nil
}

// CheckRegularSingleLink checks, through the open descriptor, that f is a
// regular file with exactly one link; otherwise the error matches
// ErrNotRegular or ErrLinked.
func CheckRegularSingleLink(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return checkStat(f.Name(), &st)
}

func checkStat(name string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &os.PathError{Op: "check", Path: name, Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(st.Mode))}
	}
	if st.Nlink != 1 {
		return &os.PathError{Op: "check", Path: name, Err: fmt.Errorf("%w (%d links)", ErrLinked, st.Nlink)}
	}
	return nil
}

// CheckPrivate is CheckRegularSingleLink, and also checks that f belongs to
// the effective user and that neither group nor others may write it: a
// file nobody else could have opened for writing.
func CheckPrivate(f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return CheckPrivateInfo(f.Name(), &st)
}

// CheckPrivateInfo is CheckPrivate for a stat result already at hand (from
// Lstat's Sys()).
func CheckPrivateInfo(name string, st *unix.Stat_t) error {
	if err := checkStat(name, st); err != nil {
		return err
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return &os.PathError{Op: "check", Path: name, Err: fmt.Errorf("%w (uid %d, mode %#o)", ErrNotOwned, st.Uid, st.Mode&0o7777)}
	}
	return nil
}

// SameFile reports whether a and b are open on the same file.
func SameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "unknown file type"
}

// statInfo is an fs.FileInfo from a unix.Stat_t.
type statInfo struct {
	name string
	st   unix.Stat_t
}

func fileInfo(name string, st *unix.Stat_t) fs.FileInfo { return &statInfo{name: name, st: *st} }

func (s *statInfo) Name() string { return s.name }
func (s *statInfo) Size() int64  { return s.st.Size }
func (s *statInfo) ModTime() time.Time {
	return time.Unix(int64(s.st.Mtim.Sec), int64(s.st.Mtim.Nsec))
}
func (s *statInfo) IsDir() bool { return s.Mode().IsDir() }
func (s *statInfo) Sys() any    { return &s.st }
func (s *statInfo) Mode() fs.FileMode {
	m := fs.FileMode(s.st.Mode & 0o777)
	switch s.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if s.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if s.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if s.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
