package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A follower runs a sync on one thread while the machine is saturated and
// on the default number otherwise (README, "CPU on a busy host"): the
// load is read as each sync starts, here from a file standing for
// /proc/loadavg (ZSND_LOADAVG), and each syncing record says how many
// threads (GOMAXPROCS) the sync has. A GOMAXPROCS given by the user is
// what is restored (and never exceeded).
func TestFollowerThreadsFollowTheLoadCLI(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("GOMAXPROCS is 1 here: nothing to lower")
	}
	t.Run("default", func(t *testing.T) { followerThreads(t, runtime.GOMAXPROCS(0)) })
	t.Run("GOMAXPROCS=3", func(t *testing.T) {
		t.Setenv("GOMAXPROCS", "3")
		followerThreads(t, 3)
	})
}

func followerThreads(t *testing.T, want int) {
	base := t.TempDir()
	load := filepath.Join(base, "loadavg")
	writeFile(t, load, "9.00 9.00 9.00 999/1000 4242\n")
	t.Setenv("ZSND_LOADAVG", load)
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "st"), src)
	out := filepath.Join(base, "out")
	os.Mkdir(out, 0o755)
	f := startFollowerProc(t, zs.ep, out, "n1", "--log-format", "json")
	stable := func(v string) func() (bool, string) {
		return func() (bool, string) { got := readStable(t, out, "app", "app.conf"); return got == v, got }
	}
	waitUntil(t, 30*time.Second, "v1", stable("v1"))
	writeFile(t, load, "0.10 0.10 0.10 1/1000 4242\n")
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	zs.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 30*time.Second, "v2", stable("v2"))
	if err := f.stop(t); err != nil {
		t.Fatalf("follower: %v\n%s", err, f.log.String())
	}
	var threads []int
	for _, line := range strings.Split(strings.TrimSpace(f.log.String()), "\n") {
		var rec struct {
			Event   string `json:"event"`
			Threads *int   `json:"threads"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if rec.Event == "syncing" {
			if rec.Threads == nil {
				t.Fatalf("a syncing record without threads: %s", line)
			}
			threads = append(threads, *rec.Threads)
		}
	}
	if len(threads) < 2 || threads[0] != 1 || threads[len(threads)-1] != want {
		t.Fatalf("threads of the syncs %v: want 1 first (saturated), %d last (idle)\n%s", threads, want, f.log.String())
	}
}
