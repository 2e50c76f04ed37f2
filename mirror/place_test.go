package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A new version of a tree large enough for several workers to place its
// files: unchanged files are reused (hard-linked), changed ones fetched,
// files of equal content (empty ones, copies) placed once each, files of
// the current version edited by hand (in place, size and mtime kept, or
// replaced) are found drifted and fetched, whatever the worker count.
func TestPlaceFilesInParallel(t *testing.T) {
	for _, n := range workerCounts {
		t.Run(fmt.Sprint(n, " workers"), func(t *testing.T) {
			defer useWorkers(n)()
			s := startServer(t)
			src := filepath.Join(t.TempDir(), "app")
			for d := range 20 {
				for f := range 15 {
					content := strings.Repeat(fmt.Sprint(d, f), f*7)
					if f%5 == 0 {
						content = "the same in every directory"
					}
					write(t, filepath.Join(src, fmt.Sprintf("d%02d/f%02d", d, f)), content, 0o644)
				}
			}
			publish(t, s, "app", src, 1)
			out := t.TempDir()
			cfg := testConfig(s, out, "app")
			var mu sync.Mutex
			var drift []string
			cfg.Events = func(e Event) {
				if e.Kind == EventDrift {
					mu.Lock()
					drift = append(drift, e.Path)
					mu.Unlock()
				}
			}
			syncOK(t, cfg)
			time.Sleep(20 * time.Millisecond) // past the stat cache's fence

			// Hand edits in the current version: in place (size and mtime
			// kept) and replaced with other content.
			cur := filepath.Join(out, "app")
			for _, p := range []string{"d03/f04", "d11/f07", "d19/f13"} {
				f := filepath.Join(cur, p)
				st, _ := os.Stat(f)
				h, err := os.OpenFile(f, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				h.WriteAt([]byte("!"), 0)
				h.Close()
				os.Chtimes(f, st.ModTime(), st.ModTime())
			}
			// The shared content too, in one of its copies.
			f := filepath.Join(cur, "d07/f05")
			st, _ := os.Stat(f)
			os.Remove(f)
			os.WriteFile(f, []byte("the same in every directorY"), 0o644)
			os.Chtimes(f, st.ModTime(), st.ModTime())

			// Version 2: two files changed, one added.
			write(t, filepath.Join(src, "d00/f01"), "changed", 0o644)
			write(t, filepath.Join(src, "d15/f09"), "changed too", 0o644)
			write(t, filepath.Join(src, "d15/new"), "new", 0o644)
			publish(t, s, "app", src, 2)
			res := syncOK(t, cfg)
			sameTree(t, src, cur)
			slices.Sort(drift)
			if want := []string{"d03/f04", "d07/f05", "d11/f07", "d19/f13"}; !slices.Equal(drift, want) {
				t.Errorf("drift %q, want %q", drift, want)
			}
			if res.FilesFetched != 6 || res.FilesReused != 301-6 {
				t.Errorf("fetched %d, reused %d; want 6 (3 new or changed, 3 drifted), %d", res.FilesFetched, res.FilesReused, 301-6)
			}
			if res.Unchanged || res.Repaired {
				t.Errorf("%+v", res)
			}
		})
	}
}
