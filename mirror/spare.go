package mirror

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// The spare: recycling a pruned version.
//
// Building a version as a fresh directory tree costs a link (or a copy)
// per file and a directory per directory, and pruning the oldest one an
// unlink per file: for a tree of 10,000 files, far more than the one file
// that changed. So prune keeps the newest version it removes from v/ as
// OUT/.zsnd/T/spare/NAME (with its manifest and stat cache), and the next
// sync starts its staging area from it (one rename) instead of from an
// empty directory: reconcile and placeFiles then only touch what differs,
// and a file of the spare is kept without being read when a stat cache
// record vouches for it (recycledTrust).
//
// The spare is out of v/, so no rollback and no new reader can reach it;
// a process that resolved its path while it was a version sees it gone,
// as for any pruned version. A process holding one of its directories
// open past the prune can see it change when it is recycled (README,
// "History").

// recycled is what is known of a staging tree started from the spare.
type recycled struct {
	name  string // the version it was (v/ name)
	man   *manifest.Manifest
	stats []statRec // its stat cache (nil if none)
}

// spareName is the spare to recycle next (the newest), or "".
func (l *layout) spareName() string {
	sp := l.spares()
	if len(sp) == 0 {
		return ""
	}
	return sp[len(sp)-1]
}

// toSpare moves v/name to spare/ (in one rename), sending what spare/
// held before to trash/. A version without a manifest to go by (the
// preexisting directory) is trashed instead.
func (l *layout) toSpare(name string) error {
	if _, id12, ok := parseVersionName(name); !ok || id12 == "" {
		return l.trash(name)
	}
	if err := l.dropSpare(); err != nil {
		return err
	}
	sp, err := mkdirPlain(l.t, "spare", 0o700)
	if err != nil {
		return err
	}
	defer sp.Close()
	return unix.Renameat(int(l.v.Fd()), name, int(sp.Fd()), name)
}

// dropSpare moves whatever spare/ holds to trash/ (emptied by prune).
func (l *layout) dropSpare() error {
	if _, err := lstatAt(int(l.t.Fd()), "spare"); errors.Is(err, unix.ENOENT) {
		return nil
	}
	tr, err := mkdirPlain(l.t, "trash", 0o700)
	if err != nil {
		return err
	}
	defer tr.Close()
	if err := removeAllAt(int(tr.Fd()), "spare"); err != nil {
		return err
	}
	if err := unix.Renameat(int(l.t.Fd()), "spare", int(tr.Fd()), "spare"); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("dropping the spare: %w", err)
	}
	return nil
}

// takeSpare moves the spare to stageDir/tree (which must not exist) and
// returns what is known of it, or nil when there is no usable spare (an
// unusable one is dropped).
func (l *layout) takeSpare(stageDir *os.File, tree string, lim manifest.Limits) *recycled {
	name := l.spareName()
	if name == "" {
		l.dropSpare()
		return nil
	}
	base, _ := spareBase(name)
	_, id12, _ := parseVersionName(base)
	man, id, ok := l.manifestFor(id12, lim)
	if !ok {
		l.dropSpare()
		return nil
	}
	sp, err := openDir(l.t, "spare")
	if err != nil {
		return nil
	}
	defer sp.Close()
	if err := unix.Renameat(int(sp.Fd()), name, int(stageDir.Fd()), tree); err != nil {
		l.dropSpare()
		return nil
	}
	return &recycled{name: name, man: man, stats: l.loadStats(base, id, len(man.Entries))}
}

// vouched returns the content hash of the regular file st found at path
// in the staging area when a stat cache record vouches for it: the record
// of that path in the recycled version, or in a source (the current
// version, whose files are mostly the same inodes), still matches st, so
// the inode is unchanged since that version's file was hashed.
func vouched(rec *recycled, sources []*source, path string, st *unix.Stat_t) ([32]byte, bool) {
	return vouchedAt(rec, -1, sources, path, st)
}

