package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/relay"
	"github.com/zsend/zsend/sender"
)

// testRelay is a relay (package relay) running until the test ends.
type testRelay struct {
	ep     string
	out    string
	srv    *sender.Server
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	events []sender.Event
}

// startTreeRelay runs a relay following parent (one endpoint or a list) for
// trees, serving on a fresh loopback port.
func startTreeRelay(t *testing.T, parent, node string, trees ...string) *testRelay {
	t.Helper()
	return startTreeRelayWith(t, parent, node, trees, nil)
}

// startTreeRelayWith is startTreeRelay with edit applied to the relay's
// configuration (CURVE keys, say) before it starts.
func startTreeRelayWith(t *testing.T, parent, node string, trees []string, edit func(*relay.Config)) *testRelay {
	t.Helper()
	r := &testRelay{out: t.TempDir(), done: make(chan struct{})}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	scfg := sender.Config{Endpoint: "tcp://127.0.0.1:0", Heartbeat: 200 * time.Millisecond, PeerTimeout: 2 * time.Second,
		Fleet: sender.FleetConfig{LostAfter: 3 * time.Second},
		Events: func(e sender.Event) {
			if e.Kind == "error" || e.Kind == "published" || e.Kind == "refused" {
				r.mu.Lock()
				r.events = append(r.events, e)
				r.mu.Unlock()
			}
		}}
	fcfg := mirror.FollowConfig{Receiver: fastRecv(parent), Trees: trees, Out: r.out, Node: node,
		MaxBackoff: 500 * time.Millisecond, ReportEvery: time.Second}
	rcfg := relay.Config{Follow: fcfg, Serve: scfg, Listening: func(s *sender.Server) {
		r.srv, r.ep = s, s.Endpoint()
		close(ready)
	}}
	if edit != nil {
		edit(&rcfg)
	}
	go func() {
		defer close(r.done)
		err := relay.Run(ctx, rcfg)
		if err != nil {
			t.Errorf("relay %s: %v", node, err)
		}
	}()
	select {
	case <-ready:
	case <-r.done:
		t.Fatalf("relay %s did not start", node)
	case <-time.After(10 * time.Second):
		t.Fatalf("relay %s not listening within 10s", node)
	}
	t.Cleanup(r.stop)
	return r
}

func (r *testRelay) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		panic("relay did not stop within 20s")
	}
}

func (r *testRelay) eventCount(kind, substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.Kind == kind && strings.Contains(e.Message, substr) {
			n++
		}
	}
	return n
}

// nodeOn: the stable path of tree under out shows exactly src's content.
func nodeOn(t *testing.T, src, out, tree string) func() (bool, string) {
	want := findListing(t, src)
	return func() (bool, string) {
		if _, err := os.Stat(filepath.Join(out, tree)); err != nil {
			return false, err.Error()
		}
		got := findListing(t, filepath.Join(out, tree))
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return true, ""
		}
		return false, fmt.Sprintf("%d entries, want %d", len(got), len(want))
	}
}

// Root -> relay -> relay -> leaf: every new version reaches the leaf, byte
// for byte (BLAKE3 of every file, modes, mtimes, symlinks), through two
// relays that each serve what they have verified; each server's fleet
// table shows the nodes below it (relays forward their tables upward).
func TestRelayThreeLevels(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	os.MkdirAll(filepath.Join(src, "data"), 0o755)
	writeRandom(t, filepath.Join(src, "data"), "blob", 3<<20+17)
	os.Symlink("app.conf", filepath.Join(src, "current"))
	ep, root := publishingServer(t, fastFleet(src))
	r1 := startTreeRelay(t, ep, "relay1", "app")
	r2 := startTreeRelay(t, r1.ep, "relay2", "app")
	leaf := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(r2.ep), Trees: []string{"app"}, Node: "leaf"})
	t.Cleanup(func() {
		if t.Failed() {
			leaf.mu.Lock()
			for _, e := range leaf.events {
				t.Logf("leaf: %s %d %v %s", e.Kind, e.Seq, e.Err, e.Message)
			}
			leaf.mu.Unlock()
		}
	})

	for v := 1; v <= 3; v++ {
		if v > 1 {
			writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
			writeRandom(t, filepath.Join(src, "data"), fmt.Sprintf("new%d", v), 200<<10)
			publishNow(t, root)
		}
		waitUntil(t, 30*time.Second, fmt.Sprintf("leaf on v%d", v), nodeOn(t, src, leaf.out, "app"))
		for _, out := range []string{r1.out, r2.out} {
			if ok, why := nodeOn(t, src, out, "app")(); !ok {
				// A relay offers a version before its own switch; it
				// shows it right after.
				waitUntil(t, 10*time.Second, "relay on v"+fmt.Sprint(v), nodeOn(t, src, out, "app"))
				_ = why
			}
		}
		// Relays forward their tables: each table holds the subtree below.
		waitUntil(t, 10*time.Second, "root table: relay1, relay2, leaf on v"+fmt.Sprint(v), converged(root, "app", uint64(v), 3))
		waitUntil(t, 10*time.Second, "relay1 table: relay2, leaf", converged(r1.srv, "app", uint64(v), 2))
		waitUntil(t, 10*time.Second, "relay2 table: leaf", converged(r2.srv, "app", uint64(v), 1))
	}
	// The relays announce the root's sequence numbers and ids.
	for _, r := range []*testRelay{r1, r2} {
		ti := r.srv.Trees()
		if len(ti) != 1 || ti[0].Seq != 3 || ti[0].ID != root.Trees()[0].ID {
			t.Fatalf("relay serves %+v, root %+v", ti, root.Trees())
		}
	}
}

// A relay whose copy of a file was changed on disk after it verified it
// never serves it: the child gets an error for that file, and never
// switches to anything but a verified version.
func TestRelayNeverServesAlteredCopy(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	writeRandom(t, src, "big.bin", 2<<20)
	ep, _ := publishingServer(t, fastFleet(src))
	r := startTreeRelay(t, ep, "relay1", "app")
	waitUntil(t, 20*time.Second, "relay on v1", nodeOn(t, src, r.out, "app"))

	// Alter the relay's copies in place, keeping sizes: a small file
	// (sent whole) and a large one (sent in chunks).
	for _, name := range []string{"app.conf", "big.bin"} {
		p := filepath.Join(r.out, "app", name)
		os.Chmod(p, 0o644)
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("X"), 1); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}

	out := t.TempDir()
	rc := fastRecv(r.ep)
	rc.Timeout = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := mirror.Sync(ctx, mirror.Config{Receiver: rc, Out: out, Tree: "app"})
	if err == nil {
		t.Fatal("a sync from a relay with altered copies succeeded")
	}
	if _, serr := os.Lstat(filepath.Join(out, "app")); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("the child shows something after a failed sync: %v (sync error %v)", serr, err)
	}
	if n := r.eventCount("error", "does not match the root's manifest"); n < 1 {
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("relay reported no refusal of its altered copies (%d events; sync error %v; events %+v)", n, err, r.events)
	}
	// No partial file of the altered content landed outside the staging
	// area either.
	if got := findListing(t, out); len(got) > 0 {
		for _, l := range got {
			if !strings.HasPrefix(l, ".zsnd") && !strings.HasPrefix(l, " d ") {
				t.Errorf("unexpected entry in the child's output: %s", l)
			}
		}
	}
}
