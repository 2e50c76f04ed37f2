package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// fastFleet is a server config with short heartbeats, so liveness and
// reconnects happen within a test's bounds.
func fastFleet(src string) sender.Config {
	return sender.Config{Paths: []string{src}, Heartbeat: 200 * time.Millisecond, PeerTimeout: 2 * time.Second,
		Fleet: sender.FleetConfig{LostAfter: 3 * time.Second}}
}

func fastRecv(ep string) receiver.Config {
	return receiver.Config{Endpoint: ep, Timeout: 5 * time.Second, Heartbeat: 200 * time.Millisecond, PeerTimeout: 2 * time.Second}
}

// follower runs mirror.Follow until the test ends.
type follower struct {
	out    string
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	events []mirror.FollowEvent
}

func startFollower(t *testing.T, cfg mirror.FollowConfig) *follower {
	t.Helper()
	if cfg.Out == "" {
		cfg.Out = t.TempDir()
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 500 * time.Millisecond
	}
	if cfg.ReportEvery == 0 {
		cfg.ReportEvery = time.Second
	}
	f := &follower{out: cfg.Out, done: make(chan struct{})}
	if cfg.Events == nil { // else the test's own, and nothing is recorded
		cfg.Events = func(e mirror.FollowEvent) {
			f.mu.Lock()
			f.events = append(f.events, e)
			f.mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		if err := mirror.Follow(ctx, cfg); err != nil {
			t.Errorf("follow: %v", err)
		}
	}()
	t.Cleanup(f.stop)
	return f
}

func (f *follower) stop() {
	f.cancel()
	select {
	case <-f.done:
	case <-time.After(20 * time.Second):
		panic("follower did not stop within 20s")
	}
}

func (f *follower) count(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, e := range f.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func (f *follower) countSeq(kind string, seq uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, e := range f.events {
		if e.Kind == kind && e.Seq == seq {
			n++
		}
	}
	return n
}

// waitUntil polls cond until it holds or bound passes.
func waitUntil(t *testing.T, bound time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s not reached within %v; last: %s", what, bound, last)
}

// converged: the fleet table shows every one of nodes switched to the
// latest version of tree, at sequence seq or later.
func converged(srv *sender.Server, tree string, seq uint64, nodes int) func() (bool, string) {
	return func() (bool, string) {
		for _, st := range srv.Fleet() {
			if st.Tree == tree {
				return st.Latest.Seq >= seq && st.OnLatest == nodes && st.Live == nodes, st.Summary()
			}
		}
		return false, "no tree"
	}
}

func readStable(t *testing.T, out, tree, file string) string {
	b, err := os.ReadFile(filepath.Join(out, tree, file))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func publishNow(t *testing.T, srv *sender.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Publish(ctx); err != nil {
		t.Fatal(err)
	}
}

// Three followers get every new version pushed, switch, run --exec with
// the documented environment, and the fleet table shows them on it.
func TestFollowPushesNewVersions(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	var fs []*follower
	for i := 0; i < 3; i++ {
		out := t.TempDir()
		fs = append(fs, startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Out: out,
			Node: fmt.Sprintf("node%d", i), Exec: `echo "$ZSND_PHASE $ZSND_TREE $ZSND_SEQ $ZSND_VERSION $ZSND_PREV_SEQ $ZSND_PATH" >> hook.log`,
			// The check runs in the staged version's directory, ZSND_PATH,
			// which holds the new content (else no node would switch).
			Check: `[ "$ZSND_PHASE" = check ] && [ "$(pwd -P)" = "$(cd "$ZSND_PATH" && pwd -P)" ] && [ -f app.conf ] && case "$ZSND_PATH" in */.zsnd/app/*) ;; *) exit 9 ;; esac`}))
	}
	waitUntil(t, 20*time.Second, "3 nodes on v1", converged(srv, "app", 1, 3))
	for v := 2; v <= 4; v++ {
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
		publishNow(t, srv)
		waitUntil(t, 20*time.Second, fmt.Sprintf("3 nodes on v%d", v), converged(srv, "app", uint64(v), 3))
		for _, f := range fs {
			if got := readStable(t, f.out, "app", "app.conf"); got != fmt.Sprintf("v%d", v) {
				t.Fatalf("%s shows %q after the fleet converged on v%d", f.out, got, v)
			}
		}
	}
	// Every follower ran its hook after each switch, with the facts.
	for _, f := range fs {
		b, err := os.ReadFile(filepath.Join(f.out, "hook.log"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s: hook ran %d times, want 4: %q", f.out, len(lines), lines)
		}
		for i, l := range lines {
			w := strings.Fields(l)
			if len(w) != 6 || w[0] != "exec" || w[1] != "app" || w[2] != fmt.Sprint(i+1) || len(w[3]) != 64 ||
				w[4] != fmt.Sprint(i) || w[5] != filepath.Join(f.out, "app") {
				t.Errorf("hook run %d: %q", i, l)
			}
		}
	}
	st := srv.Fleet()
	if len(st) != 1 || !strings.HasPrefix(st[0].Summary(), "3/3 nodes on app v4") {
		t.Fatalf("summary %q", st[0].Summary())
	}
	for _, r := range st[0].Rows {
		if r.Hook == nil || r.Hook.Name != "exec" || !r.Hook.OK {
			t.Errorf("%s: hook %+v", r.Node, r.Hook)
		}
	}
}
