package integration

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/internal/faultproxy"
	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Failover (README "Failover"): an ENDPOINT may be a comma-separated list
// of servers of the same content; a receiver moves to the next one when
// its server is gone, lost, or (follow mode) lying.

// deadEndpoint is a loopback port nothing listens on (connection refused).
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + l.Addr().String()
	l.Close()
	return ep
}

// blackHole accepts connections and never says a word (a hung server):
// only the handshake timeout gets a receiver past it.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "tcp://" + l.Addr().String()
}

// stoppable is an in-process server the test can kill before its end.
type stoppable struct {
	ep     string
	srv    *sender.Server
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startStoppable(t *testing.T, cfg sender.Config) *stoppable {
	t.Helper()
	if cfg.Endpoint == "" {
		cfg.Endpoint = "tcp://127.0.0.1:0"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := sender.Listen(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("listen: %v", err)
	}
	s := &stoppable{ep: srv.Endpoint(), srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *stoppable) stop(t *testing.T) {
	s.once.Do(func() {
		s.cancel()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop within 10s")
		}
	})
}

// reconnects collects the receiver's reconnect events.
type reconnects struct {
	mu     sync.Mutex
	events []receiver.Event
}

func (r *reconnects) add(e receiver.Event) {
	if e.Kind == receiver.EventReconnect {
		r.mu.Lock()
		r.events = append(r.events, e)
		r.mu.Unlock()
	}
}

func (r *reconnects) list() []receiver.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receiver.Event(nil), r.events...)
}

// A list whose first endpoint is dead (refused, or a black hole that
// never completes the handshake) is served by the second, with no backoff
// in between; for a file fetch, a LIST and a tree sync, whose sessions
// after the first start at the endpoint found alive.
func TestFailoverFirstEndpointDead(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	big := writeRandom(t, src, "big.bin", 3<<20+17)
	live := startStoppable(t, sender.Config{Paths: []string{src}, Heartbeat: 200 * time.Millisecond})
	for _, first := range []struct{ name, ep string }{{"refused", deadEndpoint(t)}, {"black hole", blackHole(t)}} {
		t.Run(first.name, func(t *testing.T) {
			list := first.ep + "," + live.ep
			rc := receiver.Config{Endpoint: list, Timeout: 10 * time.Second, Heartbeat: 200 * time.Millisecond, PeerTimeout: time.Second}
			checkMoved := func(what string, evs []receiver.Event) {
				t.Helper()
				if len(evs) != 1 || evs[0].Endpoint != first.ep || evs[0].RetryIn != 0 || !strings.Contains(evs[0].Message, "trying "+live.ep+" next") {
					t.Errorf("%s: reconnect events %+v, want one for %s with no wait, naming the next endpoint", what, evs, first.ep)
				}
			}

			// File fetch.
			var rec reconnects
			cfg := rc
			cfg.OutputDir, cfg.Progress = t.TempDir(), rec.add
			res, err := fetch(t, cfg, "app/big.bin")
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			sameFile(t, big, res[0].Path)
			checkMoved("fetch", rec.list())

			// LIST.
			var lrec reconnects
			cfg = rc
			cfg.OutputDir, cfg.Progress = t.TempDir(), lrec.add
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			trees, err := receiver.List(ctx, cfg, "app")
			if err != nil || len(trees) != 1 || trees[0].Name != "app" {
				t.Fatalf("list: %v %v", trees, err)
			}
			checkMoved("list", lrec.list())

			// Tree sync: the dead endpoint is tried once, by the LIST; the
			// manifest and file fetches start at the live one.
			out := t.TempDir()
			var notes []string
			var mu sync.Mutex
			res2, err := mirror.Sync(ctx, mirror.Config{Receiver: rc, Out: out, Tree: "app", Events: func(e mirror.Event) {
				if e.Kind == mirror.EventNote {
					mu.Lock()
					notes = append(notes, e.Message)
					mu.Unlock()
				}
			}})
			if err != nil {
				t.Fatalf("sync: %v", err)
			}
			sameFile(t, big, filepath.Join(res2.Stable, "big.bin"))
			mu.Lock()
			defer mu.Unlock()
			if n := strings.Count(strings.Join(notes, "\n"), first.ep); n != 1 {
				t.Errorf("the dead endpoint was tried %d times by one sync, want 1: %q", n, notes)
			}
		})
	}
}

