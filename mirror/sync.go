package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// maxGone is how many times a sync moves to a newer version after the
// server dropped the one it was fetching (410 gone).
const maxGone = 3

// Sync makes cfg.Out/cfg.Tree show the latest version of the tree the
// server publishes: it lists it, and unless the stable path already shows
// that version, fetches its manifest, stages it (reusing local files,
// fetching the rest), checks the staged tree against the version id,
// switches the stable path to it, and prunes old versions. See the package
// documentation for the layout and the guarantees.
func Sync(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return Result{}, err
	}
	res := Result{Tree: cfg.Tree, Stable: filepath.Join(cfg.Out, cfg.Tree)}
	l, err := openLayout(cfg.Out, cfg.Tree, cfg.LockWait)
	if err != nil {
		return res, err
	}
	defer l.close()
	s := &syncer{cfg: &cfg, l: l, res: &res, listed: cfg.Listed}
	if s.listed != nil && s.listed.Name != cfg.Tree {
		s.listed = nil
	}
	fo := cfg.Receiver.Failover
	moved := 0
	for attempt := 1; ; attempt++ {
		ep := fo.Current()
		err = s.once(ctx)
		if errors.Is(err, receiver.ErrGone) && attempt < maxGone && ctx.Err() == nil {
			s.emit(Event{Kind: EventNote, Message: fmt.Sprintf("version %s is gone from the server; moving to the latest", res.Version.Short())})
			continue
		}
		if lied(err) && ctx.Err() == nil && moved < fo.Len()-1 {
			// The server sent what the version id disowns: ask the next
			// endpoint of the list (each at most once per sync). Nothing
			// from it was switched to; what it staged is re-hashed before
			// any reuse.
			moved++
			next := fo.Next(ep)
			s.emit(Event{Kind: EventNote, Endpoint: next, Message: fmt.Sprintf("%s sent data that failed verification (%v); moving to %s", ep, err, next)})
			continue
		}
		return res, err
	}
}

// lied reports whether a sync failed because of what the server sent: a
// bad manifest, a staged tree that does not give the version id, data
// failing BLAKE3 beyond the retry budget, or a protocol violation.
func lied(err error) bool {
	return errors.Is(err, ErrBadManifest) || errors.Is(err, ErrMismatch) || errors.Is(err, receiver.ErrVerify) || errors.Is(err, receiver.ErrProtocol)
}

// syncer is one sync's state.
type syncer struct {
	cfg *Config
	l   *layout
	res *Result

	mu         sync.Mutex // guards the progress counters (receiver events)
	driftMu    sync.Mutex // guards res.Drift (and orders drift events)
	filesDone  int
	bytesDone  int64
	filesTotal int
	bytesTotal int64
	inFlight   map[string]int64 // bytes done of files being fetched, by name
	inFlightN  int64            // their sum

	// curStats is the stat cache of the current version (directory
	// curStatsOf), read by once while it reads the version's manifest.
	curStats   []statRec
	curStatsOf string
	// rec is the spare this attempt's staging tree started from (nil if
	// none).
	rec *recycled
	// listed is Config.Listed until the first attempt takes it.
	listed *receiver.TreeInfo
}

func (s *syncer) emit(e Event) {
	if s.cfg.Events == nil {
		return
	}
	e.Tree = s.cfg.Tree
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if e.Version == (manifest.ID{}) {
		e.Version, e.Seq = s.res.Version, s.res.Seq
	}
	s.cfg.Events(e)
}

func (s *syncer) receiverConfig(outDir string) receiver.Config {
	rc := s.cfg.Receiver
	rc.OutputDir = outDir
	rc.Progress = s.recvEvent
	rc.DeferSync = true // stage() syncs the file system once before the switch
	return rc
}

