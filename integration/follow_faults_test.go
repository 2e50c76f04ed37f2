package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/faultproxy"
	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// Connections cut by the fault proxy, and an outage during which new
// connections are refused: the follower reconnects, and the versions
// published meanwhile (announcements it never got) are caught up.
func TestFollowSurvivesCutsAndOutage(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	px, err := faultproxy.New(strings.TrimPrefix(ep, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv("tcp://" + px.Addr()), Trees: []string{"app"}, Node: "n1"})
	waitUntil(t, 20*time.Second, "on v1", converged(srv, "app", 1, 1))
	for v := 2; v <= 4; v++ {
		px.Cut()
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
		publishNow(t, srv)
		waitUntil(t, 20*time.Second, fmt.Sprintf("on v%d after a cut", v), converged(srv, "app", uint64(v), 1))
	}
	// An outage: cut, refuse every connection, publish twice, come back.
	px.SetRefuse(true)
	px.Cut()
	for v := 5; v <= 6; v++ {
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
		publishNow(t, srv)
	}
	time.Sleep(1500 * time.Millisecond) // several reconnect attempts fail
	if got := readStable(t, f.out, "app", "app.conf"); got != "v4" {
		t.Fatalf("during the outage the node shows %q, want v4", got)
	}
	px.SetRefuse(false)
	waitUntil(t, 20*time.Second, "on v6 after the outage", converged(srv, "app", 6, 1))
	if got := readStable(t, f.out, "app", "app.conf"); got != "v6" {
		t.Fatalf("after the outage the node shows %q", got)
	}
	if f.count("disconnected") < 4 {
		t.Errorf("%d disconnections seen, want at least 4", f.count("disconnected"))
	}
}

// A follower offline while 100 versions are published goes straight to
// the latest: one switch, no intermediate version fetched.
func TestFollowOffline100Versions(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	writeFile(t, filepath.Join(src, "static.dat"), strings.Repeat("x", 1<<16))
	ep, srv := publishingServer(t, fastFleet(src))
	out := t.TempDir()
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "n1", Out: out})
	waitUntil(t, 20*time.Second, "on v1", converged(srv, "app", 1, 1))
	f.stop()
	for v := 2; v <= 101; v++ {
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
		publishNow(t, srv)
	}
	f2 := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "n1", Out: out})
	waitUntil(t, 20*time.Second, "on v101", converged(srv, "app", 101, 1))
	if got := readStable(t, out, "app", "app.conf"); got != "v101" {
		t.Fatalf("shows %q", got)
	}
	if n := f2.count("switched"); n != 1 {
		t.Fatalf("%d switches after coming back, want 1 (straight to the latest)", n)
	}
}