// Every endpoint of the list dead: ErrUnreachable within Timeout, the
// backoff waited once per round.
func TestFailoverAllDead(t *testing.T) {
	a, b := deadEndpoint(t), deadEndpoint(t)
	var rec reconnects
	_, err := fetch(t, receiver.Config{Endpoint: a + "," + b, OutputDir: t.TempDir(), Timeout: 2 * time.Second, PeerTimeout: time.Second,
		Progress: rec.add}, "f")
	if !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	evs := rec.list()
	if len(evs) < 4 {
		t.Fatalf("only %d attempts in 2s", len(evs))
	}
	for i, e := range evs {
		want := a
		if i%2 == 1 {
			want = b
		}
		if e.Endpoint != want {
			t.Fatalf("attempt %d at %s, want %s (in turn)", i+1, e.Endpoint, want)
		}
		if i%2 == 0 && e.RetryIn != 0 {
			t.Errorf("attempt %d: waited %v in the middle of a round", i+1, e.RetryIn)
		}
		if i == 1 && e.RetryIn == 0 {
			t.Errorf("no backoff after the first round")
		}
	}
}

// CURVE: a server that does not hold the pinned key is dropped and the
// next endpoint serves; keys may be given per endpoint; every endpoint
// failing is ErrServerKey (exit 8), naming each.
func TestFailoverServerKey(t *testing.T) {
	certA, certB, other, client := newCert(t), newCert(t), newCert(t), newCert(t)
	src := t.TempDir()
	p := writeRandom(t, src, "f.bin", 200<<10)
	a := startStoppable(t, sender.Config{Paths: []string{p}, Curve: curveServer(certA)})
	b := startStoppable(t, sender.Config{Paths: []string{p}, Curve: curveServer(certB)})
	list := a.ep + "," + b.ep
	cases := []struct {
		name  string
		curve *receiver.CurveClient
		err   error
	}{
		{"B's key for both: A is dropped", curveClient(certB, client), nil},
		{"a key per endpoint", &receiver.CurveClient{ServerKeys: [][32]byte{certA.Public, certB.Public}, PublicKey: client.Public, SecretKey: client.Secret}, nil},
		{"no endpoint holds the key", curveClient(other, client), receiver.ErrServerKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := fetch(t, receiver.Config{Endpoint: list, OutputDir: t.TempDir(), PeerTimeout: 2 * time.Second, Curve: c.curve}, "f.bin")
			if c.err == nil {
				if err != nil {
					t.Fatalf("fetch: %v", err)
				}
				sameFile(t, p, res[0].Path)
				return
			}
			if !errors.Is(err, c.err) || errors.Is(err, receiver.ErrUnreachable) {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if !strings.Contains(err.Error(), a.ep) || !strings.Contains(err.Error(), b.ep) {
				t.Errorf("error %q does not name both endpoints", err)
			}
		})
	}
	_, err := fetch(t, receiver.Config{Endpoint: list, OutputDir: t.TempDir(),
		Curve: &receiver.CurveClient{ServerKeys: [][32]byte{certA.Public}}}, "f.bin")
	if err == nil || !strings.Contains(err.Error(), "1 server keys for 2 endpoints") {
		t.Errorf("one key of a per-endpoint list: %v", err)
	}

	// zrecv: exit 8 when no server holds the key, 0 with a key per endpoint.
	out := t.TempDir()
	if code, _, stderr := zrecv(t, "-q", "-o", out, "--server-key", other.Public.String(), list, "f.bin"); code != 8 {
		t.Errorf("no server holds the key: exit %d, want 8 (stderr %q)", code, stderr)
	}
	if code, _, stderr := zrecv(t, "-q", "-o", out, "--server-key", certA.Public.String()+","+certB.Public.String(), list, "f.bin"); code != 0 {
		t.Errorf("a key per endpoint: exit %d (stderr %q)", code, stderr)
	}
	sameFile(t, p, filepath.Join(out, "f.bin"))
}

// treeState names what the stable path shows: the BLAKE3 of each file of
// the tree, read from the version directory it resolves to (versions
// never change once switched to, so no switch can make one read mixed).
func treeState(out, tree string, files ...string) (string, bool) {
	dir, err := filepath.EvalSymlinks(filepath.Join(out, tree))
	if err != nil {
		return "", false
	}
	var parts []string
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", false // pruned meanwhile
		}
		parts = append(parts, b3sumBytes(b))
	}
	return strings.Join(parts, "\x00"), true
}

