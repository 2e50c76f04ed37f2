package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// source is a local tree whose files may be reused: the current version,
// or a kept copy of the target version.
type source struct {
	root   *os.File
	man    *manifest.Manifest
	dirs   *dirCache
	hashed *sync.Once     // makes byHash at the first withHash
	byHash *[]int32       // indexes of its files, sorted by hash
	state  []atomic.Int32 // by entry: 1 verified, -1 drifted (shared by placeFiles' workers)
	stats  []statRec      // its stat cache (nil if none)
	drift  bool           // report mismatches as drift
}

func newSource(root *os.File, m *manifest.Manifest, drift bool, stats []statRec) *source {
	return &source{root: root, man: m, dirs: &dirCache{root: root}, hashed: &sync.Once{}, byHash: new([]int32),
		state: make([]atomic.Int32, len(m.Entries)), stats: stats, drift: drift}
}

// withHash returns the indexes of the source's files with content h.
// The index by hash is made at the first call (shared by the copies
// placeFiles' workers make of the source).
func (src *source) withHash(h *[32]byte) []int32 {
	es := src.man.Entries
	src.hashed.Do(func() {
		var by []int32
		for i := range es {
			if es[i].Type == manifest.TypeFile {
				by = append(by, int32(i))
			}
		}
		slices.SortFunc(by, func(a, b int32) int { return bytes.Compare(es[a].Hash[:], es[b].Hash[:]) })
		*src.byHash = by
	})
	by := *src.byHash
	lo, _ := slices.BinarySearchFunc(by, h, func(i int32, h *[32]byte) int { return bytes.Compare(es[i].Hash[:], h[:]) })
	hi := lo
	for hi < len(by) && es[by[hi]].Hash == *h {
		hi++
	}
	return by[lo:hi]
}

// placedRec is a file this sync linked into the staged tree from a
// verified source, or fetched (see fetch): the inode and its ctime just
// after the link.
type placedRec struct {
	dev, ino, size uint64
	ctime          int64
	// assumed: left in place in the recycled spare by applyDiff, whose
	// manifest had it as it is in the version (verify trusts it only
	// when a stat cache record vouches for it).
	assumed  bool
	spareIdx int32 // with assumed: its index in the recycled version's manifest
}

// dirCache keeps the last directory opened beneath a root.
type dirCache struct {
	root *os.File
	path string
	d    *os.File
}

func (c *dirCache) get(rel string) (*os.File, error) {
	if c.d != nil && c.path == rel {
		return c.d, nil
	}
	c.close()
	if rel == "" {
		return c.root, nil
	}
	d, err := openDir(c.root, rel)
	if err != nil {
		return nil, err
	}
	c.d, c.path = d, rel
	return d, nil
}

func (c *dirCache) close() {
	if c.d != nil {
		c.d.Close()
		c.d = nil
	}
}

