package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/sender"
)

func switchTimes(f *follower, seq uint64) []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ts []time.Time
	for _, e := range f.events {
		if e.Kind == "switched" && e.Seq == seq {
			ts = append(ts, e.Time)
		}
	}
	return ts
}

func stagedAt(f *follower, seq uint64) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.events {
		if e.Kind == "staged" && e.Seq == seq {
			return e.Time, true
		}
	}
	return time.Time{}, false
}

// With --barrier, no follower switches before every live follower has
// staged: a slow one (its check takes a second) holds the others back,
// then all switch together.
func TestBarrierAllStaged(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Barrier, cfg.BarrierTimeout = true, 10*time.Second
	ep, srv := publishingServer(t, cfg)
	var fs []*follower
	for i := 0; i < 4; i++ {
		fc := mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%d", i)}
		if i == 0 {
			fc.Check = `[ "$ZSND_SEQ" = 1 ] || sleep 1`
		}
		fs = append(fs, startFollower(t, fc))
	}
	waitUntil(t, 20*time.Second, "4 nodes on v1", converged(srv, "app", 1, 4))
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	waitUntil(t, 20*time.Second, "4 nodes on v2", converged(srv, "app", 2, 4))
	slowStaged, ok := stagedAt(fs[0], 2)
	if !ok {
		t.Fatal("the slow node never reported staged")
	}
	var first, last time.Time
	for i, f := range fs {
		ts := switchTimes(f, 2)
		if len(ts) != 1 {
			t.Fatalf("node %d switched %d times to v2", i, len(ts))
		}
		if ts[0].Before(slowStaged) {
			t.Errorf("node %d switched at %v, before the slow node staged at %v", i, ts[0], slowStaged)
		}
		if first.IsZero() || ts[0].Before(first) {
			first = ts[0]
		}
		if ts[0].After(last) {
			last = ts[0]
		}
	}
	t.Logf("barrier spread over 4 followers: %v", last.Sub(first))
}

// The timeout path: one follower never stages (its check hangs); at the
// barrier timeout the server switches the nodes that staged, and the
// other stays on its version, shown behind in the status. A follower that
// stages after the barrier was decided gets its SWITCH at once.
func TestBarrierTimeoutOneNeverStages(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Barrier, cfg.BarrierTimeout = true, 2*time.Second
	var be barrierEvents
	prev := cfg.Events
	cfg.Events = func(e sender.Event) {
		be.record(e)
		if prev != nil {
			prev(e)
		}
	}
	ep, srv := publishingServer(t, cfg)
	var fs []*follower
	for i := 0; i < 4; i++ {
		fc := mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%d", i)}
		switch i {
		case 2:
			fc.Check, fc.HookTimeout = `[ "$ZSND_SEQ" = 1 ] || sleep 60`, 60*time.Second
		case 3:
			fc.Check = `[ "$ZSND_SEQ" = 1 ] || sleep 4`
		}
		fs = append(fs, startFollower(t, fc))
	}
	waitUntil(t, 20*time.Second, "4 nodes on v1", converged(srv, "app", 1, 4))
	published := time.Now()
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	waitUntil(t, 20*time.Second, "2 nodes on v2", func() (bool, string) {
		st := srv.Fleet()[0]
		return st.OnLatest == 2, st.Summary()
	})
	if waited := time.Since(published); waited < 1500*time.Millisecond {
		t.Errorf("nodes switched %v after the publish, before the barrier timeout", waited)
	}
	for i, f := range fs[:2] {
		if got := readStable(t, f.out, "app", "app.conf"); got != "v2" {
			t.Errorf("node %d shows %q", i, got)
		}
	}
	if got := readStable(t, fs[2].out, "app", "app.conf"); got != "v1" {
		t.Errorf("the node that never staged shows %q", got)
	}
	// The server logs the nodes left behind by name (README).
	logged := be.messages("\n")
	if !strings.Contains(logged, "timed out") || !strings.Contains(logged, "n2") || !strings.Contains(logged, "n3") {
		t.Errorf("the barrier's timeout event does not name n2 and n3: %q", logged)
	}
	// The late one switches alone once it has staged.
	waitUntil(t, 20*time.Second, "3 nodes on v2", func() (bool, string) {
		st := srv.Fleet()[0]
		return st.OnLatest == 3, st.Summary()
	})
	if got := readStable(t, fs[3].out, "app", "app.conf"); got != "v2" {
		t.Errorf("the late node shows %q", got)
	}
	st := srv.Fleet()[0]
	if len(st.Behind) != 1 || st.Behind[0] != "n2" {
		t.Errorf("status: %s", st.Summary())
	}
	for _, r := range st.Rows {
		if r.Node == "n2" && (r.Shown != fleet.Syncing || r.Behind != 1) {
			t.Errorf("n2 row: %+v", r)
		}
	}
	t.Logf("after the barrier timeout: %s", st.Summary())
}