// watchStable samples the stable path until the test ends and records any
// state that is not one of the allowed ones.
func watchStable(t *testing.T, out, tree string, allowed func() map[string]bool, files ...string) *atomic.Value {
	var bad atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if st, ok := treeState(out, tree, files...); ok && !allowed()[st] {
				bad.Store(fmt.Sprintf("%.60q", st))
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		if v := bad.Load(); v != nil {
			t.Errorf("the stable path showed a state never published: %v", v)
		}
	})
	return &bad
}

// A follower on A,B: A dies while the follower syncs a version, and the
// follower re-attaches to B (its "connected" event names B), finishes
// that version from B and follows B's next one; the stable path only
// ever shows complete published versions. A dies either by shutting down
// (its sessions end with BYE) or by falling silent (a proxy in front of
// it holds every byte and refuses new connections: only the peer timeout
// tells).
func TestFollowFailoverServerKilled(t *testing.T) {
	t.Run("shut down", func(t *testing.T) { followFailover(t, false) })
	t.Run("silent", func(t *testing.T) { followFailover(t, true) })
}

func followFailover(t *testing.T, silent bool) {
	src := filepath.Join(t.TempDir(), "app")
	content := func(v int) (string, []byte) {
		b := make([]byte, 8<<20)
		for i := range b {
			b[i] = byte(i*v + i>>12)
		}
		return fmt.Sprintf("v%d", v), b
	}
	var mu sync.Mutex
	valid := map[string]bool{}
	publishVersion := func(v int) {
		conf, big := content(v)
		writeFile(t, filepath.Join(src, "app.conf"), conf)
		if err := os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		valid[b3sumBytes([]byte(conf))+"\x00"+b3sumBytes(big)] = true
		mu.Unlock()
	}
	publishVersion(1)
	a := startStoppable(t, fastFleet(src))
	b := startStoppable(t, fastFleet(src))
	aEP, kill := a.ep, func() { a.stop(t) }
	if silent {
		px, err := faultproxy.New(strings.TrimPrefix(a.ep, "tcp://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { px.Close() })
		aEP = "tcp://" + px.Addr()
		kill = func() { px.SetRefuse(true); px.Stall(true) }
	}
	out := t.TempDir()
	watchStable(t, out, "app", func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(valid)
	}, "app.conf", "big.bin")
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(aEP + "," + b.ep), Trees: []string{"app"}, Out: out, Node: "n1"})
	defer logEventsOnFailure(t, f)
	waitUntil(t, 30*time.Second, "v1 from A", converged(a.srv, "app", 1, 1))
	if got := f.connectedTo(); len(got) == 0 || got[0] != aEP {
		t.Fatalf("connected to %q, want %s first", got, aEP)
	}

	// v2 on both; A announces it and is killed as soon as the follower
	// starts syncing it.
	publishVersion(2)
	publishNow(t, b.srv)
	syncing := f.count("syncing")
	publishNow(t, a.srv)
	waitUntil(t, 20*time.Second, "a sync of v2 started", func() (bool, string) { return f.count("syncing") > syncing, "" })
	kill()
	waitUntil(t, 20*time.Second, "v2 from B", converged(b.srv, "app", 2, 1))
	if got := f.connectedTo(); got[len(got)-1] != b.ep {
		t.Fatalf("connected to %q, want %s last", got, b.ep)
	}
	if !f.has("disconnected", "moving to "+b.ep) {
		t.Errorf("the control session did not move to B at once")
	}
	if got := readStable(t, out, "app", "app.conf"); got != "v2" {
		t.Fatalf("stable path shows %q", got)
	}

	// A back on its endpoint (shut-down case): no fail-back, the follower
	// stays on B. v3 on B only: followed on B.
	if !silent {
		back := fastFleet(src)
		back.Endpoint = a.ep
		startStoppable(t, back)
	}
	publishVersion(3)
	publishNow(t, b.srv)
	waitUntil(t, 20*time.Second, "v3 from B", converged(b.srv, "app", 3, 1))
	_, big := content(3)
	if got := b3(t, filepath.Join(out, "app", "big.bin")); got != b3sumBytes(big) {
		t.Fatalf("big.bin on the stable path is %s, not v3's", got)
	}
	if got := f.connectedTo(); got[len(got)-1] != b.ep {
		t.Fatalf("connected to %q: went back to A", got)
	}
}

