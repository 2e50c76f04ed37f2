package sender

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
)

// Incremental scans: --watch knows from its events which directories
// changed, so after a change it reads only those again and takes every
// other entry from the last scan.
//
// A dirty directory's listing is read again and each of its children is
// examined as a full scan would (a file through the stat cache). A child
// directory the last scan had, with the same device and inode, keeps the
// entries below it from that scan (those in its own dirty directories are
// read again too); any other child directory (new, or another directory
// renamed to that name) is walked in full. Entries of the last scan below
// a child that is gone, or no longer the same directory, are dropped.
//
// Anything the events cannot describe makes the caller scan in full
// (errNeedFull): a dirty directory that is gone or is not the directory
// the last scan saw, a removed or renamed directory, an inotify overflow.
// The periodic rescan and SIGHUP always scan in full, and a full scan
// checks that the store still holds every blob it names; an incremental
// one trusts that for the files the stat cache vouches for, since the last
// scan's manifest is the latest version's and its blobs are kept.

// errNeedFull: the incremental scan cannot stand for a full one.
var errNeedFull = errors.New("a full scan is needed")

// scanDirty scans the directories dirty (paths relative to root, "" for
// root itself) again and takes everything else from old, the stat cache
// of the last scan of root. See scanTree for st and skipped. The function
// it returns tells whether a path of the last scan was taken from it as
// it was (an entry that scan skipped and this one did not look at is
// still skipped).
func scanDirty(ctx context.Context, root string, st *store.Batch, old *statCache, dirty []string, skipped func(path, why string)) (*scanner, *manifest.Manifest, func(path string) bool, error) {
	if old == nil || len(old.m.Entries) == 0 {
		return nil, nil, nil, errNeedFull
	}
	s := &scanner{ctx: ctx, st: st, old: old, skipped: skipped, hashFirst: true, trustStore: true,
		buf: make([]byte, 256<<10), start: scanClock()}
	es := old.m.Entries
	// oldDir returns the index of directory path in the last scan.
	oldDir := func(path string) (int, bool) {
		i := sort.Search(len(es), func(i int) bool { return es[i].Path >= path })
		if i < len(es) && es[i].Path == path && es[i].Type == manifest.TypeDir {
			return i, true
		}
		return 0, false
	}
	dirty = append([]string(nil), dirty...)
	sort.Strings(dirty) // a directory before the directories below it
	rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	defer unix.Close(rfd)

	reread := map[string]bool{}   // directories whose children were read again
	replaced := map[string]bool{} // last scan's directories not kept (their old subtrees are dropped)
	walked := map[string]bool{}   // directories walked in full by this scan
	added := map[string]bool{}    // directories whose own entry this scan added
	under := func(path string, set map[string]bool) bool {
		for k := strings.LastIndexByte(path, '/'); k > 0; k = strings.LastIndexByte(path[:k], '/') {
			if set[path[:k]] {
				return true
			}
		}
		return false
	}
	// The last scan's directories by parent, for those that vanished.
	var oldKids map[string][]string
	reading := "" // the dirty directory being read
	s.descend = func(path string, st *unix.Stat_t) bool {
		if parentOf(path) != reading {
			return true // below a directory walked in full
		}
		added[path] = true
		if i, ok := oldDir(path); ok {
			if old.ext[i].ino != 0 && old.ext[i].dev == uint64(st.Dev) && old.ext[i].ino == st.Ino {
				return false // the same directory: its entries are kept
			}
			replaced[path] = true
		}
		walked[path] = true
		return true
	}
	for _, d := range dirty {
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		if reread[d] || walked[d] || replaced[d] || under(d, walked) || under(d, replaced) {
			continue // read already, or gone with a directory above it
		}
		i, ok := oldDir(d)
		if !ok || old.ext[i].ino == 0 {
			return nil, nil, nil, errNeedFull
		}
		fd, err := openDirBeneath(rfd, d)
		if err != nil {
			return nil, nil, nil, errNeedFull
		}
		var dst unix.Stat_t
		if err := unix.Fstat(fd, &dst); err != nil || uint64(dst.Dev) != old.ext[i].dev || dst.Ino != old.ext[i].ino {
			unix.Close(fd)
			return nil, nil, nil, errNeedFull
		}
		if !added[d] {
			s.add(manifest.Entry{Path: d, Type: manifest.TypeDir, Mode: dst.Mode & 0o7777, MtimeNs: dst.Mtim.Nano()}, dirExtra(&dst))
			added[d] = true
		}
		reread[d], reading = true, d
		if err := s.walk(fd, d); err != nil { // closes fd; descend decides for each child directory
			return nil, nil, nil, fmt.Errorf("scanning %s: %w", root, err)
		}
		// Directories of the last scan that are no longer children.
		if oldKids == nil {
			oldKids = map[string][]string{}
			for j := 1; j < len(es); j++ {
				if es[j].Type == manifest.TypeDir {
					p := parentOf(es[j].Path)
					oldKids[p] = append(oldKids[p], es[j].Path)
				}
			}
		}
		for _, c := range oldKids[d] {
			if !added[c] {
				replaced[c] = true
			}
		}
	}
	// What the last scan found below a directory that was not read again
	// stays, but for what was replaced.
	keep := func(path string) bool {
		if path == "" {
			return !added[""]
		}
		return !reread[parentOf(path)] && !replaced[path] && !walked[path] && !under(path, replaced) && !under(path, walked)
	}
	for i := range es {
		if keep(es[i].Path) && !(es[i].Type == manifest.TypeDir && added[es[i].Path]) {
			s.add(es[i], old.ext[i])
		}
	}
	m, err := s.manifest()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("scanning %s: %w", root, err)
	}
	s.dirs = s.dirs[:0]
	for i := range m.Entries {
		if m.Entries[i].Type == manifest.TypeDir {
			s.dirs = append(s.dirs, m.Entries[i].Path)
		}
	}
	return s, m, keep, nil
}

// openDirBeneath opens the directory rel below the directory dirfd, one
// component at a time, following no symbolic link.
func openDirBeneath(dirfd int, rel string) (int, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil || rel == "" {
		return fd, err
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			unix.Close(fd)
			return -1, &os.PathError{Op: "open", Path: rel, Err: unix.EINVAL}
		}
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// parentOf returns the path of the directory holding path ("" the root).
func parentOf(path string) string {
	if k := strings.LastIndexByte(path, '/'); k >= 0 {
		return path[:k]
	}
	return ""
}