// recvEvent turns the receiver's per-file events into overall progress.
func (s *syncer) recvEvent(e receiver.Event) {
	s.mu.Lock()
	switch e.Kind {
	case receiver.EventProgress, receiver.EventStart:
		if s.inFlight != nil {
			s.inFlightN += e.Done - s.inFlight[e.Name]
			s.inFlight[e.Name] = e.Done
		}
	case receiver.EventDone:
		if s.inFlight != nil {
			s.inFlightN -= s.inFlight[e.Name]
			delete(s.inFlight, e.Name)
			s.filesDone++
			s.bytesDone += e.Size
		}
	case receiver.EventReconnect, receiver.EventRestart:
		s.mu.Unlock()
		ev := Event{Kind: EventNote, Message: strings.TrimSpace(e.Name + " " + e.Message)}
		if fo := s.cfg.Receiver.Failover; e.Kind == receiver.EventReconnect && fo.Len() > 1 {
			ev.Endpoint = fo.Current() // the receiver moved the list before telling
		}
		s.emit(ev)
		return
	default:
		s.mu.Unlock()
		return
	}
	ev := s.progressLocked()
	s.mu.Unlock()
	if e.Kind != receiver.EventStart {
		s.emit(ev)
	}
}

func (s *syncer) progressLocked() Event {
	done := s.bytesDone + s.inFlightN
	return Event{Kind: EventProgress, FilesDone: s.filesDone, FilesTotal: s.filesTotal, BytesDone: done, BytesTotal: s.bytesTotal}
}

func (s *syncer) addDone(files int, bytes int64) {
	s.mu.Lock()
	s.filesDone += files
	s.bytesDone += bytes
	s.mu.Unlock()
}

// once runs one attempt: LIST, then sync to the version listed.
func (s *syncer) once(ctx context.Context) error {
	cfg, l, res := s.cfg, s.l, s.res
	cur, err := l.current()
	if err != nil {
		return err
	}
	// The server is asked while the current version's manifest is read
	// (the answer is awaited before anything else is done).
	type listed struct {
		trees []receiver.TreeInfo
		err   error
	}
	lch := make(chan listed, 1)
	if hint := s.listed; hint != nil {
		// Follow mode: the server announced this version just now.
		s.listed = nil // a retry (410 gone, another endpoint) asks again
		lch <- listed{[]receiver.TreeInfo{*hint}, nil}
	} else {
		go func() {
			trees, err := receiver.List(ctx, s.receiverConfig(l.paths.t), cfg.Tree)
			lch <- listed{trees, err}
		}()
	}
	// And its stat cache too.
	var curMan *manifest.Manifest
	var curID manifest.ID
	s.curStats, s.curStatsOf = nil, ""
	if cur.kind == curManaged {
		var statsID manifest.ID
		var stats []statRec
		read := make(chan struct{})
		go func() {
			defer close(read)
			statsID, stats, _ = l.readStats(cur.name)
		}()
		curMan, curID, _ = l.manifestFor(cur.id12, cfg.Limits)
		<-read
		if curMan != nil && stats != nil && statsID == curID && len(stats) == len(curMan.Entries) {
			s.curStats, s.curStatsOf = stats, cur.name
		}
	}
	lr := <-lch
	trees, err := lr.trees, lr.err
	if err != nil {
		if errors.Is(err, receiver.ErrNotFound) {
			return fmt.Errorf("%w: %s: %v", ErrNotTree, cfg.Tree, err)
		}
		return fmt.Errorf("listing %s: %w", cfg.Tree, err)
	}
	if len(trees) != 1 || trees[0].Name != cfg.Tree {
		return fmt.Errorf("%w: LIST of %s returned %d trees", ErrBadManifest, cfg.Tree, len(trees))
	}
	info := trees[0]
	id := manifest.ID(info.Version)
	res.Version, res.Seq = id, info.Seq
	if info.Entries > cfg.Limits.MaxEntries || info.ManifestSize > cfg.Limits.MaxBytes {
		return fmt.Errorf("%w: version %s announces %d entries in %d bytes, beyond the limits (%d entries, %d bytes)",
			ErrBadManifest, id.Short(), info.Entries, info.ManifestSize, cfg.Limits.MaxEntries, cfg.Limits.MaxBytes)
	}
	name := versionName(info.Seq, id)

	var man *manifest.Manifest
	if curMan != nil && curID == id {
		// The stable path already shows this version: check it.
		root, err := openDir(l.v, cur.name)
		if err != nil {
			// The version the stable path names is gone (removed by
			// hand): build it again.
			s.emit(Event{Kind: EventNote, Message: fmt.Sprintf("the current version's directory is unusable (%v); fetching it again", err)})
			return s.rebuild(ctx, info, id, name, cur)
		}
		drift, err := s.check(root, curMan, cfg.Verify, s.curStats, cur.name, curID)
		root.Close()
		if err != nil {
			return err
		}
		res.Dir = filepath.Join(l.v.Name(), cur.name)
		s.count(curMan)
		if len(drift) == 0 {
			res.Unchanged = true
			res.Pruned, err = l.prune(cfg.Keep, cur.name)
			return err
		}
		for _, p := range drift {
			s.drift(p)
		}
		res.Repaired = true
		man, name = curMan, cur.name
	} else {
		if curMan != nil {
			if root, err := openDir(l.v, cur.name); err != nil {
				curMan = nil // nothing to reuse from a version directory removed by hand
			} else {
				root.Close()
			}
		}
		man, err = s.fetchManifest(ctx, info, id)
		if err != nil {
			return err
		}
		s.count(man)
	}
	return s.build(ctx, man, id, name, cur, curMan)
}

