package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Status through relays (PROTOCOL.md section 15): a relay FORWARDs the
// rows of its own table on its control session. These tests play the
// relay with the real client side (receiver.Control with Forwards) or by
// hand (raw messages), against a real server.

// fakeRelay is a relay's control session to its parent: its own reports
// and the rows it forwards, both changeable while it runs.
type fakeRelay struct {
	mu      sync.Mutex
	reports []protocol.Report
	fwds    []protocol.Forward
	dirty   bool
	notify  chan struct{}
	events  []receiver.ControlEvent
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

func startFakeRelay(t *testing.T, rc receiver.Config, trees []string, reports []protocol.Report, fwds []protocol.Forward) *fakeRelay {
	t.Helper()
	r := &fakeRelay{reports: reports, fwds: fwds, dirty: true, notify: make(chan struct{}, 1), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if rc.OutputDir == "" {
		rc.OutputDir = t.TempDir()
	}
	go func() {
		r.done <- receiver.Control(ctx, rc, receiver.ControlConfig{Trees: trees, Notify: r.notify, ReportEvery: 200 * time.Millisecond,
			Reports: func(bool) []protocol.Report {
				r.mu.Lock()
				defer r.mu.Unlock()
				return append([]protocol.Report(nil), r.reports...)
			},
			Forwards: func(all bool) []protocol.Forward {
				r.mu.Lock()
				defer r.mu.Unlock()
				if !all && !r.dirty {
					return nil
				}
				r.dirty = false
				return append([]protocol.Forward(nil), r.fwds...)
			},
			Events: func(e receiver.ControlEvent) {
				r.mu.Lock()
				r.events = append(r.events, e)
				r.mu.Unlock()
			}})
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *fakeRelay) set(reports []protocol.Report, fwds []protocol.Forward) {
	r.mu.Lock()
	r.reports, r.fwds, r.dirty = reports, fwds, true
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *fakeRelay) refusals() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []error
	for _, e := range r.events {
		if e.Kind == receiver.ControlRefused {
			out = append(out, e.Err)
		}
	}
	return out
}

func (r *fakeRelay) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			panic("fake relay did not stop")
		}
	})
}

func fwdRow(node, tree, parent string, st protocol.NodeState, seq uint64, id protocol.Hash) protocol.Forward {
	return protocol.Forward{Report: protocol.Report{State: st, Seq: seq, Version: id, Node: node, Tree: tree}, Parent: parent}
}

func ownReport(node, tree string, st protocol.NodeState, seq uint64, id protocol.Hash) protocol.Report {
	return protocol.Report{State: st, Seq: seq, Version: id, Node: node, Tree: tree}
}

// rowsByNode is a tree's rows in the server's own table.
func rowsByNode(srv *sender.Server, tree string) map[string]fleet.Row {
	out := map[string]fleet.Row{}
	for _, st := range srv.Fleet() {
		if st.Tree == tree {
			for _, r := range st.Rows {
				out[r.Node] = r
			}
		}
	}
	return out
}

