package fleet

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_700_000_000, 0)

func rep(node, tree, ver string, seq uint64, st State) Report {
	return Report{Node: node, Tree: tree, Version: ver, Seq: seq, State: st}
}

func TestSummaryAndGate(t *testing.T) {
	tb := New(Config{LostAfter: 10 * time.Second})
	tb.Publish("myapp", Latest{Seq: 17, Version: "v17"})
	for i := 1; i <= 5; i++ {
		if err := tb.Update(rep(fmt.Sprintf("web%d", i), "myapp", "v17", 17, Switched), t0); err != nil {
			t.Fatal(err)
		}
	}
	if g := tb.Gate(t0); g != Converged {
		t.Fatalf("all on latest: gate %v", g)
	}
	_ = tb.Update(rep("web7", "myapp", "v16", 16, Switched), t0)
	_ = tb.Update(rep("web9", "myapp", "v15", 15, Syncing), t0)
	st := tb.Status(t0)
	if got, want := st[0].Summary(), "5/7 nodes on myapp v17 (2 behind: web7, web9)"; got != want {
		t.Fatalf("summary %q, want %q", got, want)
	}
	if tb.Gate(t0) != Pending {
		t.Fatal("two behind: gate not pending")
	}
	for _, r := range st[0].Rows {
		if r.Node == "web9" && r.Behind != 2 {
			t.Fatalf("web9 behind %d, want 2", r.Behind)
		}
	}
	// web9 goes silent: shown as lost, not forgotten, and no longer gates.
	later := t0.Add(11 * time.Second)
	for i := 1; i <= 5; i++ {
		tb.Seen(fmt.Sprintf("web%d", i), later)
	}
	_ = tb.Update(rep("web7", "myapp", "v17", 17, Switched), later)
	st = tb.Status(later)
	if got, want := st[0].Summary(), "6/6 nodes on myapp v17 (1 lost: web9)"; got != want {
		t.Fatalf("summary %q, want %q", got, want)
	}
	if len(st[0].Rows) != 7 || tb.Gate(later) != Converged {
		t.Fatalf("rows %d gate %v", len(st[0].Rows), tb.Gate(later))
	}
	// A failed hook fails the gate.
	_ = tb.Update(Report{Node: "web1", Tree: "myapp", Version: "v17", Seq: 17, State: Switched, Hook: &Hook{Name: "exec", Exit: 1}}, later)
	if tb.Gate(later) != HookFailed {
		t.Fatal("failed hook: gate not failed")
	}
}

func TestGatePendingWithoutNodes(t *testing.T) {
	tb := New(Config{})
	tb.Publish("a", Latest{Seq: 1, Version: "x"})
	if tb.Gate(t0) != Pending {
		t.Fatal("a tree no node reports: the gate must wait")
	}
}

