package mirror

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// Every file system call of the mirror goes through a directory
// descriptor: names are resolved beneath it and never through a symbolic
// link (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or, where openat2 is
// missing, one openat with O_NOFOLLOW per component). The last component
// of a name is never followed either (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
// unlinkat, linkat without AT_SYMLINK_FOLLOW).

// noOpenat2 is set once openat2 proved unavailable (old kernel, seccomp).
var noOpenat2 atomic.Bool

// openBeneath opens rel (a "/"-separated relative path, "" = dir itself)
// beneath dir, following no symbolic link anywhere.
func openBeneath(dir int, rel string, flags int, mode uint32) (int, error) {
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if rel == "" {
		rel = "."
	}
	if !noOpenat2.Load() {
		fd, err := unix.Openat2(dir, rel, &unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS})
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
			return -1, err
		}
		noOpenat2.Store(true)
	}
	comps := strings.Split(rel, "/")
	cur := dir
	for i, c := range comps {
		if c == ".." || c == "" {
			if cur != dir {
				unix.Close(cur)
			}
			return -1, unix.EXDEV
		}
		f := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW
		m := uint32(0)
		if i == len(comps)-1 {
			f, m = flags, mode
		}
		fd, err := unix.Openat(cur, c, f, m)
		if cur != dir {
			unix.Close(cur)
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) {
				err = unix.ELOOP
			}
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// openDir opens the directory rel beneath dir as an *os.File.
func openDir(dir *os.File, rel string) (*os.File, error) {
	fd, err := openBeneath(int(dir.Fd()), rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: join(dir.Name(), rel), Err: err}
	}
	return os.NewFile(uintptr(fd), join(dir.Name(), rel)), nil
}

// join is for messages and os.File names only: never used to open.
func join(dir, rel string) string {
	if rel == "" {
		return dir
	}
	return dir + "/" + rel
}

// split returns the parent and the last component of a relative path.
func split(rel string) (string, string) {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i], rel[i+1:]
	}
	return "", rel
}

// lstatAt stats name in dir without following it.
func lstatAt(dir int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// mkdirAt makes the directory name in dir (mode 0700 while staging) and
// opens it; an existing directory is reused, anything else there is
// removed first.
func mkdirAt(dir *os.File, name string) (*os.File, error) {
	fd := int(dir.Fd())
	st, err := lstatAt(fd, name)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
	case err == nil:
		if err := removeAllAt(fd, name); err != nil {
			return nil, err
		}
		fallthrough
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkdirat(fd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, &os.PathError{Op: "mkdir", Path: join(dir.Name(), name), Err: err}
		}
	default:
		return nil, &os.PathError{Op: "lstat", Path: join(dir.Name(), name), Err: err}
	}
	d, err := openDir(dir, name)
	if err != nil {
		return nil, err
	}
	// A staged directory may carry its final mode from an interrupted
	// run (0500, say): make it writable for the owner while staging.
	var dst unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &dst); err == nil && dst.Mode&0o700 != 0o700 {
		unix.Fchmod(int(d.Fd()), 0o700)
	}
	return d, nil
}

// readNames lists a directory.
func readNames(d *os.File) ([]string, error) {
	if _, err := d.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return d.Readdirnames(-1)
}

// readTypes lists a directory with the type of each entry as getdents
// gives it (DT_UNKNOWN where the file system does not say).
func readTypes(d *os.File) ([]string, map[string]uint8, error) {
	if _, err := d.Seek(0, io.SeekStart); err != nil {
		return nil, nil, err
	}
	var names []string
	types := map[string]uint8{}
	err := direntsOf(int(d.Fd()), make([]byte, 8<<10), func(n string, typ uint8) error {
		n = strings.Clone(n)
		names = append(names, n)
		types[n] = typ
		return nil
	})
	return names, types, err
}

// hashAt returns the BLAKE3-256 and stat of the regular file rel beneath
// root, opened without following any symbolic link.
func hashAt(root *os.File, rel string) ([32]byte, unix.Stat_t, error) {
	return hashAtFd(int(root.Fd()), rel, nil)
}

// errNotRegular: hashAt found something else than a regular file.
var errNotRegular = errors.New("not a regular file")

// fileHasher is the buffer and hasher one goroutine reuses to hash files
// one after another (a fresh 32 KiB buffer per file of a large tree was
// most of a check's allocation).
type fileHasher struct {
	buf []byte
	h   *blake3.Hasher
}

func newFileHasher() *fileHasher { return &fileHasher{buf: make([]byte, 32<<10), h: blake3.New()} }

// hashAtFd is hashAt beneath a directory descriptor, with fh's buffer and
// hasher (nil: new ones).
func hashAtFd(dir int, rel string, fh *fileHasher) ([32]byte, unix.Stat_t, error) {
	var sum [32]byte
	var st unix.Stat_t
	fd, err := openBeneath(dir, rel, unix.O_RDONLY, 0)
	if err != nil {
		return sum, st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return sum, st, &os.PathError{Op: "fstat", Path: rel, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return sum, st, fmt.Errorf("%s: %w", rel, errNotRegular)
	}
	if fh == nil {
		fh = newFileHasher()
	}
	fh.h.Reset()
	for {
		n, err := unix.Read(fd, fh.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return sum, st, &os.PathError{Op: "read", Path: rel, Err: err}
		}
		if n == 0 {
			break
		}
		fh.h.Write(fh.buf[:n])
	}
	fh.h.Sum(sum[:0]) // appends into sum's own array
	return sum, st, nil
}

// fsyncDir syncs a directory's entries.
func fsyncDir(d *os.File) error {
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", d.Name(), err)
	}
	return nil
}

// statMtime is st's modification time in nanoseconds.
func statMtime(st *unix.Stat_t) int64 { return st.Mtim.Sec*1e9 + st.Mtim.Nsec }

// hashReader is the BLAKE3-256 of r's content.
func hashReader(r io.Reader) ([32]byte, error) {
	var sum [32]byte
	h := blake3.New()
	if _, err := io.Copy(h, r); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