// The root's STATUS shows forwarded rows with their parent (a relay's
// direct child, and a node two relays down), the relay itself as direct;
// STATUS without PARENTS has exactly the old layout; zsend --status (text
// and JSON) shows the column, and --wait counts forwarded nodes. A
// forwarded node the relay stops forwarding goes lost by age while the
// relay's session lives on, and the relay goes lost when it goes.
func TestRelayForwardedRowsInRootStatus(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Fleet.LostAfter = 1500 * time.Millisecond
	ep, srv := publishingServer(t, cfg)
	id1 := protocol.Hash(srv.Trees()[0].ID)
	relay := startFakeRelay(t, fastRecv(ep), []string{"app"},
		[]protocol.Report{ownReport("relay1", "app", protocol.StateSwitched, 1, id1)},
		[]protocol.Forward{fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 1, id1),
			fwdRow("leaf2", "app", "relay2", protocol.StateSwitched, 1, id1)})
	waitUntil(t, 10*time.Second, "3 nodes on v1", converged(srv, "app", 1, 3))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := receiver.Status(ctx, fastRecv(ep), "")
	if err != nil {
		t.Fatal(err)
	}
	parents := map[string]string{}
	for _, r := range st.Rows {
		parents[r.Node] = r.Parent
	}
	if want := map[string]string{"relay1": "", "leaf1": "relay1", "leaf2": "relay2"}; !st.Parents || !equalMaps(parents, want) {
		t.Fatalf("parents %v (asked: %v), want %v", parents, st.Parents, want)
	}

	// STATUS without the flag: today's layout exactly (no trailing parent).
	c := helloV2(t, ep)
	c.sendV2(t, &protocol.Status{Request: 9, Tree: "app"})
	rows := 0
	for done := false; !done; {
		switch m := c.next(t).(type) {
		case *protocol.Tree:
		case *protocol.Fleet:
			rows++
			if m.HasParent || m.Parent != "" {
				t.Fatalf("FLEET with a parent in answer to STATUS without PARENTS: %+v", m)
			}
		case *protocol.End:
			done = true
		default:
			t.Fatalf("unexpected %T", m)
		}
	}
	if rows != 3 {
		t.Fatalf("%d rows", rows)
	}

	// zsend --status: the VIA column, and "parent" in JSON.
	var out, errb bytes.Buffer
	if code := cli.Status(ctx, fastRecv(ep), cli.StatusOptions{}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("--status exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "VIA") || !regexpLine(out.String(), "leaf2", "relay2") || !regexpLine(out.String(), "relay1", "-") {
		t.Fatalf("--status text:\n%s", out.String())
	}
	out.Reset()
	if code := cli.Status(ctx, fastRecv(ep), cli.StatusOptions{JSON: true}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("--status --json exit %d: %s", code, errb.String())
	}
	var js struct {
		Trees []struct {
			Nodes []struct{ Node, Parent string }
		}
	}
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Trees) != 1 || len(js.Trees[0].Nodes) != 3 {
		t.Fatalf("--status --json: %v\n%s", err, out.String())
	}
	for _, n := range js.Trees[0].Nodes {
		if n.Parent != parents[n.Node] {
			t.Errorf("JSON %s parent %q, want %q", n.Node, n.Parent, parents[n.Node])
		}
	}

	// --wait covers the forwarded nodes: v2 with leaf2 still on v1 does
	// not converge; once it is forwarded on v2, it does.
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := protocol.Hash(srv.Trees()[0].ID)
	relay.set([]protocol.Report{ownReport("relay1", "app", protocol.StateSwitched, 2, id2)},
		[]protocol.Forward{fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 2, id2),
			fwdRow("leaf2", "app", "relay2", protocol.StateSwitched, 1, id1)})
	waitUntil(t, 10*time.Second, "leaf1 on v2", func() (bool, string) {
		r := rowsByNode(srv, "app")["leaf1"]
		return r.Seq == 2, string(r.State)
	})
	out.Reset()
	errb.Reset()
	if code := cli.Status(ctx, fastRecv(ep), cli.StatusOptions{Wait: true, Timeout: time.Second}, &out, &errb); code != cli.ExitWaitTimeout {
		t.Fatalf("--wait with a forwarded node behind: exit %d, want %d\n%s", code, cli.ExitWaitTimeout, out.String())
	}
	relay.set([]protocol.Report{ownReport("relay1", "app", protocol.StateSwitched, 2, id2)},
		[]protocol.Forward{fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 2, id2),
			fwdRow("leaf2", "app", "relay2", protocol.StateSwitched, 2, id2)})
	if code := cli.Status(ctx, fastRecv(ep), cli.StatusOptions{Wait: true, Timeout: 20 * time.Second}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("--wait once every forwarded node is on v2: exit %d\n%s%s", code, out.String(), errb.String())
	}

	// The relay stops forwarding (its children left it, or died): they go
	// lost by age, although the relay's session is alive.
	relay.set([]protocol.Report{ownReport("relay1", "app", protocol.StateSwitched, 2, id2)}, nil)
	waitUntil(t, 10*time.Second, "leaves lost, relay live", func() (bool, string) {
		rs := rowsByNode(srv, "app")
		return rs["leaf1"].Shown == fleet.Lost && rs["leaf2"].Shown == fleet.Lost && rs["relay1"].Shown == fleet.Switched,
			srv.Fleet()[0].Summary()
	})
	// The relay dies: it goes lost too.
	relay.stop()
	waitUntil(t, 10*time.Second, "relay lost", func() (bool, string) {
		return rowsByNode(srv, "app")["relay1"].Shown == fleet.Lost, srv.Fleet()[0].Summary()
	})
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// regexpLine: some line of text starts with node and has via as its
// second field.
func regexpLine(text, node, via string) bool {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == node && f[1] == via {
			return true
		}
	}
	return false
}

