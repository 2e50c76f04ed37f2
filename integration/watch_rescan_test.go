package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// TestWatchRescanPublishes: --watch's periodic rescan publishes a change
// on its own, as the safety net README promises for events inotify loses:
// with a debounce far longer than the test, only the rescan can publish.
func TestWatchRescanPublishes(t *testing.T) {
	root := filepath.Join(t.TempDir(), "conf")
	os.Mkdir(root, 0o755)
	os.WriteFile(filepath.Join(root, "a.conf"), []byte("v1\n"), 0o644)
	ep, _ := publishingServer(t, sender.Config{Paths: []string{root}, Watch: true,
		Debounce: time.Hour, RescanEvery: 300 * time.Millisecond})
	cfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second}
	list := func() receiver.TreeInfo {
		t.Helper()
		trees, err := receiver.List(t.Context(), cfg, "conf")
		if err != nil || len(trees) != 1 {
			t.Fatalf("LIST: %v %v", trees, err)
		}
		return trees[0]
	}
	first := list()
	os.WriteFile(filepath.Join(root, "b.conf"), []byte("new\n"), 0o644)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if now := list(); now.Seq > first.Seq {
			if now.Version == first.Version {
				t.Fatalf("seq %d -> %d with the same version", first.Seq, now.Seq)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the rescan did not publish the change within 20 s (the debounce is an hour)")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