func TestBounds(t *testing.T) {
	tb := New(Config{MaxNodes: 3, LostAfter: time.Second, MaxText: 8})
	tb.Publish("a", Latest{Seq: 1, Version: "x"})
	if err := tb.Update(rep("n1", "nope", "x", 1, Switched), t0); !errors.Is(err, ErrUnknownTree) {
		t.Fatalf("unknown tree: %v", err)
	}
	if err := tb.Update(rep("", "a", "x", 1, Switched), t0); !errors.Is(err, ErrBadReport) {
		t.Fatalf("empty node: %v", err)
	}
	if err := tb.Update(rep("n1", "a", "x", 1, "hacked"), t0); !errors.Is(err, ErrBadReport) {
		t.Fatalf("bad state: %v", err)
	}
	if err := tb.Update(rep("n1", "a", "x", 1, Lost), t0); !errors.Is(err, ErrBadReport) {
		t.Fatalf("a node may not report itself lost: %v", err)
	}
	for i := 1; i <= 3; i++ {
		if err := tb.Update(rep(fmt.Sprintf("n%d", i), "a", "x", 1, Switched), t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.Update(rep("n4", "a", "x", 1, Switched), t0); !errors.Is(err, ErrFull) {
		t.Fatalf("fourth live node: %v", err)
	}
	// n1 goes quiet; then the newcomer takes its room.
	t1 := t0.Add(2 * time.Second)
	tb.Seen("n2", t1)
	tb.Seen("n3", t1)
	if err := tb.Update(rep("n4", "a", "x", 1, Switched), t1); err != nil {
		t.Fatalf("newcomer with a lost node to evict: %v", err)
	}
	if tb.Nodes() != 3 {
		t.Fatalf("%d nodes", tb.Nodes())
	}
	long := strings.Repeat("E", 100)
	_ = tb.Update(Report{Node: "n2", Tree: "a", State: Failed, Error: long, Hook: &Hook{Output: long}}, t1)
	for _, r := range tb.Status(t1)[0].Rows {
		if r.Node == "n2" && (len(r.Error) > 30 || len(r.Hook.Output) > 30) {
			t.Fatalf("text not bounded: %d %d", len(r.Error), len(r.Hook.Output))
		}
	}
}

func TestNameBoundToKey(t *testing.T) {
	tb := New(Config{})
	tb.Publish("a", Latest{Seq: 1, Version: "x"})
	r := rep("web1", "a", "x", 1, Switched)
	r.Key = "key-A"
	if err := tb.Update(r, t0); err != nil {
		t.Fatal(err)
	}
	r.Key = "key-B"
	if err := tb.Update(r, t0); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("another key under the same name: %v", err)
	}
}

func TestForget(t *testing.T) {
	tb := New(Config{})
	tb.Publish("a", Latest{Seq: 1, Version: "x"})
	_ = tb.Update(rep("n", "a", "x", 1, Switched), t0)
	tb.Forget("a")
	if len(tb.Status(t0)) != 0 {
		t.Fatal("forgotten tree still shown")
	}
}

func fwd(node, tree, ver string, seq uint64, st State, parent string) Report {
	r := rep(node, tree, ver, seq, st)
	r.Parent = parent
	return r
}

// Forwarded rows (PROTOCOL.md section 15.4): shown with their parent,
// bound to no key, kept alive only by forwards, refused for a name a live
// direct reporter's key holds, and taking over a lost one.
func TestForwardedRows(t *testing.T) {
	tb := New(Config{LostAfter: 10 * time.Second})
	tb.Publish("a", Latest{Seq: 2, Version: "v2"})
	r := fwd("leaf1", "a", "v2", 2, Switched, "relay1")
	r.Key = "relay-key" // ignored: a forwarded row is bound to no key
	if err := tb.Update(r, t0); err != nil {
		t.Fatal(err)
	}
	// The node fails over to another relay (another key forwards it).
	r2 := fwd("leaf1", "a", "v2", 2, Switched, "relay2")
	r2.Key = "other-relay-key"
	if err := tb.Update(r2, t0.Add(time.Second)); err != nil {
		t.Fatalf("forward through another relay: %v", err)
	}
	row, _ := tb.Row("leaf1", "a")
	if row.Parent != "relay2" || row.Key != "" {
		t.Fatalf("row %+v: want parent relay2, no key", row)
	}
	// A session's traffic does not keep a forwarded node alive.
	tb.Seen("leaf1", t0.Add(20*time.Second))
	if st := tb.Status(t0.Add(12 * time.Second)); st[0].Rows[0].Shown != Lost || st[0].Live != 0 {
		t.Fatalf("forwarded row not lost by age: %+v", st[0])
	}
	// A direct report with a key takes the forwarded name over, and binds it.
	d := rep("leaf1", "a", "v2", 2, Switched)
	d.Key = "leaf-key"
	if err := tb.Update(d, t0.Add(13*time.Second)); err != nil {
		t.Fatalf("direct report of a forwarded name: %v", err)
	}
	if row, _ := tb.Row("leaf1", "a"); row.Parent != "" || row.Key != "leaf-key" {
		t.Fatalf("row %+v after the direct report", row)
	}
	// Bound and live: a forward is refused.
	if err := tb.Update(fwd("leaf1", "a", "v1", 1, Staged, "relay1"), t0.Add(14*time.Second)); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("forward over a live bound name: %v", err)
	}
	if row, _ := tb.Row("leaf1", "a"); row.Version != "v2" || row.Parent != "" {
		t.Fatalf("refused forward changed the row: %+v", row)
	}
	// Bound but lost: a forward takes it over and unbinds it.
	later := t0.Add(13*time.Second + 11*time.Second)
	if err := tb.Update(fwd("leaf1", "a", "v2", 2, Switched, "relay1"), later); err != nil {
		t.Fatalf("forward over a lost bound name: %v", err)
	}
	if row, _ := tb.Row("leaf1", "a"); row.Parent != "relay1" || row.Key != "" {
		t.Fatalf("row %+v after the takeover", row)
	}
	// A direct node's Seen keeps it alive as before.
	_ = tb.Update(rep("relay1", "a", "v2", 2, Switched), later)
	tb.Seen("relay1", later.Add(9*time.Second))
	for _, row := range tb.Status(later.Add(15 * time.Second))[0].Rows {
		if want := map[string]State{"relay1": Switched, "leaf1": Lost}[row.Node]; row.Shown != want {
			t.Errorf("%s shown %s, want %s", row.Node, row.Shown, want)
		}
	}
}

// The barrier counts forwarded nodes like any others.
func TestBarrierCountsForwardedNodes(t *testing.T) {
	tb := New(Config{LostAfter: 10 * time.Second})
	tb.Publish("a", Latest{Seq: 2, Version: "v2"})
	_ = tb.Update(rep("relay1", "a", "v2", 2, Staged), t0)
	_ = tb.Update(fwd("leaf1", "a", "v1", 1, Syncing, "relay1"), t0)
	b := Barrier{Tree: "a", Version: "v2", Deadline: t0.Add(time.Minute)}
	if d, _ := b.Check(tb, t0); d != Wait {
		t.Fatalf("a forwarded node still syncing: %v", d)
	}
	_ = tb.Update(fwd("leaf1", "a", "v2", 2, Staged, "relay1"), t0)
	if d, staged := b.Check(tb, t0); d != SwitchAll || len(staged) != 2 {
		t.Fatalf("every node staged: %v %v", d, staged)
	}
}

// A newcomer to a full table evicts the node lost longest, not another
// lost one (README, Reports).
func TestEvictsTheNodeLostLongest(t *testing.T) {
	tb := New(Config{MaxNodes: 3, LostAfter: time.Second})
	tb.Publish("a", Latest{Seq: 1, Version: "x"})
	for i, n := range []string{"n1", "n2", "n3"} {
		if err := tb.Update(rep(n, "a", "x", 1, Switched), t0.Add(time.Duration(i)*100*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	// n1 reported first but is seen again later: n2 (last seen at
	// t0+100ms) is the one lost longest, not the oldest entry.
	tb.Seen("n1", t0.Add(500*time.Millisecond))
	now := t0.Add(5 * time.Second) // all three lost
	if err := tb.Update(rep("n4", "a", "x", 1, Switched), now); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range tb.Status(now)[0].Rows {
		have[r.Node] = true
	}
	if have["n2"] || !have["n1"] || !have["n3"] || !have["n4"] {
		t.Fatalf("after the eviction: %v, want n1 n3 n4 (n2 lost longest)", have)
	}
}