// With CURVE: a FORWARD may not overwrite the row of a node name bound to
// a key that reports directly (403, the row unchanged); with an access
// list, a relay key forwards only for the trees it may see (403); a
// forwarded row is bound to no key.
func TestRelayForwardRefusals(t *testing.T) {
	server, direct, relayKey := newCert(t), newCert(t), newCert(t)
	dir := t.TempDir()
	app, other := filepath.Join(dir, "app"), filepath.Join(dir, "other")
	writeFile(t, filepath.Join(app, "a"), "a")
	writeFile(t, filepath.Join(other, "b"), "b")
	cfg := fastFleet(app)
	cfg.Paths = []string{app, other}
	cfg.Curve = curveServer(server)
	cfg.Curve.Access = func(k [32]byte, name string) bool {
		return k != relayKey.Public || strings.HasPrefix(name, "app/")
	}
	ep, srv := publishingServer(t, cfg)
	ids := map[string]protocol.Hash{}
	for _, ti := range srv.Trees() {
		ids[ti.Name] = protocol.Hash(ti.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dc := fastRecv(ep)
	dc.OutputDir, dc.Curve = t.TempDir(), curveClient(server, direct)
	if err := receiver.Report(ctx, dc, ownReport("web1", "app", protocol.StateSwitched, 1, ids["app"])); err != nil {
		t.Fatal(err)
	}
	rc := fastRecv(ep)
	rc.Curve = curveClient(server, relayKey)
	relay := startFakeRelay(t, rc, []string{"app"}, nil, []protocol.Forward{
		fwdRow("web1", "app", "relay1", protocol.StateFailed, 0, protocol.Hash{}),
		fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 1, ids["app"]),
		fwdRow("leaf2", "other", "relay1", protocol.StateSwitched, 1, ids["other"]),
	})
	waitUntil(t, 10*time.Second, "two refusals", func() (bool, string) {
		n := len(relay.refusals())
		return n >= 2, ""
	})
	var trees []string
	for _, err := range relay.refusals()[:2] {
		var re *receiver.RemoteError
		if !errors.As(err, &re) || re.Code != protocol.CodeRefused {
			t.Fatalf("refusal %v, want 403", err)
		}
		trees = append(trees, err.Error())
	}
	if !strings.Contains(strings.Join(trees, " "), "report of other") {
		t.Errorf("refusals %v: none for tree other", trees)
	}
	rows := rowsByNode(srv, "app")
	if r := rows["web1"]; r.State != fleet.Switched || r.Parent != "" || r.Key == "" {
		t.Errorf("web1 changed by a forward: %+v", r)
	}
	if r := rows["leaf1"]; r.Parent != "relay1" || r.Key != "" || r.State != fleet.Switched {
		t.Errorf("leaf1: %+v", r)
	}
	if len(rowsByNode(srv, "other")) != 0 {
		t.Errorf("a row of tree other was taken from a key that may not see it: %+v", rowsByNode(srv, "other"))
	}
}

// nextNonPing returns the next message other than PING, or nil after d.
func nextNonPing(t *testing.T, c *v2, d time.Duration) protocol.Message {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		frames := c.recv(left)
		if frames == nil {
			return nil
		}
		m, _, err := protocol.Decode(frames)
		if err != nil {
			t.Fatalf("undecodable: %v", err)
		}
		if _, ok := m.(*protocol.Ping); !ok {
			return m
		}
	}
}

func expectEnd(t *testing.T, c *v2, req uint32, what string) {
	t.Helper()
	if e, ok := nextNonPing(t, c, 5*time.Second).(*protocol.End); !ok || e.Request != req {
		t.Fatalf("%s: want END %d, got %+v", what, req, e)
	}
}

func expectQuiet(t *testing.T, c *v2, d time.Duration, what string) {
	t.Helper()
	if m := nextNonPing(t, c, d); m != nil {
		t.Fatalf("%s: unexpected %T %+v", what, m, m)
	}
}

// subscribe sends LIST SUBSCRIBE for tree and returns its TREE.
func subscribe(t *testing.T, c *v2, req uint32, tree string) *protocol.Tree {
	t.Helper()
	c.sendV2(t, &protocol.List{Request: req, Flags: protocol.ListSubscribe, Tree: tree})
	tr, ok := nextNonPing(t, c, 5*time.Second).(*protocol.Tree)
	if !ok {
		t.Fatalf("LIST SUBSCRIBE: want TREE, got %+v", tr)
	}
	expectEnd(t, c, req, "LIST")
	return tr
}

