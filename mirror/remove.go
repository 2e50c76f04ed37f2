package mirror

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// direntsOf calls fn for each entry of the directory fd but . and ..,
// with its name and d_type (DT_UNKNOWN where the file system does not
// say), reading with getdents into buf. name is a view of buf: valid only
// during the call. Entries may be removed by fn.
func direntsOf(fd int, buf []byte, fn func(name string, typ uint8) error) error {
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		b := buf[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off i64, reclen u16,
			// type u8, name (NUL-terminated, padded).
			if len(b) < 19 {
				return fmt.Errorf("short directory entry (%d octets)", len(b))
			}
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen < 20 || reclen > len(b) {
				return fmt.Errorf("bad directory entry length %d", reclen)
			}
			typ := b[18]
			raw := b[19:reclen]
			b = b[reclen:]
			nl := 0
			for nl < len(raw) && raw[nl] != 0 {
				nl++
			}
			if nl == 0 || raw[0] == '.' && (nl == 1 || nl == 2 && raw[1] == '.') {
				continue
			}
			if err := fn(unsafe.String(&raw[0], nl), typ); err != nil {
				return err
			}
		}
	}
}

// remover removes trees, never following a symbolic link. With unlinked
// set, it first notes there the inode of each regular file that has
// another name (statcache.go: a version sharing it by a hard link sees
// its ctime change).
type remover struct {
	unlinked map[[2]uint64]bool
	bufs     [][]byte // getdents buffers, one per depth
}

func (r *remover) buf(depth int) []byte {
	for len(r.bufs) <= depth {
		r.bufs = append(r.bufs, make([]byte, 8<<10))
	}
	return r.bufs[depth]
}

// removeAllAt removes name in dir and, for a directory, everything below
// it, never following a symbolic link. Missing is not an error.
func removeAllAt(dir int, name string) error { return (&remover{}).removeAll(dir, name, 0) }

func (r *remover) removeAll(dir int, name string, depth int) error {
	isDir := false
	if r.unlinked != nil {
		var st unix.Stat_t
		if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if st.Nlink > 1 {
					r.unlinked[[2]uint64{st.Dev, st.Ino}] = true
				}
			case unix.S_IFDIR:
				isDir = true
			}
		}
	}
	if !isDir {
		err := unix.Unlinkat(dir, name, 0)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("removing %s: %w", name, err)
		}
	}
	fd, err := openToRemove(dir, name)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("removing %s: %w", name, err)
	}
	err = direntsOf(fd, r.buf(depth), func(n string, _ uint8) error { return r.removeAll(fd, n, depth+1) })
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	if err := unix.Unlinkat(dir, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

// openToRemove opens the directory dir/name (not following it) and makes
// it writable for its owner, entering one of mode 0 or so.
func openToRemove(dir int, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dir, name, flags, 0)
	if errors.Is(err, unix.EACCES) {
		var st unix.Stat_t
		if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			unix.Fchmodat(dir, name, 0o700, 0)
			fd, err = unix.Openat(dir, name, flags, 0)
		}
	}
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&0o700 != 0o700 {
		unix.Fchmod(fd, 0o700)
	}
	return fd, nil
}

// removeAllNoting is removeAllAt noting in unlinked (when not nil) the
// inodes of the regular files it unlinks a name of that have another
// (see remover).
func removeAllNoting(dir int, name string, unlinked map[[2]uint64]bool) error {
	return (&remover{unlinked: unlinked}).removeAll(dir, name, 0)
}
