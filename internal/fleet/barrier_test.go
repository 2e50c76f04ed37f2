package fleet

import (
	"testing"
	"time"
)

func TestBarrier(t *testing.T) {
	tb := New(Config{LostAfter: 10 * time.Second})
	tb.Publish("a", Latest{Seq: 2, Version: "v2"})
	for _, n := range []string{"n1", "n2", "n3"} {
		_ = tb.Update(rep(n, "a", "v1", 1, Switched), t0)
	}
	b := Barrier{Tree: "a", Version: "v2", Deadline: t0.Add(5 * time.Second)}
	if d, _ := b.Check(tb, t0); d != Wait {
		t.Fatalf("nobody staged: %v", d)
	}
	_ = tb.Update(rep("n1", "a", "v2", 2, Staged), t0)
	_ = tb.Update(rep("n2", "a", "v2", 2, Staged), t0)
	if d, s := b.Check(tb, t0); d != Wait || len(s) != 2 {
		t.Fatalf("two of three staged: %v %v", d, s)
	}
	q := b
	q.Quorum = 2
	if d, _ := q.Check(tb, t0); d != SwitchAll {
		t.Fatalf("quorum 2 reached: %v", d)
	}
	// n3 never stages: the deadline switches those that staged.
	if d, s := b.Check(tb, t0.Add(5*time.Second)); d != SwitchTimed || len(s) != 2 {
		t.Fatalf("deadline: %v %v", d, s)
	}
	_ = tb.Update(rep("n3", "a", "v2", 2, Staged), t0.Add(time.Second))
	if d, s := b.Check(tb, t0.Add(time.Second)); d != SwitchAll || len(s) != 3 {
		t.Fatalf("all staged: %v %v", d, s)
	}
	// A lost node does not hold the barrier.
	tb2 := New(Config{LostAfter: time.Second})
	tb2.Publish("a", Latest{Seq: 2, Version: "v2"})
	_ = tb2.Update(rep("gone", "a", "v1", 1, Switched), t0)
	_ = tb2.Update(rep("n1", "a", "v2", 2, Staged), t0.Add(3*time.Second))
	if d, _ := b.Check(tb2, t0.Add(3*time.Second)); d != SwitchAll {
		t.Fatalf("lost node held the barrier: %v", d)
	}
}