// --check failure: no switch, state failed with the hook's output; the
// version is not retried; the next version (check passing) is taken.
// --exec failure without rollback: the version stays, state failed;
// with --rollback-on-failure: back to the previous version, and the hook
// runs again for it (phase rollback).
func TestFollowHookFailures(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "good 1")
	ep, srv := publishingServer(t, fastFleet(src))
	check := `grep -q good "$ZSND_PATH/app.conf" || { echo "bad config in $ZSND_PATH"; exit 3; }`
	exec := `echo "$ZSND_PHASE $ZSND_SEQ" >> hook.log; grep -q good app/app.conf`
	chk := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "check", Check: check})
	ex := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "exec", Exec: exec})
	rb := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "rollback", Exec: exec, RollbackOnFailure: true})
	waitUntil(t, 20*time.Second, "3 nodes on v1", converged(srv, "app", 1, 3))

	writeFile(t, filepath.Join(src, "app.conf"), "bad 2")
	publishNow(t, srv)
	rows := func() map[string]fleet.Row {
		m := map[string]fleet.Row{}
		for _, st := range srv.Fleet() {
			for _, r := range st.Rows {
				m[r.Node] = r
			}
		}
		return m
	}
	waitUntil(t, 20*time.Second, "every node failed on v2", func() (bool, string) {
		m := rows()
		n := 0
		for _, r := range m {
			if r.State == fleet.Failed {
				n++
			}
		}
		return n == 3, fmt.Sprint(m)
	})
	m := rows()
	if r := m["check"]; r.Seq != 1 || r.Hook == nil || r.Hook.Name != "check" || r.Hook.Exit != 3 || !strings.Contains(r.Hook.Output, "bad config") {
		t.Errorf("check node: %+v hook %+v", r, r.Hook)
	}
	if got := readStable(t, chk.out, "app", "app.conf"); got != "good 1" {
		t.Errorf("check node switched to %q", got)
	}
	if r := m["exec"]; r.Seq != 2 || r.Hook == nil || r.Hook.Name != "exec" || r.Hook.OK {
		t.Errorf("exec node: %+v hook %+v", r, r.Hook)
	}
	if got := readStable(t, ex.out, "app", "app.conf"); got != "bad 2" {
		t.Errorf("exec node without rollback shows %q", got)
	}
	if r := m["rollback"]; r.Seq != 1 || !strings.Contains(r.Error, "rolled back to v1") {
		t.Errorf("rollback node: %+v", r)
	}
	if got := readStable(t, rb.out, "app", "app.conf"); got != "good 1" {
		t.Errorf("rollback node shows %q", got)
	}
	waitUntil(t, 5*time.Second, "rollback hook ran", func() (bool, string) {
		b := readStable(t, rb.out, "", "hook.log")
		return b == "exec 1\nexec 2\nrollback 1\n", b
	})
	// The deploy gate says failed.
	if v := srv.FleetGate(); v != fleet.HookFailed {
		t.Errorf("gate %v, want HookFailed", v)
	}
	// The failed version is not retried, even across a reconnect.
	time.Sleep(time.Second)
	if n := chk.countSeq("hook", 2); n != 1 {
		t.Errorf("check ran %d times for the failing version, want 1", n)
	}
	// A good version heals everybody.
	writeFile(t, filepath.Join(src, "app.conf"), "good 3")
	publishNow(t, srv)
	waitUntil(t, 20*time.Second, "3 nodes on v3", converged(srv, "app", 3, 3))
	if v := srv.FleetGate(); v != fleet.Converged {
		t.Errorf("gate %v, want Converged", v)
	}
}

// Reports a hostile or confused client can send: a tree never published
// is refused (404) and adds nothing; another node's name overwrites that
// node's row (without CURVE, names are not authenticated: the status
// shows the last report); the table never holds more than MaxNodes nodes
// (429 beyond, while none is lost).
func TestFleetReportsHostile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Fleet.MaxNodes = 5
	ep, srv := publishingServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc := fastRecv(ep)
	rc.OutputDir = t.TempDir()
	id := srv.Trees()[0].ID
	good := protocol.Report{Node: "web1", Tree: "app", State: protocol.StateSwitched, Seq: 1, Version: protocol.Hash(id)}
	if err := receiver.Report(ctx, rc, good); err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.Tree = "secrets"
	err := receiver.Report(ctx, rc, bad)
	if !errors.Is(err, receiver.ErrNotFound) {
		t.Fatalf("report of an unknown tree: %v, want 404", err)
	}
	st := srv.Fleet()
	if len(st) != 1 || st[0].Tree != "app" || len(st[0].Rows) != 1 {
		t.Fatalf("table after an unknown tree: %+v", st)
	}
	// Another client, web1's name: the row shows what it said.
	imp := good
	imp.State, imp.Error = protocol.StateFailed, "impostor"
	if err := receiver.Report(ctx, rc, imp); err != nil {
		t.Fatal(err)
	}
	if r := srv.Fleet()[0].Rows[0]; r.Node != "web1" || r.State != fleet.Failed || r.Error != "impostor" {
		t.Fatalf("row after another client's report: %+v", r)
	}
	// Bounded: 5 nodes, then 429.
	var refused int
	for i := 2; i <= 20; i++ {
		r := good
		r.Node = fmt.Sprintf("web%d", i)
		if err := receiver.Report(ctx, rc, r); err != nil {
			var re *receiver.RemoteError
			if !errors.As(err, &re) || re.Code != protocol.CodeTooMany {
				t.Fatalf("report %d: %v", i, err)
			}
			refused++
		}
	}
	if n := len(srv.Fleet()[0].Rows); n != 5 || refused != 15 {
		t.Fatalf("%d rows, %d refused; want 5 and 15", n, refused)
	}
	// Oversized fields never reach the table: the decoder refuses them
	// (the session is dropped as malformed).
	huge := good
	huge.Node = strings.Repeat("n", protocol.MaxNodeLen+1)
	if err := receiver.Report(ctx, rc, huge); err == nil {
		t.Fatal("an over-long node name was accepted")
	}
	if n := len(srv.Fleet()[0].Rows); n != 5 {
		t.Fatalf("%d rows after an over-long name", n)
	}
}