// stage builds version man in stage/T, reusing what it can, fetching the
// rest, setting modes and mtimes, syncing, checking the result against the
// version, and moving it to v/name.
//
// It returns the stats of the version's files as verify saw them (for the
// stat cache, written by build once the old versions are pruned), those
// not older than a fence taken before verify left out.
func (s *syncer) stage(ctx context.Context, man *manifest.Manifest, id manifest.ID, cur current, curMan *manifest.Manifest, name string) (recs []statRec, err error) {
	cfg, l := s.cfg, s.l
	stageDir, err := mkdirPlain(l.t, "stage", 0o700)
	if err != nil {
		return nil, err
	}
	defer stageDir.Close()
	// Anything in stage/ but the tree's directory is left over (a tree of
	// another name cannot be there; be strict anyway).
	if names, err := readNames(stageDir); err == nil {
		for _, n := range names {
			if n != cfg.Tree {
				removeAllAt(int(stageDir.Fd()), n)
			}
		}
	}
	// No staging tree left by an interrupted run: start from the spare.
	s.rec = nil
	if _, err := lstatAt(int(stageDir.Fd()), cfg.Tree); errors.Is(err, unix.ENOENT) {
		if s.rec = l.takeSpare(stageDir, cfg.Tree, cfg.Limits); s.rec != nil {
			s.res.Recycled = s.rec.name
		}
	}
	root, err := mkdirAt(stageDir, cfg.Tree)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	// The local trees files may be reused from.
	var sources []*source
	if cur.kind == curManaged && curMan != nil {
		if croot, err := openDir(l.v, cur.name); err == nil {
			defer croot.Close()
			stats := s.curStats // read with curMan by once
			if s.curStatsOf != cur.name {
				stats = l.loadStats(cur.name, curMan.ID(), len(curMan.Entries))
			}
			sources = append(sources, newSource(croot, curMan, true, stats))
		}
	}
	if cur.kind != curManaged || cur.name != name {
		if troot, err := openDir(l.v, name); err == nil {
			defer troot.Close()
			sources = append(sources, newSource(troot, man, true, l.loadStats(name, id, len(man.Entries))))
		}
	}

	// A staging tree fresh from the spare is first changed by the
	// difference of the manifests alone (applyDiff); if what is on disk
	// then is not the version, it is reconciled entry by entry.
	fast := s.rec != nil
	counted := *s.res
	var placed []placedRec
	for {
		placed = make([]placedRec, len(man.Entries))
		var fetch []*manifest.Entry
		var partials map[int][]string // nil: not known (fetch then lets the receiver look)
		if fast {
			if fetch, err = s.applyDiff(root, man, sources, placed); err != nil {
				s.emit(Event{Kind: EventNote, Message: fmt.Sprintf("recycling %s: %v; reconciling it entry by entry", s.rec.name, err)})
				fast = false
				s.recount(&counted)
				continue
			}
		} else {
			// 1. Directories, symlinks; note staged files left by an earlier run.
			var leftover map[int]bool
			leftover, partials, err = s.reconcile(root, man)
			if err != nil {
				return nil, fmt.Errorf("staging %s: %w", id.Short(), err)
			}
			// 2. Files: staged already, reused, or to fetch.
			if fetch, err = s.placeFiles(root, man, sources, leftover, partials, placed); err != nil {
				return nil, err
			}
		}

		// 3. Fetch what is left, into stage/T/... (VGET names are T/path).
		if len(fetch) > 0 {
			if err := s.fetch(ctx, stageDir.Name(), id, fetch, man, placed, partials); err != nil {
				return nil, err
			}
		}

		// 4. Modes and mtimes, children before their parents; then sync.
		if err := finish(stageDir, s.cfg.Tree, root, man, placed); err != nil {
			return nil, fmt.Errorf("setting modes and times in %s: %w", root.Name(), err)
		}
		if err := unix.Syncfs(int(root.Fd())); err != nil {
			return nil, fmt.Errorf("syncing %s: %w", root.Name(), err)
		}

		// 5. Check what is on disk against the version.
		fence := l.fsNow()
		recs, err = s.verify(root, man, id, placed, sources)
		if fast && errors.Is(err, ErrMismatch) {
			s.emit(Event{Kind: EventNote, Message: fmt.Sprintf("recycling %s: %v; reconciling it entry by entry", s.rec.name, err)})
			fast = false
			s.recount(&counted)
			continue
		}
		if err != nil {
			return nil, err
		}
		for i := range recs {
			if recs[i].ctime >= fence {
				recs[i] = statRec{} // racy: hashed again next time
			}
		}
		break
	}

	// 6. Move it among the versions (exchanged with a copy of the same
	// version already there, which may have drifted).
	sfd, vfd := int(stageDir.Fd()), int(l.v.Fd())
	if _, err := lstatAt(vfd, name); err == nil {
		if err := unix.Renameat2(sfd, cfg.Tree, vfd, name, unix.RENAME_EXCHANGE); err != nil {
			return nil, fmt.Errorf("replacing %s with the staged copy: %w", name, err)
		}
		if err := errors.Join(fsyncDir(l.v), fsyncDir(stageDir)); err != nil {
			return nil, err
		}
		// Through trash/: its files' inodes may be the version's too (hard
		// links), and prune accounts for the unlinks it makes there.
		if err := l.toTrash(stageDir, cfg.Tree); err != nil {
			return nil, err
		}
	} else {
		if err := unix.Renameat(sfd, cfg.Tree, vfd, name); err != nil {
			return nil, fmt.Errorf("moving the staged version to %s: %w", name, err)
		}
	}
	if err := errors.Join(fsyncDir(l.v), fsyncDir(stageDir)); err != nil {
		return nil, err
	}
	return recs, nil
}

