package sender

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
)

// watchServer serves root with --watch (a 20 ms debounce, no periodic
// rescan within a test) until the test ends.
func watchServer(t *testing.T, root, state string, events func(Event)) *Server {
	t.Helper()
	return serveForTest(t, Config{Paths: []string{root}, StateDir: state,
		Watch: true, Debounce: 20 * time.Millisecond, RescanEvery: time.Hour, Events: events})
}

// TestWatchIncrementalScans: with --watch, each change is published from
// the directories its events name (no periodic rescan within the test),
// and every version equals what a full scan of the tree gives.
func TestWatchIncrementalScans(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "conf")
	w := func(rel, body string) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"a/b/c/f", "a/g", "x/y", "top"} {
		w(f, f)
	}
	srv := watchServer(t, root, filepath.Join(dir, "state"), nil)
	st, err := store.Open(filepath.Join(dir, "scratch"))
	if err != nil {
		t.Fatal(err)
	}
	fullID := func() manifest.ID {
		t.Helper()
		b := st.Begin()
		defer b.Abort()
		_, m, err := scanTree(context.Background(), root, b, nil, false, func(string, string) {})
		if err != nil {
			t.Fatal(err)
		}
		return m.ID()
	}
	settle := func(what string) {
		t.Helper()
		want := fullID()
		deadline := time.Now().Add(15 * time.Second)
		for srv.Trees()[0].ID != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the latest version is not what a full scan gives after 15 s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	settle("start")
	srv.pub.mu.Lock()
	before := srv.pub.scans
	srv.pub.mu.Unlock()

	steps := []struct {
		what string
		do   func()
	}{
		{"a file rewritten deep down", func() { w("a/b/c/f", "changed") }},
		{"a new directory with files", func() { w("a/new/sub/h", "h"); w("a/new/i", "i") }},
		{"a file in the new directory", func() { w("a/new/sub/later", "later") }},
		{"a directory's mode", func() { os.Chmod(filepath.Join(root, "a/new"), 0o700) }},
		{"a symlink", func() { os.Symlink("../top", filepath.Join(root, "x/link")) }},
		{"a file removed", func() { os.Remove(filepath.Join(root, "a/g")) }},
		{"a directory moved", func() { os.Rename(filepath.Join(root, "a/new"), filepath.Join(root, "x/moved")) }},
		{"a file in the moved directory", func() { w("x/moved/sub/after", "after") }},
		{"a directory removed", func() { os.RemoveAll(filepath.Join(root, "a/b")) }},
		{"a file at the root", func() { w("root2", "r") }},
	}
	for _, s := range steps {
		s.do()
		settle(s.what)
	}
	srv.pub.mu.Lock()
	got := srv.pub.scans
	srv.pub.mu.Unlock()
	inc := got.incremental - before.incremental
	t.Logf("scans during the changes: %d incremental, %d full", inc, got.full-before.full)
	if inc < 6 {
		t.Fatalf("only %d incremental scans for %d changes", inc, len(steps))
	}
}

// An error from fsnotify (an event overflow: events were lost) makes the
// watcher scan every tree in full once quiet, not at the next periodic
// rescan (README, Published versions).
func TestWatchOverflowRescansInFull(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "conf")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "f"), []byte("v1"), 0o644)
	started := make(chan *watcher, 1)
	watchStarted = func(w *watcher) {
		select {
		case started <- w:
		default: // another server's watcher: not this test's
		}
	}
	defer func() { watchStarted = nil }()
	ev := &eventLog{}
	srv := watchServer(t, root, filepath.Join(dir, "state"), ev.add)
	var w *watcher
	select {
	case w = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the watcher did not start")
	}
	fulls := func() int {
		srv.pub.mu.Lock()
		defer srv.pub.mu.Unlock()
		return srv.pub.scans.full
	}
	// The start's own full scans first (the initial publish, then the
	// directories whose watches were just added).
	time.Sleep(300 * time.Millisecond)
	before := fulls()
	w.fw.Errors <- fsnotify.ErrEventOverflow
	deadline := time.Now().Add(10 * time.Second)
	for fulls() == before {
		if time.Now().After(deadline) {
			t.Fatal("no full scan within 10 s of an event overflow (the periodic rescan is an hour away)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := ev.await("error", 1); len(got) == 0 || !strings.Contains(got[0].Message, "rescanning") {
		t.Fatalf("error events %+v, want the overflow reported", got)
	}
}