func b3sumBytes(b []byte) string {
	h := blake3.Sum256(b)
	return hex.EncodeToString(h[:])
}

// has reports whether an event of kind has a message containing msg.
func (f *follower) has(kind, msg string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.events {
		if e.Kind == kind && strings.Contains(e.Message, msg) {
			return true
		}
	}
	return false
}

func logEventsOnFailure(t *testing.T, f *follower) {
	if !t.Failed() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.events {
		t.Logf("%s %s seq=%d %s err=%v", e.Time.Format("15:04:05.000"), e.Kind, e.Seq, e.Message, e.Err)
	}
}

// connectedTo lists the endpoints of the follower's "connected" events.
func (f *follower) connectedTo() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var eps []string
	for _, e := range f.events {
		if e.Kind == "connected" {
			eps = append(eps, e.Message)
		}
	}
	return eps
}

// A lying first endpoint (it announces the honest version id but serves
// altered file content, or a manifest that is not the version's): the
// follower rejects the data by hash, moves to the honest second endpoint
// and converges there; nothing from the liar is ever shown.
func TestFollowFailoverLyingServer(t *testing.T) {
	t.Run("file content", func(t *testing.T) { followLiar(t, false) })
	t.Run("manifest", func(t *testing.T) { followLiar(t, true) })
}

func followLiar(t *testing.T, manifest bool) {
	src, liar, honest := liarAndHonest(t, manifest)
	out := t.TempDir()
	watchStable(t, out, "app", func() map[string]bool { return map[string]bool{b3sumBytes([]byte("honest")): true} }, "app.conf")
	rc := fastRecv(liar.Endpoint + "," + honest.Endpoint)
	rc.Restarts = 1
	f := startFollower(t, mirror.FollowConfig{Receiver: rc, Trees: []string{"app"}, Out: out, Node: "n1"})
	defer logEventsOnFailure(t, f)
	waitUntil(t, 30*time.Second, "the honest version", func() (bool, string) {
		return readStable(t, out, "app", "app.conf") == "honest", readStable(t, out, "app", "app.conf")
	})
	if got := b3(t, filepath.Join(out, "app", "sub", "data")); got != b3(t, filepath.Join(src, "sub", "data")) {
		t.Fatalf("sub/data differs from the source")
	}
	waitUntil(t, 10*time.Second, "the control session on the honest server", func() (bool, string) {
		got := f.connectedTo()
		return got[len(got)-1] == honest.Endpoint, fmt.Sprint(got)
	})
}

// zrecv: a file fetch from "dead,live" works (exit 0); a list with a bad
// endpoint is a usage error (exit 2), as is an endpoint listed twice.
func TestFailoverCLI(t *testing.T) {
	src := t.TempDir()
	p := writeRandom(t, src, "f.bin", 1<<20)
	ep, _ := zsendProc(t, p)
	dead := deadEndpoint(t)
	out := t.TempDir()
	code, _, stderr := zrecv(t, "-o", out, "--peer-timeout", "2s", dead+","+ep, "f.bin")
	if code != 0 {
		t.Fatalf("dead,live: exit %d: %s", code, stderr)
	}
	sameFile(t, p, filepath.Join(out, "f.bin"))
	if !strings.Contains(stderr, dead) {
		t.Errorf("stderr does not mention the dead endpoint: %q", stderr)
	}
	for _, c := range []struct{ list, msg string }{
		{"bad-endpoint," + ep, "bad-endpoint"},
		{ep + "," + ep, "listed twice"},
		{ep + ",tcp://127.0.0.1", "missing port"},
	} {
		for _, mode := range [][]string{{"-o", out}, {"--list"}, {"--follow", "-o", out}} {
			args := append(append([]string{}, mode...), c.list, "f.bin")
			code, _, stderr := zrecv(t, args...)
			if code != 2 || !strings.Contains(stderr, c.msg) {
				t.Errorf("%q: exit %d, want 2 mentioning %q (stderr %q)", args, code, c.msg, stderr)
			}
		}
	}
	code, _, stderr = zrecv(t, "-o", out, "--server-key", strings.Repeat("a", 40)+","+strings.Repeat("b", 40)+","+strings.Repeat("c", 40), dead+","+ep, "f.bin")
	if code != 2 || !strings.Contains(stderr, "3 keys for 2 endpoints") {
		t.Errorf("3 keys for 2 endpoints: exit %d (stderr %q)", code, stderr)
	}
}