// placeFiles puts each file of man in the staging tree root: a file an
// interrupted run staged (leftover) if it still has the version's
// content, else a local copy from the sources (reuse). It returns the
// files left to fetch, in manifest order. The files are shared out among
// fsWorkers goroutines, in runs of consecutive entries (mostly of one
// directory); each has its own directory descriptors.
func (s *syncer) placeFiles(root *os.File, man *manifest.Manifest, sources []*source, leftover map[int]bool, partials map[int][]string, placed []placedRec) ([]*manifest.Entry, error) {
	var stop atomic.Bool
	var mu sync.Mutex // guards what follows
	var firstErr error
	var fetch []int
	var files, staged, recycled int
	var bytes int64
	forRuns(len(man.Entries), placeRun, func() (func(lo, hi int), func()) {
		dst := &dirCache{root: root}
		srcs := make([]*source, len(sources))
		for k, src := range sources {
			c := *src
			c.dirs = &dirCache{root: src.root}
			srcs[k] = &c
		}
		var myFetch []int
		var myFiles, myStaged, myRecycled int
		var myBytes int64
		do := func(lo, hi int) {
			if stop.Load() {
				return
			}
			for i := lo; i < hi; i++ {
				e := &man.Entries[i]
				if e.Type != manifest.TypeFile {
					continue
				}
				how, err := s.placeFile(root, dst, srcs, e, leftover[i], partials[i], &placed[i])
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					stop.Store(true)
					return
				}
				switch how {
				case placedStaged:
					myStaged++
					fallthrough
				case placedRecycled:
					if how == placedRecycled {
						myRecycled++
					}
					fallthrough
				case placedReused:
					myFiles++
					myBytes += int64(e.Size)
					s.addDone(1, int64(e.Size))
				default:
					myFetch = append(myFetch, i)
				}
			}
		}
		done := func() {
			for _, c := range srcs {
				c.dirs.close()
			}
			dst.close()
			mu.Lock()
			fetch = append(fetch, myFetch...)
			files, staged, recycled, bytes = files+myFiles, staged+myStaged, recycled+myRecycled, bytes+myBytes
			mu.Unlock()
		}
		return do, done
	})
	res := s.res
	res.FilesReused += files
	res.FilesStaged += staged
	res.FilesRecycled += recycled
	res.BytesReused += bytes
	if firstErr != nil {
		return nil, firstErr
	}
	slices.Sort(fetch)
	out := make([]*manifest.Entry, len(fetch))
	for k, i := range fetch {
		out[k] = &man.Entries[i]
	}
	return out, nil
}

// How placeFile placed a file.
const (
	placedNot      = iota // to fetch
	placedStaged          // already staged by an interrupted run, checked
	placedRecycled        // already in the staging tree recycled from the spare
	placedReused          // copied or linked from a source
)

// placeFile places file e (see placeFiles).
func (s *syncer) placeFile(root *os.File, dst *dirCache, sources []*source, e *manifest.Entry, leftover bool, partials []string, pl *placedRec) (int, error) {
	if leftover {
		// A stat cache record may tell its content without reading it;
		// else it is hashed.
		v, err := s.vouchLeftover(dst, sources, e, pl)
		if err != nil {
			return placedNot, err
		}
		keep := v == leftSame
		if v == leftUnknown {
			sum, st, err := hashAt(root, e.Path)
			// A staged file with other names (a hard link an interrupted
			// run made from a kept version) is kept only if finish will not
			// chmod or touch it: that would change the kept version's file.
			shared := st.Nlink > 1 && (uint32(st.Mode)&0o7777 != localMode(e.Mode) || statMtime(&st) != e.MtimeNs)
			keep = err == nil && sum == e.Hash && uint64(st.Size) == e.Size && !shared
		}
		if keep {
			if err := removePartials(dst, e.Path, partials); err != nil {
				return placedNot, err
			}
			if v == leftSame && s.rec != nil {
				return placedRecycled, nil
			}
			return placedStaged, nil
		}
		parent, base := split(e.Path)
		d, err := dst.get(parent)
		if err != nil {
			return placedNot, err
		}
		if err := removeAllAt(int(d.Fd()), base); err != nil {
			return placedNot, err
		}
	}
	ok, err := s.reuse(sources, dst, e, pl)
	if err != nil {
		return placedNot, err
	}
	if ok || leftover {
		// Not fetched: an interrupted fetch's partial file of it would
		// stay in the version.
		if err := removePartials(dst, e.Path, partials); err != nil {
			return placedNot, err
		}
	}
	if ok {
		return placedReused, nil
	}
	return placedNot, nil
}

// recount puts the counters of files reused back to what they were
// before the first staging pass (c), for a second pass. Those of files
// fetched stay: what crossed the network did (the second pass finds
// those files staged).
func (s *syncer) recount(c *Result) {
	r := s.res
	r.FilesReused, r.BytesReused, r.FilesRecycled, r.FilesStaged = c.FilesReused, c.BytesReused, c.FilesRecycled, c.FilesStaged
	s.mu.Lock()
	s.filesDone, s.bytesDone = 0, 0
	s.mu.Unlock()
}

