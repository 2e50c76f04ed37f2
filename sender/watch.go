package sender

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// The watcher (--watch) publishes a tree once it has been quiet for
// Config.Debounce after a change, and rescans every tree every
// Config.RescanEvery as a safety net: inotify drops events on overflow,
// cannot watch beyond its per-user limit, and never sees changes made
// through another mount of the same files. It watches every directory of
// each tree, as the last scan found them; new directories are added by the
// scan that follows their creation.

type watcher struct {
	srv  *Server
	fw   *fsnotify.Watcher
	done sync.WaitGroup

	watched map[string][2]string // absolute directory -> tree name, its path in the tree (watch goroutine)
}

// watchStarted, if set, is given each watcher as it starts (tests).
var watchStarted func(*watcher)

func (s *Server) startWatch(ctx context.Context) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("--watch: %w", err)
	}
	w := &watcher{srv: s, fw: fw, watched: map[string][2]string{}}
	if watchStarted != nil {
		watchStarted(w)
	}
	w.done.Add(1)
	go w.run(ctx, w.sync())
	return w, nil
}

func (w *watcher) wait() { w.done.Wait() }

// treeOf maps a path reported by fsnotify that is not a watched
// directory, nor in one, to the tree whose root holds it.
func (w *watcher) treeOf(path string) string {
	for _, name := range w.srv.pub.names {
		root := w.srv.pub.trees[name].root
		if path == root || strings.HasPrefix(path, root+string(filepath.Separator)) {
			return name
		}
	}
	return ""
}

// sync makes the watched set the directories of every tree's last scan.
// It returns, per tree, the directories that got a new watch: a change
// made in such a directory after the scan that found it and before the
// watch was added raised no event, so they must be read once more.
func (w *watcher) sync() map[string][]string {
	p := w.srv.pub
	want := map[string][2]string{} // absolute directory -> tree name, path in the tree
	p.mu.Lock()
	for _, name := range p.names {
		t := p.trees[name]
		want[t.root] = [2]string{name, ""} // even before a first successful scan
		for _, d := range t.dirs {
			want[filepath.Join(t.root, filepath.FromSlash(d))] = [2]string{name, d}
		}
	}
	p.mu.Unlock()
	for d := range w.watched {
		if _, ok := want[d]; !ok {
			w.fw.Remove(d)
			delete(w.watched, d)
		}
	}
	failed := 0
	var firstErr error
	added := map[string][]string{}
	for d, nr := range want {
		if _, ok := w.watched[d]; ok {
			continue
		}
		if err := w.fw.Add(d); err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		w.watched[d] = nr
		added[nr[0]] = append(added[nr[0]], nr[1])
	}
	if failed > 0 {
		w.srv.event(Event{Kind: "error", Message: fmt.Sprintf("--watch cannot watch %d directories (%v); the periodic rescan still publishes their changes", failed, firstErr)})
	}
	return added
}

// changes is what a tree's events since its last scan ask for: a full
// scan, or reading the directories dirs again (scandirty.go).
type changes struct {
	full bool
	dirs map[string]bool
}

func (c *changes) list() []string {
	if c.full {
		return nil
	}
	out := make([]string, 0, len(c.dirs))
	for d := range c.dirs {
		out = append(out, d)
	}
	return out
}

// maxDirtyDirs: past this many changed directories a tree is scanned in
// full (reading them one by one would gain nothing).
const maxDirtyDirs = 4096

// mark notes that directory dir (its path in tree name) changed, or with
// full that the tree needs a full scan.
func mark(dirty map[string]*changes, name, dir string, full bool) {
	c := dirty[name]
	if c == nil {
		c = &changes{dirs: map[string]bool{}}
		dirty[name] = c
	}
	if full || c.full || len(c.dirs) >= maxDirtyDirs {
		c.full = true
		return
	}
	c.dirs[dir] = true
}

// note records an event about path (absolute, as fsnotify gives it).
func (w *watcher) note(dirty map[string]*changes, path string, op fsnotify.Op) {
	if nr, ok := w.watched[path]; ok {
		// About a watched directory itself: a removal or a rename
		// moves what is below it, which only a full scan follows.
		mark(dirty, nr[0], nr[1], op.Has(fsnotify.Remove) || op.Has(fsnotify.Rename))
		return
	}
	if nr, ok := w.watched[filepath.Dir(path)]; ok {
		mark(dirty, nr[0], nr[1], false)
		return
	}
	if name := w.treeOf(path); name != "" {
		mark(dirty, name, "", true)
	}
}

// run watches until ctx is done. added holds, per tree, the directories
// to read again once the debounce allows (those whose watches were just
// added): at start, every tree is scanned in full once more.
func (w *watcher) run(ctx context.Context, added map[string][]string) {
	defer w.done.Done()
	defer w.fw.Close()
	cfg := &w.srv.cfg
	rescan := time.NewTicker(cfg.RescanEvery)
	defer rescan.Stop()
	quiet := time.NewTimer(cfg.Debounce)
	dirty := map[string]*changes{}
	for name := range added {
		dirty[name] = &changes{full: true}
	}
	if len(dirty) == 0 {
		quiet.Stop()
	}
	publish := func(todo map[string]*changes) {
		for _, name := range w.srv.pub.names {
			c := todo[name]
			if c == nil {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			w.srv.pub.publish(ctx, w.srv.pub.trees[name], c.list()) // errors are reported as events
		}
		// Directories found by these scans are watched from now on;
		// what changed in them before that is caught by reading them
		// once more.
		for name, dirs := range w.sync() {
			for _, d := range dirs {
				mark(dirty, name, d, false)
			}
			quiet.Reset(cfg.Debounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			w.note(dirty, ev.Name, ev.Op)
			if len(dirty) > 0 {
				quiet.Reset(cfg.Debounce)
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: rescan everything once quiet.
			w.srv.event(Event{Kind: "error", Message: fmt.Sprintf("--watch: %v; rescanning", err)})
			for _, name := range w.srv.pub.names {
				dirty[name] = &changes{full: true}
			}
			quiet.Reset(cfg.Debounce)
		case <-quiet.C:
			todo := dirty
			dirty = map[string]*changes{}
			publish(todo)
		case <-rescan.C:
			todo := map[string]*changes{}
			for _, name := range w.srv.pub.names {
				todo[name] = &changes{full: true}
			}
			publish(todo)
		}
	}
}