// The root's barrier counts forwarded nodes: it waits for a forwarded
// node that has not staged, and once every node (the relay and the node
// below it) has staged, it sends one SWITCH on the relay's session, with
// that session's subscription id. A forwarded node reporting the decided
// version staged later gets SWITCH on its forwarding session at once.
func TestRelayBarrierCountsForwardedNodes(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.PeerTimeout, cfg.Fleet.LostAfter = 30*time.Second, 30*time.Second
	cfg.Barrier, cfg.BarrierTimeout = true, 8*time.Second // grace: 2s from the start
	var be barrierEvents
	cfg.Events = be.record
	started := time.Now()
	ep, srv := publishingServer(t, cfg)
	id1 := protocol.Hash(srv.Trees()[0].ID)
	c := helloV2(t, ep)
	subscribe(t, c, 1, "app")
	c.sendV2(t, &protocol.Report{Request: 2, State: protocol.StateSwitched, Seq: 1, Version: id1, Node: "relay1", Tree: "app"})
	expectEnd(t, c, 2, "REPORT")
	f := fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 1, id1)
	f.Request = 3
	c.sendV2(t, &f)
	expectEnd(t, c, 3, "FORWARD")

	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := protocol.Hash(srv.Trees()[0].ID)
	if tr, ok := nextNonPing(t, c, 5*time.Second).(*protocol.Tree); !ok || tr.Version != id2 || tr.Flags&protocol.TreeBarrier == 0 {
		t.Fatalf("announcement of v2: %+v", tr)
	}
	c.sendV2(t, &protocol.Report{Request: 4, State: protocol.StateStaged, Seq: 2, Version: id2, Node: "relay1", Tree: "app"})
	expectEnd(t, c, 4, "REPORT staged")
	f = fwdRow("leaf1", "app", "relay1", protocol.StateSyncing, 1, id1)
	f.Request = 5
	c.sendV2(t, &f)
	expectEnd(t, c, 5, "FORWARD syncing")
	// Past the start's grace, the barrier still waits for leaf1.
	expectQuiet(t, c, time.Until(started.Add(2500*time.Millisecond))+300*time.Millisecond, "a forwarded node has not staged")

	f = fwdRow("leaf1", "app", "relay1", protocol.StateStaged, 2, id2)
	f.Request = 6
	c.sendV2(t, &f)
	expectEnd(t, c, 6, "FORWARD staged")
	sw, ok := nextNonPing(t, c, 5*time.Second).(*protocol.Switch)
	if !ok || sw.Request != 1 || sw.Version != id2 || sw.Seq != 2 || sw.Tree != "app" {
		t.Fatalf("SWITCH on the relay's session: %+v", sw)
	}
	expectQuiet(t, c, 500*time.Millisecond, "one SWITCH per session")
	ev := be.messages("; ")
	if !strings.Contains(ev, "2 nodes staged") || strings.Contains(ev, "timed out") {
		t.Fatalf("barrier events %q: want decided by 2 staged nodes", ev)
	}

	// A late forwarded node: SWITCH at once on its forwarding session.
	c2 := helloV2(t, ep)
	subscribe(t, c2, 7, "")
	f = fwdRow("leaf9", "app", "relay2", protocol.StateStaged, 2, id2)
	f.Request = 8
	c2.sendV2(t, &f)
	expectEnd(t, c2, 8, "late FORWARD staged")
	if sw, ok := nextNonPing(t, c2, 5*time.Second).(*protocol.Switch); !ok || sw.Request != 7 || sw.Version != id2 {
		t.Fatalf("SWITCH for a late forwarded node: %+v", sw)
	}
	expectQuiet(t, c, 300*time.Millisecond, "the first relay is not told again")
}

// A relay's server (ExternalBarrier) never decides a barrier; Switch
// passes its parent's decision on: SWITCH to the children staged on that
// version (a direct child, and a lower relay for the node it forwards),
// and at once to a child that reports it staged later.
func TestRelaySwitchPassesDecisionDown(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.PeerTimeout, cfg.Fleet.LostAfter = 30*time.Second, 30*time.Second
	cfg.ExternalBarrier, cfg.BarrierTimeout = true, time.Second
	ep, srv := publishingServer(t, cfg)
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := srv.Trees()[0].ID

	child := helloV2(t, ep)
	subscribe(t, child, 1, "app")
	child.sendV2(t, &protocol.Report{Request: 2, State: protocol.StateStaged, Seq: 2, Version: protocol.Hash(id2), Node: "c1", Tree: "app"})
	expectEnd(t, child, 2, "REPORT staged")
	lower := helloV2(t, ep)
	subscribe(t, lower, 5, "app")
	f := fwdRow("leaf1", "app", "relay2", protocol.StateStaged, 2, protocol.Hash(id2))
	f.Request = 6
	lower.sendV2(t, &f)
	expectEnd(t, lower, 6, "FORWARD staged")
	// Past the barrier timeout and the grace: nothing, the parent decides.
	expectQuiet(t, child, 2*time.Second, "a relay deciding a barrier itself")

	srv.Switch("app", manifest.ID(id2), time.Time{})
	for _, c := range []struct {
		p   *v2
		req uint32
	}{{child, 1}, {lower, 5}} {
		sw, ok := nextNonPing(t, c.p, 5*time.Second).(*protocol.Switch)
		if !ok || sw.Request != c.req || sw.Version != protocol.Hash(id2) || sw.Seq != 2 {
			t.Fatalf("SWITCH passed down (request %d): %+v", c.req, sw)
		}
	}
	srv.Switch("app", manifest.ID(id2), time.Time{}) // the parent's SWITCH again (one per node it stands for)
	expectQuiet(t, child, 300*time.Millisecond, "a child told twice")

	late := helloV2(t, ep)
	subscribe(t, late, 3, "app")
	late.sendV2(t, &protocol.Report{Request: 4, State: protocol.StateStaged, Seq: 2, Version: protocol.Hash(id2), Node: "c2", Tree: "app"})
	expectEnd(t, late, 4, "late REPORT staged")
	if sw, ok := nextNonPing(t, late, 5*time.Second).(*protocol.Switch); !ok || sw.Request != 3 || sw.Version != protocol.Hash(id2) {
		t.Fatalf("SWITCH for a late child: %+v", sw)
	}
}