// What a stat cache record tells of a file already in the staging tree.
const (
	leftUnknown = iota // nothing vouches for it, or its content is e's but not its mode or mtime: hash it
	leftSame           // e's content, size, mode and mtime: noted in pl (finish leaves it, verify trusts it while it stays that inode with that ctime)
	leftOther          // other content: remove it
)

// vouchLeftover looks at file e already in the staging tree: when a stat
// cache record vouches for it (vouched), its content is known without
// reading it.
func (s *syncer) vouchLeftover(dst *dirCache, sources []*source, e *manifest.Entry, pl *placedRec) (int, error) {
	parent, base := split(e.Path)
	d, err := dst.get(parent)
	if err != nil {
		return leftUnknown, err
	}
	st, err := lstatAt(int(d.Fd()), base)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return leftUnknown, nil
	}
	h, ok := vouched(s.rec, sources, e.Path, &st)
	switch {
	case !ok:
		return leftUnknown, nil
	case h != e.Hash:
		return leftOther, nil
	case uint64(st.Size) != e.Size || uint32(st.Mode)&0o7777 != localMode(e.Mode) || statMtime(&st) != e.MtimeNs:
		return leftUnknown, nil
	}
	*pl = placedRec{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), ctime: statCtime(&st)}
	return leftSame, nil
}

// reconcile makes the staging tree's directories and symlinks those of
// man and removes everything else, except the partial files of files still
// to fetch. It returns the indexes of files already present (to be checked
// by hash).
func (s *syncer) reconcile(root *os.File, man *manifest.Manifest) (map[int]bool, map[int][]string, error) {
	children := map[string][]int{}
	for i := 1; i < len(man.Entries); i++ {
		parent, _ := split(man.Entries[i].Path)
		children[parent] = append(children[parent], i)
	}
	leftover := map[int]bool{}
	partials := map[int][]string{}
	for i := range man.Entries {
		e := &man.Entries[i]
		if e.Type != manifest.TypeDir {
			continue
		}
		d := root
		if e.Path != "" {
			var err error
			if d, err = openDir(root, e.Path); err != nil {
				return nil, nil, err
			}
		}
		err := s.reconcileDir(d, man, children[e.Path], leftover, partials)
		if d != root {
			d.Close()
		}
		if err != nil {
			return nil, nil, err
		}
	}
	return leftover, partials, nil
}

// removePartials removes the partial files of a file that is not fetched.
func removePartials(dst *dirCache, path string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	parent, _ := split(path)
	d, err := dst.get(parent)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeAllAt(int(d.Fd()), n); err != nil {
			return err
		}
	}
	return nil
}

func (s *syncer) reconcileDir(d *os.File, man *manifest.Manifest, kids []int, leftover map[int]bool, partials map[int][]string) error {
	fd := int(d.Fd())
	want := make(map[string]int, len(kids))
	for _, i := range kids {
		_, base := split(man.Entries[i].Path)
		want[base] = i
	}
	names, types, err := readTypes(d)
	if err != nil {
		return fmt.Errorf("reading %s: %w", d.Name(), err)
	}
	var hidden map[string]int // the partial and state file names of the directory's files
	for _, n := range names {
		if _, ok := want[n]; ok {
			continue
		}
		if reservedName(n) {
			if hidden == nil {
				hidden = map[string]int{}
				for _, i := range kids {
					if man.Entries[i].Type == manifest.TypeFile {
						_, base := split(man.Entries[i].Path)
						part, state := receiver.PartialPaths(base)
						hidden[part], hidden[state] = i, i
					}
				}
			}
			if i, ok := hidden[n]; ok {
				partials[i] = append(partials[i], n)
				continue // an interrupted fetch's partial file: resumed if the file is fetched
			}
		}
		if err := removeAllAt(fd, n); err != nil {
			return err
		}
	}
	buf := make([]byte, manifest.MaxTargetLen+1)
	for _, i := range kids {
		e := &man.Entries[i]
		_, base := split(e.Path)
		switch e.Type {
		case manifest.TypeDir:
			sub, err := mkdirAt(d, base)
			if err != nil {
				return err
			}
			sub.Close()
		case manifest.TypeSymlink:
			n, err := unix.Readlinkat(fd, base, buf)
			if err == nil && string(buf[:n]) == e.Target {
				continue
			}
			if err := removeAllAt(fd, base); err != nil {
				return err
			}
			if err := unix.Symlinkat(e.Target, fd, base); err != nil {
				return &os.PathError{Op: "symlink", Path: join(d.Name(), base), Err: err}
			}
		case manifest.TypeFile:
			typ, ok := types[base]
			if !ok {
				continue // not there
			}
			if typ == unix.DT_UNKNOWN {
				st, err := lstatAt(fd, base)
				if err != nil {
					continue
				}
				if st.Mode&unix.S_IFMT == unix.S_IFREG {
					typ = unix.DT_REG
				}
			}
			if typ == unix.DT_REG {
				leftover[i] = true
				continue
			}
			if err := removeAllAt(fd, base); err != nil {
				return err
			}
		}
	}
	return nil
}

