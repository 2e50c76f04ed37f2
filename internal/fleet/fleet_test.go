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