// vouchedAt is vouched when the recycled version's entry of path is known
// to be its entry j (-1: look it up).
func vouchedAt(rec *recycled, j int32, sources []*source, path string, st *unix.Stat_t) ([32]byte, bool) {
	if rec != nil && j >= 0 && rec.stats != nil && int(j) < len(rec.man.Entries) {
		if e := &rec.man.Entries[j]; e.Path == path && e.Type == manifest.TypeFile && rec.stats[j].matches(st) {
			return e.Hash, true
		}
	}
	try := func(m *manifest.Manifest, stats []statRec) ([32]byte, bool) {
		if m == nil || stats == nil {
			return [32]byte{}, false
		}
		j := indexOf(m, path)
		if j < 0 || m.Entries[j].Type != manifest.TypeFile || !stats[j].matches(st) {
			return [32]byte{}, false
		}
		return m.Entries[j].Hash, true
	}
	if rec != nil {
		if h, ok := try(rec.man, rec.stats); ok {
			return h, true
		}
	}
	for _, src := range sources {
		if h, ok := try(src.man, src.stats); ok {
			return h, true
		}
	}
	return [32]byte{}, false
}

// applyDiff turns a staging tree fresh from the spare into version man by
// touching only what differs between the spare's manifest and man: it
// removes what man does not have, makes the directories and symlinks man
// adds, and for each file whose path, hash, size, mode or mtime differs,
// removes what is there and places a local copy (reuse) or leaves it to
// fetch (returned, in manifest order). What the spare's manifest says is
// assumed, not looked at: verify reads the whole tree afterwards (a file
// assumed in place is trusted there only when a stat cache record vouches
// for it, else hashed), and the caller falls back to reconcile and
// placeFiles when verify finds the spare was not what its manifest says.
func (s *syncer) applyDiff(root *os.File, man *manifest.Manifest, sources []*source, placed []placedRec) ([]*manifest.Entry, error) {
	rm := s.rec.man
	dst := &dirCache{root: root}
	defer dst.close()
	dirOf := func(m *manifest.Manifest, p string) bool {
		if p == "" {
			return true
		}
		i := indexOf(m, p)
		return i >= 0 && m.Entries[i].Type == manifest.TypeDir
	}
	inMan, inRm := manifest.Match(man, rm), manifest.Match(rm, man)
	// 1. What the spare has and man has not (or not of that type), where
	// its parent directory stays (else it went with its parent).
	for k := 1; k < len(rm.Entries); k++ {
		r := &rm.Entries[k]
		if i := inMan[k]; i >= 0 && man.Entries[i].Type == r.Type {
			continue
		}
		parent, base := split(r.Path)
		if !dirOf(man, parent) || !dirOf(rm, parent) {
			continue
		}
		d, err := s.changeDir(dst, parent)
		if err != nil {
			return nil, err
		}
		if err := removeAllAt(int(d.Fd()), base); err != nil {
			return nil, err
		}
	}
	// 2. What man adds or changes, parents first (manifest order).
	var fetch []*manifest.Entry
	var files int
	var bytes int64
	buf := make([]byte, manifest.MaxTargetLen+1)
	for i := 1; i < len(man.Entries); i++ {
		e := &man.Entries[i]
		j := inRm[i]
		var r *manifest.Entry
		if j >= 0 && rm.Entries[j].Type == e.Type {
			r = &rm.Entries[j]
		}
		parent, base := split(e.Path)
		switch e.Type {
		case manifest.TypeDir:
			if r != nil {
				continue // mode and mtime: finish
			}
			d, err := s.changeDir(dst, parent)
			if err != nil {
				return nil, err
			}
			sub, err := mkdirAt(d, base)
			if err != nil {
				return nil, err
			}
			sub.Close()
		case manifest.TypeSymlink:
			if r != nil && r.Target == e.Target {
				continue
			}
			d, err := s.changeDir(dst, parent)
			if err != nil {
				return nil, err
			}
			fd := int(d.Fd())
			if n, err := unix.Readlinkat(fd, base, buf); err == nil && string(buf[:n]) == e.Target {
				continue
			}
			if err := removeAllAt(fd, base); err != nil {
				return nil, err
			}
			if err := unix.Symlinkat(e.Target, fd, base); err != nil {
				return nil, &os.PathError{Op: "symlink", Path: join(d.Name(), base), Err: err}
			}
		case manifest.TypeFile:
			if r != nil && r.Hash == e.Hash && r.Size == e.Size && localMode(r.Mode) == localMode(e.Mode) && r.MtimeNs == e.MtimeNs {
				placed[i].assumed, placed[i].spareIdx = true, j
				files++
				bytes += int64(e.Size)
				continue
			}
			d, err := s.changeDir(dst, parent)
			if err != nil {
				return nil, err
			}
			if err := removeAllAt(int(d.Fd()), base); err != nil {
				return nil, err
			}
			ok, err := s.reuse(sources, dst, e, &placed[i])
			if err != nil {
				return nil, err
			}
			if ok {
				s.res.FilesReused++
				s.res.BytesReused += int64(e.Size)
				s.addDone(1, int64(e.Size))
			} else {
				fetch = append(fetch, e)
			}
		}
	}
	s.res.FilesReused += files
	s.res.FilesRecycled += files
	s.res.BytesReused += bytes
	s.addDone(files, bytes)
	return fetch, nil
}