func liarAndHonest(t *testing.T, manifest bool) (string, *treetest.Server, *treetest.Server) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "honest")
	writeFile(t, filepath.Join(src, "sub", "data"), strings.Repeat("d", 100<<10))
	m, contents, err := treetest.Scan(src)
	if err != nil {
		t.Fatal(err)
	}
	liar, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(liar.Close)
	honest, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(honest.Close)
	good := treetest.NewVersion(1, m, contents)
	evil := treetest.NewVersion(1, m, contents)
	if evil.ID != good.ID {
		t.Fatal("the two versions differ")
	}
	if manifest {
		// The entry of app.conf names the hash of the altered content.
		lie, _, err := treetest.Scan(src)
		if err != nil {
			t.Fatal(err)
		}
		for i := range lie.Entries {
			if lie.Entries[i].Path == "app.conf" {
				lie.Entries[i].Hash = blake3.Sum256([]byte("EVIL!!"))
			}
		}
		evil.Manifest = lie.Encode()
	}
	evil.Files["app.conf"] = &treetest.File{Content: []byte("EVIL!!"), Mode: good.Files["app.conf"].Mode,
		MtimeNs: good.Files["app.conf"].MtimeNs, Hash: blake3.Sum256([]byte("EVIL!!"))}
	liar.Publish("app", evil)
	honest.Publish("app", good)
	return src, liar, honest
}

// A one-shot tree sync (library and zrecv) from "liar,honest" moves to the
// honest server within the sync and succeeds.
func TestSyncFailoverLyingServer(t *testing.T) {
	for _, manifest := range []bool{false, true} {
		src, liar, honest := liarAndHonest(t, manifest)
		rc := fastRecv(liar.Endpoint + "," + honest.Endpoint)
		rc.Restarts = 1
		fo, err := receiver.NewFailover(rc.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		rc.Failover = fo
		out := t.TempDir()
		var notes []string
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := mirror.Sync(ctx, mirror.Config{Receiver: rc, Out: out, Tree: "app", Events: func(e mirror.Event) {
			if e.Kind == mirror.EventNote && e.Endpoint != "" {
				notes = append(notes, e.Message)
			}
		}})
		cancel()
		if err != nil {
			t.Fatalf("sync (lying manifest %v): %v", manifest, err)
		}
		sameFile(t, filepath.Join(src, "app.conf"), filepath.Join(res.Stable, "app.conf"))
		if fo.Current() != honest.Endpoint {
			t.Errorf("the sync ended on %s, not on the honest server", fo.Current())
		}
		for _, n := range notes {
			if !strings.Contains(n, honest.Endpoint) {
				t.Errorf("failover note %q does not name the honest server", n)
			}
		}
		out2 := t.TempDir()
		if code, _, stderr := zrecv(t, "-q", "-o", out2, liar.Endpoint+","+honest.Endpoint, "app"); code != 0 {
			t.Errorf("zrecv (lying manifest %v): exit %d (stderr %q)", manifest, code, stderr)
		}
		sameFile(t, filepath.Join(src, "app.conf"), filepath.Join(out2, "app", "app.conf"))
	}
}

// The binaries: zrecv --follow on "A,B", two zsend processes publishing
// the same directory; A is killed (SIGKILL) and the follower goes on with
// B, taking the version B publishes next.
func TestFollowFailoverCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	a := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "sa"), src)
	b := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "sb"), src)
	out := filepath.Join(base, "out")
	os.Mkdir(out, 0o755)
	f := startFollowerProc(t, a.ep+","+b.ep, out, "web1")
	stable := func(want string) func() (bool, string) {
		return func() (bool, string) {
			got := readStable(t, out, "app", "app.conf")
			return got == want, got
		}
	}
	waitUntil(t, 30*time.Second, "v1", stable("v1"))
	a.kill()
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	b.cmd.Process.Signal(syscall.SIGHUP)
	waitTree(t, b.ep, "app", 1)
	waitUntil(t, 30*time.Second, "v2 from B", stable("v2"))
	sameFile(t, filepath.Join(src, "app.conf"), filepath.Join(out, "app", "app.conf"))
	if err := f.stop(t); err != nil {
		t.Errorf("follower after SIGTERM: %v\n%s", err, f.log.String())
	}
	if !strings.Contains(f.log.String(), b.ep) {
		t.Errorf("the follower's log never names B:\n%s", f.log.String())
	}
}