// Descriptors, goroutines and heap stay flat over hundreds of versions
// (ZSND_VERSIONS=10000 runs the 10,000; BENCHMARKS.md has that
// run's figures).
func TestFollowFlatOverManyVersions(t *testing.T) {
	last := 220
	if s := os.Getenv("ZSND_VERSIONS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 40 {
			t.Fatalf("ZSND_VERSIONS=%q: want a number of versions, at least 40", s)
		}
		last = n
	}
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	for i := 0; i < 20; i++ {
		writeFile(t, filepath.Join(src, "d", fmt.Sprintf("%d", i)), strings.Repeat("y", 1000))
	}
	cfg := fastFleet(src)
	cfg.KeepVersions = 4
	ep, srv := publishingServer(t, cfg)
	startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "n1"})
	step := func(v int) {
		writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
		publishNow(t, srv)
		waitUntil(t, 20*time.Second, fmt.Sprintf("on v%d", v), converged(srv, "app", uint64(v), 1))
	}
	for v := 2; v <= 20; v++ {
		step(v)
	}
	settle := func() (int, int, uint64) {
		time.Sleep(300 * time.Millisecond)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return openFDs(t), runtime.NumGoroutine(), ms.HeapInuse
	}
	fd0, g0, h0 := settle()
	start := time.Now()
	for v := 21; v <= last; v++ {
		step(v)
		if v%1000 == 0 {
			fd, g, h := settle()
			t.Logf("after %d versions (%v): %d fds, %d goroutines, %d KiB heap", v, time.Since(start).Round(time.Second), fd, g, h>>10)
		}
	}
	fd1, g1, h1 := settle()
	t.Logf("after 20 versions: %d fds, %d goroutines, %d KiB heap; after %d: %d, %d, %d KiB", fd0, g0, h0>>10, last, fd1, g1, h1>>10)
	if fd1 > fd0+8 || g1 > g0+20 || h1 > h0+8<<20 {
		t.Errorf("not flat: fds %d -> %d, goroutines %d -> %d, heap %d -> %d KiB", fd0, fd1, g0, g1, h0>>10, h1>>10)
	}
}

// A hook that hangs is killed (with its children) after --hook-timeout
// and reported failed with exit -1.
func TestFollowHookTimeout(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "n1",
		Check: `echo started; sleep 60 & sleep 60`, HookTimeout: 500 * time.Millisecond})
	waitUntil(t, 20*time.Second, "failed check", func() (bool, string) {
		for _, st := range srv.Fleet() {
			for _, r := range st.Rows {
				if r.State == fleet.Failed && r.Hook != nil {
					return true, ""
				}
			}
		}
		return false, fmt.Sprint(srv.Fleet())
	})
	r := srv.Fleet()[0].Rows[0]
	if r.Hook.Name != "check" || r.Hook.Exit != -1 || r.Hook.OK || !strings.Contains(r.Hook.Output, "started") ||
		r.Hook.Duration > 20*time.Second || !strings.Contains(r.Error, "timed out") {
		t.Fatalf("row %+v hook %+v", r, r.Hook)
	}
	if _, err := os.Lstat(filepath.Join(f.out, "app")); err == nil {
		t.Fatal("switched although the check timed out")
	}
}

// A switch made behind the follower's back (zrecv --rollback by hand) is
// noticed within the report interval: the follower goes back to the
// latest version and the status never keeps showing a version the node
// does not run.
func TestFollowUndoesHandRollback(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "n1"})
	waitUntil(t, 20*time.Second, "v1", converged(srv, "app", 1, 1))
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	waitUntil(t, 20*time.Second, "v2", converged(srv, "app", 2, 1))
	var dir string
	var err error
	for i := 0; i < 50; i++ { // the follower may hold the tree's lock for a moment
		if dir, err = mirror.Rollback(f.out, "app"); !errors.Is(err, mirror.ErrLocked) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rolled back by hand to %s", filepath.Base(dir))
	waitUntil(t, 10*time.Second, "back on v2", func() (bool, string) {
		got := readStable(t, f.out, "app", "app.conf")
		return got == "v2", got
	})
	waitUntil(t, 10*time.Second, "reported on v2", converged(srv, "app", 2, 1))
}