// A relay's server hands its rows upward (Forwards): every live row
// with all, the changed ones otherwise, each with its parent (the
// relay's own name for direct children); a lost row is not forwarded;
// OnReport fires when a row changes.
func TestRelayServerForwards(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Fleet.LostAfter = time.Second
	changes := make(chan struct{}, 64)
	cfg.OnReport = func() { changes <- struct{}{} }
	ep, srv := publishingServer(t, cfg)
	id1 := protocol.Hash(srv.Trees()[0].ID)
	c := helloV2(t, ep)
	c.sendV2(t, &protocol.Report{Request: 1, State: protocol.StateSwitched, Seq: 1, Version: id1, Node: "c1", Tree: "app",
		Hook: protocol.HookResult{Name: "exec", DurationMS: 3}})
	expectEnd(t, c, 1, "REPORT")
	f := fwdRow("leaf1", "app", "relay2", protocol.StateStaged, 1, id1)
	f.Request = 2
	c.sendV2(t, &f)
	expectEnd(t, c, 2, "FORWARD")
	for i := 0; i < 2; i++ {
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatal("OnReport not called for a new row")
		}
	}
	got := srv.Forwards("relay1", false)
	if len(got) != 2 {
		t.Fatalf("changed rows: %+v", got)
	}
	want := map[string]string{"c1": "relay1", "leaf1": "relay2"}
	for _, g := range got {
		if g.Parent != want[g.Node] || g.Version != id1 || g.Seq != 1 {
			t.Errorf("forward %+v", g)
		}
		if g.Node == "c1" && (g.Hook.Name != "exec" || g.Hook.DurationMS != 3 || g.State != protocol.StateSwitched) {
			t.Errorf("c1 forwarded as %+v", g)
		}
	}
	if again := srv.Forwards("relay1", false); len(again) != 0 {
		t.Fatalf("unchanged rows forwarded again: %+v", again)
	}
	// The same report again is no change.
	c.sendV2(t, &protocol.Report{Request: 3, State: protocol.StateSwitched, Seq: 1, Version: id1, Node: "c1", Tree: "app",
		Hook: protocol.HookResult{Name: "exec", DurationMS: 3}})
	expectEnd(t, c, 3, "REPORT again")
	if again := srv.Forwards("relay1", false); len(again) != 0 {
		t.Fatalf("a repeated report counted as a change: %+v", again)
	}
	if all := srv.Forwards("relay1", true); len(all) != 2 {
		t.Fatalf("all rows: %+v", all)
	}
	// The raw client is silent from now on: both rows go lost here, and
	// a lost row is not forwarded (so it goes lost upstream too).
	waitUntil(t, 10*time.Second, "lost rows no longer forwarded", func() (bool, string) {
		rs := rowsByNode(srv, "app")
		all := srv.Forwards("relay1", true)
		return len(all) == 0 && rs["c1"].Shown == fleet.Lost && rs["leaf1"].Shown == fleet.Lost, fmt.Sprint(all)
	})
}

// Against a server that predates relays: STATUS asks again without
// PARENTS after the 400, and a relay's control session ends with
// ErrForwardUnsupported after the 501 to its FORWARD.
// oldParent answers as a server that predates relays: LIST and REPORT
// acknowledged with END, FORWARD an unknown command (501).
func oldParent(m protocol.Message) []protocol.Message {
	switch m := m.(type) {
	case *protocol.List:
		return []protocol.Message{&protocol.End{Request: m.Request}}
	case *protocol.Report:
		return []protocol.Message{&protocol.End{Request: m.Request}}
	case *protocol.Forward:
		return []protocol.Message{&protocol.Error{Code: protocol.CodeUnknownCommand, Message: "unknown command in CMD(0x0a)"}}
	}
	return nil
}

func TestRelayAgainstOldServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var flagsSeen []uint8
	ep := rawServer(t, func(m protocol.Message) []protocol.Message {
		switch m := m.(type) {
		case *protocol.Status:
			mu.Lock()
			flagsSeen = append(flagsSeen, m.Flags)
			mu.Unlock()
			if m.Flags != 0 {
				return []protocol.Message{&protocol.Error{Code: protocol.CodeBadRequest, Message: "flags 0x01: reserved, must be 0"}}
			}
			return []protocol.Message{&protocol.Tree{Request: m.Request, Seq: 1, Name: "app"},
				&protocol.Fleet{Request: m.Request, State: protocol.StateSwitched, Seq: 1, Node: "web1", Tree: "app"},
				&protocol.End{Request: m.Request, Size: 1}}
		}
		return oldParent(m)
	})
	rc := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second}
	st, err := receiver.Status(ctx, rc, "")
	if err != nil || st.Parents || len(st.Rows) != 1 || st.Rows[0].Node != "web1" {
		t.Fatalf("STATUS against an old server: %+v, %v", st, err)
	}
	mu.Lock()
	if len(flagsSeen) != 2 || flagsSeen[0] != protocol.StatusParents || flagsSeen[1] != 0 {
		t.Errorf("STATUS flags sent: %v, want [1 0]", flagsSeen)
	}
	mu.Unlock()
	err = receiver.Control(ctx, rc, receiver.ControlConfig{Trees: []string{"app"},
		Reports: func(bool) []protocol.Report {
			return []protocol.Report{ownReport("relay1", "app", protocol.StateSwitched, 1, protocol.Hash{})}
		},
		Forwards: func(bool) []protocol.Forward {
			return []protocol.Forward{fwdRow("leaf1", "app", "relay1", protocol.StateSwitched, 1, protocol.Hash{})}
		}})
	if !errors.Is(err, receiver.ErrForwardUnsupported) || !receiver.IsRetryable(err) {
		t.Fatalf("control session with FORWARD against an old server: %v", err)
	}
}