// reservedName tells the names of the receiver's partial and state files
// (".zrecv-HASH.part", ".zrecv-HASH.state", receiver.PartialPaths).
func reservedName(n string) bool {
	return strings.HasPrefix(n, ".zrecv-") && (strings.HasSuffix(n, ".part") || strings.HasSuffix(n, ".state"))
}

// reuse places a local copy of e's content at its staged path: from the
// first source holding a file with that hash that still has it. It
// hard-links when mode and mtime match e's, else copies.
func (s *syncer) reuse(sources []*source, dst *dirCache, e *manifest.Entry, pl *placedRec) (bool, error) {
	for _, src := range sources {
		// The file at the same path first: usually it is the one (files
		// of equal content, such as empty ones, would otherwise all be
		// links to one inode, each link changing its ctime).
		same := indexOf(src.man, e.Path)
		if same >= 0 && (src.man.Entries[same].Type != manifest.TypeFile || src.man.Entries[same].Hash != e.Hash || src.state[same].Load() < 0) {
			same = -1
		}
		if same >= 0 {
			ok, err := s.placeFrom(src, same, dst, e, pl)
			if ok || err != nil {
				return ok, err
			}
		}
		for _, i := range src.withHash(&e.Hash) {
			if src.state[i].Load() < 0 || int(i) == same {
				continue
			}
			ok, err := s.placeFrom(src, int(i), dst, e, pl)
			if err != nil {
				return false, err
			}
			if ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// drifted marks a source's file as no longer matching its version.
func (s *syncer) drifted(src *source, i int) {
	src.state[i].Store(-1)
	if src.drift {
		s.drift(src.man.Entries[i].Path)
	}
}

// placeFrom places source file i as e. The source file is known to hold
// e's content when its stat cache record still matches its inode (see
// statcache.go), else it is hashed now. A hard link is then checked to be
// that very inode (the name may have been replaced in between), and its
// inode and ctime are noted in pl for verify. A copy is hashed as it is
// written.
func (s *syncer) placeFrom(src *source, i int, dst *dirCache, e *manifest.Entry, pl *placedRec) (bool, error) {
	p := src.man.Entries[i].Path
	sparent, sbase := split(p)
	sd, err := src.dirs.get(sparent)
	if err != nil {
		s.drifted(src, i)
		return false, nil
	}
	sfd := int(sd.Fd())
	st, err := lstatAt(sfd, sbase)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Size) != e.Size {
		s.drifted(src, i)
		return false, nil
	}
	// Trusted by its stat cache record (checked again for each use: a
	// file hashed earlier in this sync is not trusted this way).
	trusted := src.stats != nil && src.stats[i].matches(&st)
	if trusted {
		src.state[i].Store(1)
	}
	parent, base := split(e.Path)
	d, err := dst.get(parent)
	if err != nil {
		return false, err
	}
	sameMeta := uint32(st.Mode)&0o7777 == localMode(e.Mode) && statMtime(&st) == e.MtimeNs
	if trusted && sameMeta {
		if err := unix.Linkat(sfd, sbase, int(d.Fd()), base, 0); err == nil {
			got, err := lstatAt(int(d.Fd()), base)
			if err == nil && got.Dev == st.Dev && got.Ino == st.Ino && got.Mode&unix.S_IFMT == unix.S_IFREG && uint64(got.Size) == e.Size {
				*pl = placedRec{dev: got.Dev, ino: got.Ino, size: uint64(got.Size), ctime: statCtime(&got)}
				return true, nil
			}
			// Replaced between the check and the link: not the file checked.
			if err := removeAllAt(int(d.Fd()), base); err != nil {
				return false, err
			}
			s.drifted(src, i)
			return false, nil
		}
		// Another file system: copy instead.
	}
	fd, err := unix.Openat(sfd, sbase, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		s.drifted(src, i)
		return false, nil
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil || fst.Mode&unix.S_IFMT != unix.S_IFREG || uint64(fst.Size) != e.Size {
		s.drifted(src, i)
		return false, nil
	}
	if src.state[i].Load() == 0 {
		sum, err := hashReader(io.NewSectionReader(f, 0, fst.Size))
		if err != nil || sum != e.Hash {
			s.drifted(src, i)
			return false, nil
		}
		src.state[i].Store(1)
	}
	if !trusted && uint32(fst.Mode)&0o7777 == localMode(e.Mode) && statMtime(&fst) == e.MtimeNs {
		err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), int(d.Fd()), base, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return true, nil // not noted in pl: verify hashes it again
		}
		// No /proc, or another file system: copy instead.
	}
	out, err := unix.Openat(int(d.Fd()), base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return false, &os.PathError{Op: "create", Path: join(d.Name(), base), Err: err}
	}
	of := os.NewFile(uintptr(out), base)
	h := blake3.New()
	n, err := io.Copy(io.MultiWriter(of, h), io.NewSectionReader(f, 0, fst.Size))
	if cerr := of.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(int(d.Fd()), base, 0)
		return false, fmt.Errorf("copying %s: %w", p, err)
	}
	if uint64(n) != e.Size || !bytes.Equal(h.Sum(nil), e.Hash[:]) {
		unix.Unlinkat(int(d.Fd()), base, 0)
		s.drifted(src, i)
		return false, nil
	}
	return true, nil
}

