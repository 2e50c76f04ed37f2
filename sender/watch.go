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

	watched map[string]string // absolute directory -> tree name (watch goroutine)
}

func (s *Server) startWatch(ctx context.Context) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("--watch: %w", err)
	}
	w := &watcher{srv: s, fw: fw, watched: map[string]string{}}
	w.done.Add(1)
	go w.run(ctx, w.sync())
	return w, nil
}

func (w *watcher) wait() { w.done.Wait() }

// treeOf maps a path reported by fsnotify to the tree it belongs to.
func (w *watcher) treeOf(path string) string {
	if name, ok := w.watched[filepath.Dir(path)]; ok {
		return name
	}
	if name, ok := w.watched[path]; ok {
		return name
	}
	for _, name := range w.srv.pub.names {
		root := w.srv.pub.trees[name].root
		if path == root || strings.HasPrefix(path, root+string(filepath.Separator)) {
			return name
		}
	}
	return ""
}

// sync makes the watched set the directories of every tree's last scan.
// It returns the trees that got a new watch: a change made in such a
// directory after the scan that found it and before the watch was added
// raised no event, so those trees must be scanned once more.
func (w *watcher) sync() map[string]bool {
	p := w.srv.pub
	want := map[string]string{}
	p.mu.Lock()
	for _, name := range p.names {
		t := p.trees[name]
		want[t.root] = name // even before a first successful scan
		for _, d := range t.dirs {
			want[filepath.Join(t.root, filepath.FromSlash(d))] = name
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
	added := map[string]bool{}
	for d, name := range want {
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
		w.watched[d] = name
		added[name] = true
	}
	if failed > 0 {
		w.srv.event(Event{Kind: "error", Message: fmt.Sprintf("--watch cannot watch %d directories (%v); the periodic rescan still publishes their changes", failed, firstErr)})
	}
	return added
}

// run watches until ctx is done. dirty holds the trees to scan once the
// debounce allows (those whose watches were just added).
func (w *watcher) run(ctx context.Context, dirty map[string]bool) {
	defer w.done.Done()
	defer w.fw.Close()
	cfg := &w.srv.cfg
	rescan := time.NewTicker(cfg.RescanEvery)
	defer rescan.Stop()
	quiet := time.NewTimer(cfg.Debounce)
	if len(dirty) == 0 {
		quiet.Stop()
	}
	publish := func(names []string) {
		for _, name := range names {
			if ctx.Err() != nil {
				return
			}
			w.srv.pub.publish(ctx, w.srv.pub.trees[name]) // errors are reported as events
		}
		// Directories found by these scans are watched from now on;
		// what changed in them before that is caught by one more scan.
		for name := range w.sync() {
			dirty[name] = true
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
			if name := w.treeOf(ev.Name); name != "" {
				dirty[name] = true
				quiet.Reset(cfg.Debounce)
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: rescan everything once quiet.
			w.srv.event(Event{Kind: "error", Message: fmt.Sprintf("--watch: %v; rescanning", err)})
			for _, name := range w.srv.pub.names {
				dirty[name] = true
			}
			quiet.Reset(cfg.Debounce)
		case <-quiet.C:
			var names []string
			for _, name := range w.srv.pub.names {
				if dirty[name] {
					names = append(names, name)
				}
			}
			clear(dirty)
			publish(names)
		case <-rescan.C:
			publish(w.srv.pub.names)
		}
	}
}