// The follower side of a relay (mirror.Follow with Forwards,
// ForwardNotify and OnSwitch): the rows go up under the follower's node
// name as parent, a change goes up when notified (long before the next
// periodic round), and the parent's SWITCH reaches OnSwitch (and the
// follower itself switches).
func TestRelayFollowerForwardsAndPassesSwitch(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Fleet.LostAfter = 30 * time.Second
	cfg.Barrier, cfg.BarrierTimeout = true, 20*time.Second // grace 5s: decided long before the timeout
	ep, srv := publishingServer(t, cfg)
	id1 := protocol.Hash(srv.Trees()[0].ID)

	var mu sync.Mutex
	leaf := fwdRow("leaf1", "app", "", protocol.StateSwitched, 1, id1) // Parent "": the relay's direct child
	var switches []string
	notify := make(chan struct{}, 1)
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "relay1",
		ReportEvery: time.Minute, ForwardNotify: notify,
		Forwards: func(parent string, all bool) []protocol.Forward {
			mu.Lock()
			defer mu.Unlock()
			r := leaf
			r.Parent = parent
			return []protocol.Forward{r}
		},
		OnSwitch: func(tree string, id manifest.ID, _ time.Time) {
			mu.Lock()
			switches = append(switches, tree+"@"+id.String())
			mu.Unlock()
		}})
	waitUntil(t, 20*time.Second, "relay1 and leaf1 on v1", converged(srv, "app", 1, 2))
	if r := rowsByNode(srv, "app")["leaf1"]; r.Parent != "relay1" {
		t.Fatalf("leaf1 forwarded with parent %q, want the follower's node name", r.Parent)
	}

	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := srv.Trees()[0].ID
	waitUntil(t, 20*time.Second, "relay1 staged v2", func() (bool, string) {
		r := rowsByNode(srv, "app")["relay1"]
		return r.State == fleet.Staged && r.Seq == 2, string(r.State)
	})
	mu.Lock()
	leaf = fwdRow("leaf1", "app", "", protocol.StateStaged, 2, protocol.Hash(id2))
	mu.Unlock()
	notify <- struct{}{}
	waitUntil(t, 20*time.Second, "relay1 switched to v2 by the root's SWITCH", func() (bool, string) {
		r := rowsByNode(srv, "app")["relay1"]
		return r.State == fleet.Switched && r.Seq == 2, string(r.State)
	})
	if f.countSeq("switched", 2) != 1 {
		t.Errorf("follower switched %d times to v2", f.countSeq("switched", 2))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(switches) != 1 || switches[0] != "app@"+id2.String() {
		t.Fatalf("OnSwitch calls %v, want one for app@%s", switches, id2)
	}
}

// Three levels of real relays (package relay): root (--barrier) ->
// relay1 -> relay2 -> leaf. The root's zsend --status shows every node
// with its parent; --status --wait covers the leaf two relays down; the
// root's BARRIER reaches the leaf (it stages and waits) and the root's
// SWITCH reaches it back through both relays; when relay2 dies, it and
// the leaf below it go lost at the root.
func TestRelayThreeLevelsStatus(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	rootCfg := fastFleet(src)
	rootCfg.Barrier, rootCfg.BarrierTimeout = true, 60*time.Second // never the timeout path here
	rootEP, root := publishingServer(t, rootCfg)
	r1 := startTreeRelay(t, rootEP, "relay1", "app")
	r2 := startTreeRelay(t, r1.ep, "relay2", "app")
	leaf := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(r2.ep), Trees: []string{"app"}, Node: "leaf"})

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	if code := cli.Status(ctx, fastRecv(rootEP), cli.StatusOptions{Wait: true, Timeout: 30 * time.Second}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("--wait at the root: exit %d\n%s%s", code, out.String(), errb.String())
	}
	waitUntil(t, 20*time.Second, "three nodes at the root with their parents", func() (bool, string) {
		rs := rowsByNode(root, "app")
		return len(rs) == 3 && rs["relay1"].Parent == "" && rs["relay2"].Parent == "relay1" && rs["leaf"].Parent == "relay2" &&
			rs["leaf"].Shown == fleet.Switched, root.Fleet()[0].Summary()
	})

	// A new version under the root's barrier: every level stages and
	// waits, the root counts the leaf, and its SWITCH comes down.
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, root)
	id2 := root.Trees()[0].ID
	out.Reset()
	errb.Reset()
	if code := cli.Status(ctx, fastRecv(rootEP), cli.StatusOptions{Wait: true, Timeout: 45 * time.Second}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("--wait for v2 at the root: exit %d\n%s%s", code, out.String(), errb.String())
	}
	for node, r := range rowsByNode(root, "app") {
		if r.Version != id2.String() || r.Shown != fleet.Switched {
			t.Errorf("%s at the root after --wait: %+v", node, r)
		}
	}
	if leaf.countSeq("staged", 2) == 0 {
		t.Error("the leaf did not wait for the root's barrier (no staged event for v2)")
	}
	if ok, why := nodeOn(t, src, leaf.out, "app")(); !ok {
		t.Errorf("leaf content: %s", why)
	}
	if !regexpLine(out.String(), "leaf", "relay2") || !regexpLine(out.String(), "relay2", "relay1") || !regexpLine(out.String(), "relay1", "-") {
		t.Errorf("--status text:\n%s", out.String())
	}

	// relay2 dies: it and the leaf below it go lost at the root, by age.
	r2.stop()
	waitUntil(t, 30*time.Second, "relay2 and leaf lost at the root", func() (bool, string) {
		rs := rowsByNode(root, "app")
		return rs["relay2"].Shown == fleet.Lost && rs["leaf"].Shown == fleet.Lost && rs["relay1"].Shown == fleet.Switched,
			root.Fleet()[0].Summary()
	})
}