// fetch VGETs the entries into stageDir/T/... . A file the receiver
// wrote as an unnamed file and linked in (receiver.Result.Inode), with
// the entry's size, mode and mtime, is noted in placed (indexed like
// man's entries), as a hard-linked one is: finish leaves it alone and
// verify does not read it again while it is still that inode with that
// ctime. Its content was verified as written: every chunk by its BLAKE3,
// the whole file against the entry's hash. A file with no partial file
// found by reconcile (partials; nil when reconcile did not run) is
// requested Fresh: the receiver does not look for one.
func (s *syncer) fetch(ctx context.Context, stageDir string, id manifest.ID, entries []*manifest.Entry, man *manifest.Manifest, placed []placedRec, partials map[int][]string) error {
	defer func() {
		if testAfterFetch != nil {
			testAfterFetch(filepath.Join(stageDir, s.cfg.Tree), man, placed)
		}
	}()
	tag := tagOf(id)
	reqs := make([]receiver.Request, len(entries))
	index := make([]int, len(entries)) // in man
	for i, e := range entries {
		h := protocol.Hash(e.Hash)
		index[i] = indexOf(man, e.Path)
		reqs[i] = receiver.Request{Kind: receiver.KindVGet, Name: s.cfg.Tree + "/" + e.Path, Version: tag,
			Expect: &h, Size: e.Size, CheckSize: true, Fresh: partials != nil && len(partials[index[i]]) == 0,
			Batch: true, Index: uint32(index[i]), Private: true}
	}
	s.mu.Lock()
	s.inFlight, s.inFlightN = map[string]int64{}, 0
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight, s.inFlightN = nil, 0
		s.mu.Unlock()
	}()
	// The data of a large fetch goes to disk while the rest arrives, not
	// all at the syncfs before the check.
	var total uint64
	for _, e := range entries {
		total += e.Size
	}
	if total >= writeBehindMin {
		stop := writeBehind(stageDir)
		defer stop()
	}
	// In batches: the receiver keeps a task per request, and a tree of
	// 100,000 files must not hold 100,000 of them at once.
	rc := s.receiverConfig(stageDir)
	rc.RecordInodes = true
	for done := 0; len(reqs) > 0; {
		n := min(len(reqs), fetchBatch)
		results, err := receiver.FetchRequests(ctx, rc, reqs[:n])
		for k, r := range results {
			if r.Err == nil {
				s.res.FilesFetched++
				notePlaced(entries[done+k], &r.Inode, &placed[index[done+k]])
			}
			s.res.BytesFetched += r.Wire
		}
		done += n
		if err != nil {
			return fmt.Errorf("fetching %d files of %s %s: %w", len(entries), s.cfg.Tree, id.Short(), err)
		}
		reqs = reqs[n:]
	}
	return nil
}

// writeBehindPause is the pause between two syncs of writeBehind, and
// writeBehindMin the least a fetch brings for writeBehind to run (a
// smaller one is over before the first sync would start).
const (
	writeBehindPause = 50 * time.Millisecond
	writeBehindMin   = 8 << 20
)