// rebuild syncs to version id as if nothing were current.
func (s *syncer) rebuild(ctx context.Context, info receiver.TreeInfo, id manifest.ID, name string, cur current) error {
	man, err := s.fetchManifest(ctx, info, id)
	if err != nil {
		return err
	}
	s.count(man)
	if cur.name == name {
		cur.name = "" // not there any more: switch to the rebuilt one
	}
	return s.build(ctx, man, id, name, cur, nil)
}

// build stages man, switches to it and prunes.
func (s *syncer) build(ctx context.Context, man *manifest.Manifest, id manifest.ID, name string, cur current, curMan *manifest.Manifest) error {
	cfg, l, res := s.cfg, s.l, s.res
	s.emit(Event{Kind: EventVersion, FilesTotal: res.Files, BytesTotal: res.Bytes})
	recs, err := s.stage(ctx, man, id, cur, curMan, name)
	if err != nil {
		return err
	}
	res.Dir = filepath.Join(l.v.Name(), name)
	if cur.kind != curManaged || cur.name != name {
		if cfg.BeforeSwitch != nil {
			st := Staged{Tree: cfg.Tree, Version: id, Seq: res.Seq, Dir: res.Dir}
			if cur.kind == curManaged {
				st.PrevSeq, _, _ = parseVersionName(cur.name)
				st.PrevDir = filepath.Join(l.v.Name(), cur.name)
			}
			if cur.kind != curPlain {
				// The switch is then one rename, however long the hook
				// or the barrier takes.
				if err := l.linkAhead(name); err != nil {
					return err
				}
			}
			if err := cfg.BeforeSwitch(ctx, st); err != nil {
				// Not switched to: drop it, so it never takes the place
				// of a version worth keeping for rollback.
				l.unlinkAhead()
				if rerr := removeAllAt(int(l.v.Fd()), name); rerr == nil {
					fsyncDir(l.v)
				}
				return err
			}
		}
		switchedAt, err := l.switchTo(name, cur)
		if err != nil {
			return err
		}
		if cur.kind == curManaged && cur.name != "" {
			res.Previous = filepath.Join(l.v.Name(), cur.name)
		}
		s.emit(Event{Kind: EventSwitch, Message: res.Dir, Time: switchedAt}) // the rename, not the fsync after it
		if cfg.AfterSwitch != nil {
			cfg.AfterSwitch(ctx)
		}
		if err := l.syncSwitch(); err != nil {
			return err
		}
	}
	l.unlinked = map[[2]uint64]bool{}
	res.Pruned, err = l.prune(cfg.Keep, name)
	s.saveStats(name, id, man, recs)
	l.unlinked = nil
	if err == nil && cfg.WarmSpares {
		if werr := s.warmSpares(name, id, man); werr != nil {
			s.emit(Event{Kind: EventNote, Message: werr.Error()}) // only later syncs are slower for it
		}
	}
	return err
}

func (s *syncer) count(m *manifest.Manifest) {
	r := s.res
	r.Files, r.Dirs, r.Symlinks, r.Bytes = 0, 0, 0, 0
	for i := range m.Entries {
		switch m.Entries[i].Type {
		case manifest.TypeFile:
			r.Files++
			r.Bytes += int64(m.Entries[i].Size)
		case manifest.TypeDir:
			r.Dirs++
		case manifest.TypeSymlink:
			r.Symlinks++
		}
	}
	s.mu.Lock()
	s.filesTotal, s.bytesTotal = r.Files, r.Bytes
	s.filesDone, s.bytesDone = 0, 0 // a new attempt (after 410) counts afresh
	s.mu.Unlock()
}