// A relay with more rows than a control session keeps unacknowledged
// forwards them all (the rest wait for acknowledgements).
func TestRelayForwardsManyRows(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	id1 := protocol.Hash(srv.Trees()[0].ID)
	const n = 700
	var rows []protocol.Forward
	for i := 0; i < n; i++ {
		rows = append(rows, fwdRow(fmt.Sprintf("leaf%03d", i), "app", "relay1", protocol.StateSwitched, 1, id1))
	}
	startFakeRelay(t, fastRecv(ep), []string{"app"}, nil, rows)
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d forwarded nodes", n), converged(srv, "app", 1, n))
}

// A relay whose parent predates relays (ERROR 501 to FORWARD) stops
// forwarding to it for the rest of the run, and keeps following.
func TestRelayFollowerStopsForwardingToOldParent(t *testing.T) {
	var mu sync.Mutex
	forwards := 0
	ep := rawServer(t, func(m protocol.Message) []protocol.Message {
		if _, ok := m.(*protocol.Forward); ok {
			mu.Lock()
			forwards++
			mu.Unlock()
		}
		return oldParent(m)
	})
	rc := fastRecv(ep)
	f := startFollower(t, mirror.FollowConfig{Receiver: rc, Trees: []string{"app"}, Node: "relay1", ReportEvery: 100 * time.Millisecond,
		Forwards: func(parent string, all bool) []protocol.Forward {
			return []protocol.Forward{fwdRow("leaf1", "app", parent, protocol.StateSwitched, 1, protocol.Hash{1})}
		}})
	waitUntil(t, 10*time.Second, "reconnected after the 501", func() (bool, string) {
		return f.count("connected") >= 2, fmt.Sprint(f.count("connected"), " connections")
	})
	time.Sleep(500 * time.Millisecond) // several report rounds
	mu.Lock()
	defer mu.Unlock()
	if forwards != 1 {
		t.Fatalf("%d FORWARDs to a parent that refused the first, want 1", forwards)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	noted := false
	for _, e := range f.events {
		noted = noted || (e.Kind == "note" && errors.Is(e.Err, receiver.ErrForwardUnsupported))
	}
	if !noted {
		t.Error("no note that the parent predates relays")
	}
}

// PROTOCOL.md 14.4: a follower that reports a decided version staged
// again on a new session (it reconnected while it waited, or moved to
// another relay) gets its SWITCH again, there; the session that got it
// does not get it twice.
func TestBarrierSwitchAgainOnNewSession(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.PeerTimeout, cfg.Fleet.LostAfter = 30*time.Second, 30*time.Second
	cfg.Barrier, cfg.BarrierTimeout = true, 4*time.Second // grace: 1s from the start
	ep, srv := publishingServer(t, cfg)
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := protocol.Hash(srv.Trees()[0].ID)
	staged := func(req uint32) *protocol.Report {
		return &protocol.Report{Request: req, State: protocol.StateStaged, Seq: 2, Version: id2, Node: "web1", Tree: "app"}
	}
	c1 := helloV2(t, ep)
	subscribe(t, c1, 1, "app")
	c1.sendV2(t, staged(2))
	expectEnd(t, c1, 2, "REPORT staged")
	if sw, ok := nextNonPing(t, c1, 10*time.Second).(*protocol.Switch); !ok || sw.Request != 1 || sw.Version != id2 {
		t.Fatalf("SWITCH on the first session: %+v", sw)
	}
	c1.sendV2(t, staged(3))
	expectEnd(t, c1, 3, "REPORT staged again")
	expectQuiet(t, c1, 300*time.Millisecond, "the same session told twice")

	c2 := helloV2(t, ep)
	subscribe(t, c2, 4, "app")
	c2.sendV2(t, staged(5))
	expectEnd(t, c2, 5, "REPORT staged on a new session")
	if sw, ok := nextNonPing(t, c2, 5*time.Second).(*protocol.Switch); !ok || sw.Request != 4 || sw.Version != id2 {
		t.Fatalf("SWITCH on the new session: %+v", sw)
	}
}

// The binaries, as a user runs them: zsend --barrier -> zrecv --follow
// --serve (relay1) -> zrecv --follow (leaf1). zsend --status --wait at
// the root covers the leaf, and shows it via relay1, through a new
// version under the barrier.
func TestRelayStatusCLI(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1\n")
	root := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"), "--watch",
		"--barrier", "--barrier-timeout", "60s", src)
	relayEP := "ipc://" + filepath.Join(dir, "relay.sock")
	relay := startFollowerProc(t, root.ep, filepath.Join(dir, "out-relay"), "relay1", "--serve", relayEP)
	leafOut := filepath.Join(dir, "out-leaf")
	leaf := startFollowerProc(t, relayEP, leafOut, "leaf1")
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{leaf, relay} {
				p.kill()
			}
			t.Logf("relay log:\n%s\nleaf log:\n%s", relay.log, leaf.log)
		}
	})
	for v := 1; v <= 2; v++ {
		if v == 2 {
			writeFile(t, filepath.Join(src, "app.conf"), "v2\n")
		}
		want := fmt.Sprintf("2/2 nodes on app v%d", v)
		var code int
		var out, errs string
		waitUntil(t, 60*time.Second, want, func() (bool, string) {
			code, out, errs = statusWait(t, root.ep, 30*time.Second)
			return code == 0 && strings.Contains(out, want), fmt.Sprintf("exit %d\n%s\n%s", code, out, errs)
		})
		if !regexpLine(out, "leaf1", "relay1") || !regexpLine(out, "relay1", "-") {
			t.Fatalf("--status at the root:\n%s", out)
		}
	}
	waitUntil(t, 10*time.Second, "leaf on v2", nodeOn(t, src, leafOut, "app"))
	for _, p := range []*proc{leaf, relay} {
		if err := p.stop(t); err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	}
	if !strings.Contains(leaf.log.String(), "waiting for the server's SWITCH") {
		t.Errorf("the leaf did not wait for the root's barrier:\n%s", leaf.log)
	}
}