// writeBehind syncs the file system of dir over and over, with a short
// pause between, until the returned stop is called (which waits for the
// sync in progress). During a fetch that makes the disk write what was
// received while the rest arrives: the syncfs that makes the staged tree
// durable before its check then waits only for the last part (on this
// machine's tree benchmark, 0.03-0.06 s instead of 0.2-0.4 s).
//
// An error these syncs meet is not lost: Linux reports a write-back
// error to each open descriptor of the file system once, and the syncfs
// before the check goes through the staging tree's own descriptor,
// opened before the fetch began, so it reports it and the version is
// not switched to.
func writeBehind(dir string) (stop func()) {
	d, err := os.Open(dir)
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer d.Close()
		t := time.NewTimer(writeBehindPause)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			unix.Syncfs(int(d.Fd()))
			t.Reset(writeBehindPause)
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// notePlaced notes a fetched file in placed when the receiver recorded
// its inode and that inode has e's size, mode and mtime (anything else is
// set by finish, which changes the ctime, and read again by verify).
func notePlaced(e *manifest.Entry, in *receiver.Inode, pl *placedRec) {
	if in.Ino == 0 || in.Mode&unix.S_IFMT != unix.S_IFREG || uint64(in.Size) != e.Size ||
		in.Mode&0o7777 != localMode(e.Mode) || in.MtimeNS != e.MtimeNs {
		return
	}
	*pl = placedRec{dev: in.Dev, ino: in.Ino, size: uint64(in.Size), ctime: in.CtimeNS}
}

// testAfterFetch, when set (tests), is called once fetch is over with the
// staged tree's path and what fetch noted.
var testAfterFetch func(stagedTree string, man *manifest.Manifest, placed []placedRec)

// fetchBatch is the most files fetched in one receiver call.
const fetchBatch = 4096

// finish sets every entry's mode and mtime, in reverse path order, so each
// directory is done after everything below it; root is the tree's root
// directory, named rootName in parent.
func finish(parent *os.File, rootName string, root *os.File, man *manifest.Manifest, placed []placedRec) error {
	dirs := &dirCache{root: root}
	defer dirs.close()
	for i := len(man.Entries) - 1; i >= 0; i-- {
		e := &man.Entries[i]
		if placed[i].ino != 0 || placed[i].assumed {
			continue // linked or fetched with e's mode and mtime, or in place in the recycled spare (verify checks they still are)
		}
		var d *os.File
		var base string
		if e.Path == "" {
			d, base = parent, rootName
		} else {
			parent, b := split(e.Path)
			var err error
			if d, err = dirs.get(parent); err != nil {
				return err
			}
			base = b
		}
		fd := int(d.Fd())
		st, err := lstatAt(fd, base)
		if err != nil {
			return &os.PathError{Op: "lstat", Path: join(d.Name(), base), Err: err}
		}
		if e.Type != manifest.TypeSymlink && uint32(st.Mode)&0o7777 != localMode(e.Mode) {
			if e.Type == manifest.TypeDir && e.Path != "" && dirs.d != nil && strings.HasPrefix(dirs.path+"/", e.Path+"/") {
				dirs.close() // do not keep a descriptor below a directory about to lose its permissions
			}
			if err := unix.Fchmodat(fd, base, localMode(e.Mode), 0); err != nil {
				return &os.PathError{Op: "chmod", Path: join(d.Name(), base), Err: err}
			}
		}
		if statMtime(&st) != e.MtimeNs {
			ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(e.MtimeNs)}
			if err := unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return &os.PathError{Op: "utimensat", Path: join(d.Name(), base), Err: err}
			}
		}
	}
	return nil
}