func (s *syncer) drift(path string) {
	s.driftMu.Lock() // placeFiles' workers
	defer s.driftMu.Unlock()
	for _, p := range s.res.Drift {
		if p == path {
			return
		}
	}
	s.res.Drift = append(s.res.Drift, path)
	s.emit(Event{Kind: EventDrift, Path: path, Message: "local file no longer matches its version; fetching it"})
}

func tagOf(id manifest.ID) protocol.Tag {
	var t protocol.Tag
	copy(t[:], id[:])
	return t
}

// fetchManifest returns the version's manifest, from m/ when kept, else
// fetched with MGET into incoming/, checked against the id, decoded within
// the limits and validated, and kept in m/.
func (s *syncer) fetchManifest(ctx context.Context, info receiver.TreeInfo, id manifest.ID) (*manifest.Manifest, error) {
	cfg, l := s.cfg, s.l
	if man, ok := l.loadManifest(id, cfg.Limits); ok {
		return man, checkReserved(man)
	}
	inc, err := mkdirPlain(l.t, "incoming", 0o700)
	if err != nil {
		return nil, err
	}
	defer inc.Close()
	hash := protocol.Hash(id)
	rc := s.receiverConfig(inc.Name())
	rc.Progress = nil
	results, err := receiver.FetchRequests(ctx, rc, []receiver.Request{{Kind: receiver.KindMGet, Name: cfg.Tree,
		Version: tagOf(id), Expect: &hash, Size: info.ManifestSize, CheckSize: true}})
	if len(results) == 1 {
		s.res.ManifestBytes += results[0].Wire
	}
	if err != nil {
		if errors.Is(err, receiver.ErrVerify) || errors.Is(err, receiver.ErrProtocol) {
			err = fmt.Errorf("%w: %w", ErrBadManifest, err)
		}
		return nil, fmt.Errorf("fetching the manifest of %s %s: %w", cfg.Tree, id.Short(), err)
	}
	fd, err := openBeneath(int(inc.Fd()), cfg.Tree, unix.O_RDONLY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: join(inc.Name(), cfg.Tree), Err: err}
	}
	f := os.NewFile(uintptr(fd), cfg.Tree)
	b, err := io.ReadAll(io.LimitReader(f, int64(cfg.Limits.MaxBytes)+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the manifest: %w", err)
	}
	if got := manifest.IDOf(b); got != id {
		unix.Unlinkat(int(inc.Fd()), cfg.Tree, 0)
		return nil, fmt.Errorf("%w: manifest of %d bytes has id %s, the server announced %s", ErrBadManifest, len(b), got.Short(), id.Short())
	}
	man, err := manifest.Decode(b, cfg.Limits)
	if err == nil {
		err = checkReserved(man)
	}
	if err != nil {
		unix.Unlinkat(int(inc.Fd()), cfg.Tree, 0)
		if !errors.Is(err, ErrBadManifest) {
			err = fmt.Errorf("%w: %w", ErrBadManifest, err)
		}
		return nil, err
	}
	// Kept as m/<id>: the file just read, renamed (no copy). Not synced
	// here: stage syncs the file system before anything is switched to,
	// and a torn m/<id> after a crash fails its id check and is fetched
	// again.
	if err := unix.Renameat(int(inc.Fd()), cfg.Tree, int(l.m.Fd()), id.String()); err != nil {
		unix.Unlinkat(int(inc.Fd()), cfg.Tree, 0)
		return nil, fmt.Errorf("keeping manifest %s: %w", id.Short(), err)
	}
	decoded.put(id, man, len(b))
	return man, nil
}

// checkReserved refuses names the receiver uses for the partial file of
// a file being fetched and its state (".zrecv-HASH.part",
// ".zrecv-HASH.state" beside it).
func checkReserved(m *manifest.Manifest) error {
	for i := range m.Entries {
		if _, base := split(m.Entries[i].Path); reservedName(base) {
			return fmt.Errorf("%w: entry %q: names .zrecv-*.part and .zrecv-*.state are reserved for zrecv's partial files", ErrBadManifest, m.Entries[i].Path)
		}
	}
	return nil
}