// zsend --barrier killed (SIGKILL) while followers wait for SWITCH, and
// restarted: the followers reconnect, report staged again, and the new
// process switches them together.
func TestBarrierServerKilledMidRolloutCLI(t *testing.T) {
	base := t.TempDir()
	src, state := filepath.Join(base, "app"), filepath.Join(base, "state")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	args := []string{"--state-dir", state, "--barrier", "--barrier-timeout", "8s", src}
	zs := startZsendFleet(t, append([]string{"-b", "tcp://127.0.0.1:0"}, args...)...)
	var fs []*follower
	for i := 0; i < 3; i++ {
		fc := mirror.FollowConfig{Receiver: fastRecv(zs.ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%d", i)}
		if i == 0 {
			fc.Check = `[ "$ZSND_SEQ" = 1 ] || sleep 2`
		}
		fs = append(fs, startFollower(t, fc))
	}
	for _, f := range fs {
		waitUntil(t, 20*time.Second, "v1", func() (bool, string) { return readStable(t, f.out, "app", "app.conf") == "v1", "" })
	}
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	zs.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 20*time.Second, "two nodes staged", func() (bool, string) {
		_, a := stagedAt(fs[1], 2)
		_, b := stagedAt(fs[2], 2)
		return a && b, ""
	})
	zs.cmd.Process.Kill()
	<-zs.done
	for i, f := range fs {
		if got := readStable(t, f.out, "app", "app.conf"); got != "v1" {
			t.Fatalf("node %d switched to %q before any SWITCH", i, got)
		}
	}
	startZsendFleet(t, append([]string{"-b", zs.ep}, args...)...)
	for i, f := range fs {
		// The stable path is renamed before the follower's "switched"
		// event (which follows the prune): wait for both, or the event
		// of the last node to switch may not be there yet.
		waitUntil(t, 30*time.Second, fmt.Sprintf("node %d on v2, its switch reported", i), func() (bool, string) {
			f.mu.Lock()
			reported := false
			for _, e := range f.events {
				reported = reported || (e.Kind == "switched" && e.Seq >= 2)
			}
			f.mu.Unlock()
			return readStable(t, f.out, "app", "app.conf") == "v2" && reported, ""
		})
	}
	var first, last time.Time
	for i, f := range fs {
		// The switch away from v1 (to v2, or to a later sequence of the
		// same content should the restarted server have published one).
		var ts []time.Time
		f.mu.Lock()
		for _, e := range f.events {
			if e.Kind == "switched" && e.Seq >= 2 {
				ts = append(ts, e.Time)
			}
		}
		f.mu.Unlock()
		if len(ts) == 0 {
			t.Fatalf("node %d never switched away from v1", i)
		}
		if first.IsZero() || ts[0].Before(first) {
			first = ts[0]
		}
		if ts[0].After(last) {
			last = ts[0]
		}
	}
	t.Logf("switch spread after the restart: %v", last.Sub(first))
}

// TestSwitchSpread50 measures the spread between the first and the last
// of 50 followers' switches, with and without --barrier (a measurement,
// not an assertion: run with ZSND_SPREAD=1).
func TestSwitchSpread50(t *testing.T) {
	if os.Getenv("ZSND_SPREAD") == "" {
		t.Skip("measurement; set ZSND_SPREAD=1")
	}
	for _, withBarrier := range []bool{false, true} {
		src := filepath.Join(t.TempDir(), "app")
		writeFile(t, filepath.Join(src, "app.conf"), "v1")
		cfg := fastFleet(src)
		cfg.Barrier, cfg.BarrierTimeout = withBarrier, 40*time.Second
		cfg.MaxSessions = 1024
		ep, srv := publishingServer(t, cfg)
		var fs []*follower
		for i := 0; i < 50; i++ {
			fs = append(fs, startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%02d", i)}))
		}
		waitUntil(t, 60*time.Second, "50 nodes on v1", converged(srv, "app", 1, 50))
		time.Sleep(time.Duration(cfg.BarrierTimeout / 4)) // past the barrier's start grace
		for v := 2; v <= 4; v++ {
			writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
			publishNow(t, srv)
			waitUntil(t, 60*time.Second, "50 nodes", converged(srv, "app", uint64(v), 50))
			var first, last time.Time
			for _, f := range fs {
				ts := switchTimes(f, uint64(v))
				if len(ts) != 1 {
					t.Fatalf("switched %d times", len(ts))
				}
				if first.IsZero() || ts[0].Before(first) {
					first = ts[0]
				}
				if ts[0].After(last) {
					last = ts[0]
				}
			}
			t.Logf("barrier=%v v%d: spread of 50 switches %v", withBarrier, v, last.Sub(first))
		}
	}
}

// --quorum N: the switch goes out once N live followers have staged,
// without waiting for the others or the timeout.
func TestBarrierQuorum(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Barrier, cfg.Quorum, cfg.BarrierTimeout = true, 2, 30*time.Second
	ep, srv := publishingServer(t, cfg)
	var fs []*follower
	for i := 0; i < 3; i++ {
		fc := mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%d", i)}
		if i == 2 {
			fc.Check, fc.HookTimeout = `[ "$ZSND_SEQ" = 1 ] || sleep 60`, 60*time.Second
		}
		fs = append(fs, startFollower(t, fc))
	}
	waitUntil(t, 20*time.Second, "3 nodes on v1", converged(srv, "app", 1, 3))
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	waitUntil(t, 15*time.Second, "the quorum on v2, well before the 30 s timeout", func() (bool, string) {
		st := srv.Fleet()[0]
		return st.OnLatest == 2, st.Summary()
	})
	if got := readStable(t, fs[2].out, "app", "app.conf"); got != "v1" {
		t.Errorf("the node outside the quorum shows %q", got)
	}
}

// TestPropagation50 measures, with zsend --watch and 50 followers in this
// process, the time from a file's write at the source to the last
// follower's switch, over 20 changes (a measurement: ZSND_SPREAD=1).
func TestPropagation50(t *testing.T) {
	if os.Getenv("ZSND_SPREAD") == "" {
		t.Skip("measurement; set ZSND_SPREAD=1")
	}
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	for i := 0; i < 1000; i++ {
		writeFile(t, filepath.Join(src, "d", fmt.Sprintf("%03d", i/100), fmt.Sprintf("%d.conf", i)), fmt.Sprintf("file %d", i))
	}
	cfg := fastFleet(src)
	cfg.Watch, cfg.MaxSessions = true, 1024
	ep, srv := publishingServer(t, cfg)
	var fs []*follower
	for i := 0; i < 50; i++ {
		fs = append(fs, startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%02d", i)}))
	}
	waitUntil(t, 120*time.Second, "50 nodes on v1", converged(srv, "app", 1, 50))
	var lat, pub []time.Duration
	for c := 2; c <= 21; c++ {
		seq := srv.Trees()[0].Seq
		wrote := time.Now()
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", c))
		waitUntil(t, 60*time.Second, "published", func() (bool, string) { return srv.Trees()[0].Seq > seq, "" })
		pub = append(pub, time.Since(wrote))
		seq = srv.Trees()[0].Seq
		waitUntil(t, 60*time.Second, "50 nodes", converged(srv, "app", seq, 50))
		var last time.Time
		for _, f := range fs {
			for _, ts := range switchTimes(f, seq) {
				if ts.After(last) {
					last = ts
				}
			}
		}
		lat = append(lat, last.Sub(wrote))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(pub, func(i, j int) bool { return pub[i] < pub[j] })
	t.Logf("write -> published (seen by polling): p50 %v, max %v", pub[len(pub)/2], pub[len(pub)-1])
	t.Logf("write -> last of 50 switches, 20 changes, 1,001-file tree: p50 %v, p99 (max of 20) %v, min %v",
		lat[len(lat)/2], lat[len(lat)-1], lat[0])
}