// verify reads the staged tree back (types, modes, mtimes, sizes, targets,
// file hashes) and checks that it gives the version id. A file is not
// read again when it is still the very inode this sync hard-linked from a
// source file trusted by its stat cache, or fetched as an unnamed file
// and linked in (placed: same device, inode, size, and ctime as just
// after the link, so nothing wrote to it, changed its mode or times,
// since), or left in place in the recycled spare and vouched for by a
// stat cache record (assumed); its hash is then the version's. Every
// other file is hashed. It returns the stats of the files (indexed like
// man's entries) for the stat cache.
//
// Each entry read is compared with the version's entry of that path as it
// is found (see treeCheck): when every entry of the version was found
// equal and nothing else is on disk, the tree on disk is the version,
// entry for entry, so its manifest and id are the version's.
func (s *syncer) verify(root *os.File, man *manifest.Manifest, id manifest.ID, placed []placedRec, sources []*source) ([]statRec, error) {
	want := localized(man)
	recs := make([]statRec, len(man.Entries))
	c := &treeCheck{root: root, want: want, hash: true, firstDiff: true, maxExtra: len(man.Entries),
		trust: func(i int, st *unix.Stat_t) bool {
			pl := &placed[i]
			if pl.assumed {
				h, ok := vouchedAt(s.rec, pl.spareIdx, sources, man.Entries[i].Path, st)
				return ok && h == man.Entries[i].Hash
			}
			return pl.ino != 0 && pl.dev == st.Dev && pl.ino == st.Ino && pl.size == uint64(st.Size) && pl.ctime == statCtime(st)
		},
		record: func(i int, st *unix.Stat_t, _ bool) { recs[i] = recOf(st) },
	}
	if rec := s.rec; rec != nil && rec.stats != nil {
		// A directory of the recycled spare untouched since its
		// version's verify holds the names it had then.
		var once sync.Once
		var old childIndex
		c.dirTrust = func(i int, st *unix.Stat_t) bool {
			e := &man.Entries[i]
			j := indexOf(rec.man, e.Path)
			if j < 0 || rec.man.Entries[j].Type != manifest.TypeDir || !rec.stats[j].matches(st) {
				return false
			}
			once.Do(func() { old = newChildIndex(rec.man) })
			return sameNames(man, c.kids.of(i), rec.man, old.of(j))
		}
	}
	err := c.run()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the staged tree back: %w", ErrMismatch, err)
	}
	if c.diff != "" {
		return nil, fmt.Errorf("%w %s: %s", ErrMismatch, id.Short(), c.diff)
	}
	return recs, nil
}

// check compares a kept version with its manifest: by type, mode, mtime,
// size and target, and with hashes too if hash. Without hash, a file
// whose inode no longer matches its stat cache record (stats, when there
// is one) is hashed anyway: an in-place edit that kept size and mtime
// still changed its ctime. It returns the paths that differ (an extra
// directory is one path: what is below it is not read).
//
// Files hashed because their records were missing or stale (and found
// unchanged) get fresh records: the cache of version directory name is
// rewritten when nothing differs.
func (s *syncer) check(root *os.File, man *manifest.Manifest, hash bool, stats []statRec, name string, id manifest.ID) (drift []string, err error) {
	want := localized(man)
	c := &treeCheck{root: root, want: want, hash: hash, maxExtra: len(man.Entries)}
	var recs []statRec
	var fence int64
	var fresh atomic.Int64 // records made by this check
	if !hash && stats != nil {
		c.hash = true
		recs = make([]statRec, len(man.Entries))
		c.trust = func(i int, st *unix.Stat_t) bool { return stats[i].matches(st) }
		c.dirTrust = c.trust // a directory unchanged since it was recorded holds the same names
		// The fence is taken before anything is examined: a file hashed,
		// or a directory read, is recorded only if its ctime is older
		// (statcache.go).
		fence = s.l.fsNow()
		c.record = func(i int, st *unix.Stat_t, read bool) {
			switch {
			case stats[i].matches(st):
				recs[i] = stats[i]
			case fence != 0 && statCtime(st) < fence:
				fresh.Add(1)
				recs[i] = recOf(st)
			case read:
				fresh.Add(1) // hashed, too recent to record: the old record is stale anyway
			}
		}
	}
	err = c.run()
	if errors.Is(err, errTooMany) {
		return []string{"(entries added)"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checking %s: %w", root.Name(), err)
	}
	drift = c.diffPaths()
	if fresh.Load() > 0 && fence != 0 && len(drift) == 0 {
		// Every record was seen to match (or was made from the file
		// hashed just now, equal to the version's).
		s.saveStats(name, id, man, recs)
	}
	return drift, nil
}

// sameNames reports whether the children a (of a directory of m) and b
// (of one of n) have the same names.
func sameNames(m *manifest.Manifest, a []int32, n *manifest.Manifest, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		_, x := split(m.Entries[a[k]].Path)
		_, y := split(n.Entries[b[k]].Path)
		if x != y {
			return false
		}
	}
	return true
}

// errTooMany: more entries on disk than in the version.
var errTooMany = errors.New("more entries on disk than in the version")

// removeStaleIncoming is for tests and tools: the state directory of a tree.
func stateDir(out, tree string) string { return filepath.Join(out, ".zsnd", tree) }