// The set of changed rows is bounded (by Fleet.MaxNodes): past it, the
// next Forwards(false) returns every row, nothing is missed.
func TestRelayServerChangedRowsBounded(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, filepath.Join(a, "x"), "x")
	writeFile(t, filepath.Join(b, "y"), "y")
	cfg := fastFleet(a)
	cfg.Paths = []string{a, b}
	cfg.PeerTimeout, cfg.Fleet.LostAfter, cfg.Fleet.MaxNodes = 30*time.Second, 30*time.Second, 3
	ep, srv := publishingServer(t, cfg)
	c := helloV2(t, ep)
	req := uint32(0)
	report := func(node, tree string, st protocol.NodeState) {
		req++
		c.sendV2(t, &protocol.Report{Request: req, State: st, Node: node, Tree: tree})
		expectEnd(t, c, req, "REPORT "+node+" "+tree)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		for _, tr := range []string{"a", "b"} {
			report(n, tr, protocol.StateSyncing)
		}
	}
	if all := srv.Forwards("relay1", true); len(all) != 6 {
		t.Fatalf("all rows: %d", len(all))
	}
	report("n1", "a", protocol.StateFailed)
	if got := srv.Forwards("relay1", false); len(got) != 1 || got[0].Node != "n1" || got[0].Tree != "a" {
		t.Fatalf("one change: %+v", got)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		report(n, "a", protocol.StateSwitched)
	}
	report("n1", "b", protocol.StateSwitched) // a fourth change, past the bound of 3
	if got := srv.Forwards("relay1", false); len(got) != 6 {
		t.Fatalf("past the bound: %d rows, want every row (6)", len(got))
	}
	if got := srv.Forwards("relay1", false); len(got) != 0 {
		t.Fatalf("after that: %d rows", len(got))
	}
}

// With a failover list, a parent that predates relays (501) is skipped
// for forwarding, not the others: after moving to a parent that knows
// relays, the relay's rows reach it.
func TestRelayForwardsAfterFailoverFromOldParent(t *testing.T) {
	old := rawServer(t, oldParent)
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, root := publishingServer(t, fastFleet(src))
	id1 := protocol.Hash(root.Trees()[0].ID)
	f := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(old + "," + ep), Trees: []string{"app"}, Node: "relay1",
		ReportEvery: 200 * time.Millisecond,
		Forwards: func(parent string, all bool) []protocol.Forward {
			return []protocol.Forward{fwdRow("leaf1", "app", parent, protocol.StateSwitched, 1, id1)}
		}})
	waitUntil(t, 20*time.Second, "leaf1 forwarded to the second parent", func() (bool, string) {
		r := rowsByNode(root, "app")["leaf1"]
		return r.Parent == "relay1" && r.Shown == fleet.Switched, fmt.Sprint(f.count("connected"), " connections")
	})
}