// changeDir opens a directory of the staging tree to change what is in
// it, making it writable for its owner first (a recycled directory has
// its final mode; finish sets it back).
func (s *syncer) changeDir(dst *dirCache, rel string) (*os.File, error) {
	d, err := dst.get(rel)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err == nil && st.Mode&0o700 != 0o700 {
		if err := unix.Fchmod(int(d.Fd()), uint32(st.Mode&0o7777)|0o700); err != nil {
			return nil, &os.PathError{Op: "chmod", Path: d.Name(), Err: err}
		}
	}
	return d, nil
}

// spareBase is the version name of a spare's directory name: NAME, or
// NAME.K for the K-th copy of one version (warmSpares).
func spareBase(n string) (string, bool) {
	base, k, dotted := strings.Cut(n, ".")
	if dotted {
		if _, err := strconv.ParseUint(k, 10, 8); err != nil {
			return "", false
		}
	}
	if _, id12, ok := parseVersionName(base); !ok || id12 == "" {
		return "", false
	}
	return base, true
}

// spares lists spare/ (directory names, each valid for spareBase).
func (l *layout) spares() []string {
	d, err := openDir(l.t, "spare")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, err := readNames(d)
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range names {
		if _, ok := spareBase(n); ok {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// warmSpares makes sure the next syncs find a spare before prune starts
// making them: while v/ holds fewer than keep versions, none is pruned, so
// a node that just made its first sync would build its next versions
// file by file. It adds hard-linked copies of version name (its files are
// the same inodes, so its stat cache serves them too) to spare/, as many
// as the syncs before the first prune need, and rewrites the version's
// stat cache: each link set its files' ctime. A record is carried over only
// for a file that still matched it just before the link and is the same
// inode (device, size, mtime) after, with a ctime older than a fence taken
// after the links (statcache.go).
//
// Follow mode calls it (Config.WarmSpares); a one-off sync does not pay
// for copies it may never use.
func (s *syncer) warmSpares(name string, id manifest.ID, man *manifest.Manifest) error {
	l := s.l
	vs, err := l.versions()
	if err != nil {
		return err
	}
	have := l.spares()
	need := s.cfg.Keep - len(vs) + 1 - len(have)
	if need <= 0 {
		return nil
	}
	recs := l.loadStats(name, id, len(man.Entries))
	if recs == nil {
		return nil // nothing would vouch for the copies' files
	}
	cur, err := openDir(l.v, name)
	if err != nil {
		return err
	}
	defer cur.Close()
	sp, err := mkdirPlain(l.t, "spare", 0o700)
	if err != nil {
		return err
	}
	defer sp.Close()
	pre := make([]statRec, len(man.Entries)) // the record each file matched before its links
	for k := 0; k < need; k++ {
		n := name // the first name not taken: NAME, NAME.1, NAME.2...
		for j := 1; slices.Contains(have, n); j++ {
			n = fmt.Sprintf("%s.%d", name, j)
		}
		have = append(have, n)
		if err := s.cloneVersion(cur, man, recs, pre, n); err != nil {
			return err
		}
		if err := unix.Renameat(int(l.t.Fd()), "spare.tmp", int(sp.Fd()), n); err != nil {
			return fmt.Errorf("keeping a copy of %s as a spare: %w", name, err)
		}
	}
	// The version's stat cache again, for the ctimes the links set.
	w, err := l.newStatWriter(name)
	if err != nil {
		return nil
	}
	defer w.abort()
	out := make([]statRec, len(man.Entries))
	restat(cur, man, pre, out, func(_, now *statRec) bool { return now.ctime < w.fence })
	if err := w.commit(name, id, out); err != nil {
		s.emit(Event{Kind: EventNote, Message: err.Error()})
	}
	return nil
}

// cloneVersion makes OUT/.zsnd/T/spare.tmp a copy of version cur (manifest
// man): its directories and symlinks, and a hard link to each file. pre[i]
// is set to a file's record when it matched it just before the link (and
// left as it is otherwise: a file seen changed is not vouched for).
func (s *syncer) cloneVersion(cur *os.File, man *manifest.Manifest, recs, pre []statRec, name string) error {
	l := s.l
	tfd := int(l.t.Fd())
	if err := removeAllAt(tfd, "spare.tmp"); err != nil {
		return err
	}
	if err := unix.Mkdirat(tfd, "spare.tmp", 0o700); err != nil {
		return &os.PathError{Op: "mkdir", Path: join(l.t.Name(), "spare.tmp"), Err: err}
	}
	root, err := openDir(l.t, "spare.tmp")
	if err != nil {
		return err
	}
	defer root.Close()
	src, dst := &dirCache{root: cur}, &dirCache{root: root}
	defer src.close()
	defer dst.close()
	fail := func(err error) error {
		removeAllAt(tfd, "spare.tmp")
		return fmt.Errorf("copying %s as a spare: %w", name, err)
	}
	for i := 1; i < len(man.Entries); i++ {
		e := &man.Entries[i]
		parent, base := split(e.Path)
		d, err := dst.get(parent)
		if err != nil {
			return fail(err)
		}
		switch e.Type {
		case manifest.TypeDir:
			err = unix.Mkdirat(int(d.Fd()), base, 0o700)
		case manifest.TypeSymlink:
			err = unix.Symlinkat(e.Target, int(d.Fd()), base)
		case manifest.TypeFile:
			sd, serr := src.get(parent)
			if serr != nil {
				return fail(serr)
			}
			st, serr := lstatAt(int(sd.Fd()), base)
			if serr != nil {
				return fail(serr)
			}
			if pre[i].ino == 0 && recs[i].matches(&st) {
				pre[i] = recs[i]
			} else if pre[i].ino != 0 && (st.Ino != pre[i].ino || st.Dev != pre[i].dev) {
				pre[i] = statRec{} // replaced between two copies
			}
			err = unix.Linkat(int(sd.Fd()), base, int(d.Fd()), base, 0)
		}
		if err != nil {
			return fail(&os.PathError{Op: "copy", Path: e.Path, Err: err})
		}
	}
	// Modes and mtimes as the version's; its files are the version's own
	// inodes, never changed.
	dst.close()
	placed := make([]placedRec, len(man.Entries))
	for i := range man.Entries {
		placed[i].assumed = man.Entries[i].Type == manifest.TypeFile
	}
	if err := finish(l.t, "spare.tmp", root, man, placed); err != nil {
		return fail(err)
	}
	return nil
}