// Moving to the next endpoint restarts no clock: two black holes (each
// attempt ends at the handshake timeout) give up with ErrUnreachable once
// Timeout passed without verified data, after a bounded number of
// attempts, not when the caller's context ends.
func TestFailoverKeepsTheTimeoutClock(t *testing.T) {
	a, b := blackHole(t), blackHole(t)
	var rec reconnects
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: a + "," + b, OutputDir: t.TempDir(), Timeout: 2 * time.Second,
		PeerTimeout: 500 * time.Millisecond, Progress: rec.add}, "f")
	if !errors.Is(err, receiver.ErrUnreachable) || ctx.Err() != nil {
		t.Fatalf("error %v (context %v), want ErrUnreachable within Timeout", err, ctx.Err())
	}
	if n := len(rec.list()); n < 2 || n > 8 {
		t.Fatalf("%d attempts, want both endpoints tried and no more than Timeout allows", n)
	}
}

// A file fetch whose first server's data keeps failing BLAKE3 (a proxy
// flips a bit every 64 KiB) moves to the second server once the chunk's
// retry budget is spent there, and the file is complete and verified.
func TestFailoverCorruptFirstServer(t *testing.T) {
	src := t.TempDir()
	p := writeRandom(t, src, "f.bin", 4<<20)
	good := startStoppable(t, sender.Config{Paths: []string{p}})
	px, err := faultproxy.New(strings.TrimPrefix(good.ep, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	px.CorruptDownstream(64<<10, 1<<30)
	var rec reconnects
	var mu sync.Mutex
	var moved []string
	res, err := fetch(t, receiver.Config{Endpoint: "tcp://" + px.Addr() + "," + good.ep, OutputDir: t.TempDir(), Retries: 1,
		PeerTimeout: 2 * time.Second, Progress: func(e receiver.Event) {
			rec.add(e)
			if e.Kind == receiver.EventRestart && strings.Contains(e.Message, "next server") {
				mu.Lock()
				moved = append(moved, e.Message)
				mu.Unlock()
			}
		}}, "f.bin")
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	sameFile(t, p, res[0].Path)
	evs := rec.list()
	if len(evs) == 0 || evs[0].Endpoint != "tcp://"+px.Addr() {
		t.Fatalf("reconnects %+v: the corrupting server was not left", evs)
	}
	t.Logf("moved: %q", moved)
}

// zrecv --follow over CURVE with a key per endpoint: each server is
// pinned to its own key, and the follower moves from A (stopped) to B.
func TestFollowFailoverCurveCLI(t *testing.T) {
	certA, certB := newCert(t), newCert(t)
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ca, cb := fastFleet(src), fastFleet(src)
	ca.Curve, cb.Curve = curveServer(certA), curveServer(certB)
	a, b := startStoppable(t, ca), startStoppable(t, cb)
	out := t.TempDir()
	f := startFollowerProc(t, a.ep+","+b.ep, out, "web1", "--server-key", certA.Public.String()+","+certB.Public.String())
	stable := func(want string) func() (bool, string) {
		return func() (bool, string) {
			got := readStable(t, out, "app", "app.conf")
			return got == want, got
		}
	}
	stopped := false
	defer func() {
		if t.Failed() && !stopped {
			f.stop(t)
			t.Logf("follower log:\n%s", f.log.String())
		}
	}()
	waitUntil(t, 30*time.Second, "v1 from A", stable("v1"))
	a.stop(t)
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, b.srv)
	waitUntil(t, 30*time.Second, "v2 from B", stable("v2"))
	stopped = true
	if err := f.stop(t); err != nil {
		t.Errorf("follower after SIGTERM: %v\n%s", err, f.log.String())
	}
	if log := f.log.String(); !strings.Contains(log, "connected") || !strings.Contains(log, b.ep) || strings.Contains(log, "key mismatch") {
		t.Errorf("follower log:\n%s", log)
	}
}
