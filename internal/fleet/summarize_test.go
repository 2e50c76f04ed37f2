package fleet

import (
	"testing"
	"time"
)

// Summarize, on rows a server sent, classifies exactly as the table does.
func TestSummarizeMatchesTable(t *testing.T) {
	now := time.Unix(1000, 0)
	tb := New(Config{LostAfter: 10 * time.Second})
	tb.Publish("app", Latest{Seq: 3, Version: "v3"})
	reports := []Report{
		{Node: "a", Tree: "app", Version: "v3", Seq: 3, State: Switched},
		{Node: "b", Tree: "app", Version: "v2", Seq: 2, State: Switched},
		{Node: "c", Tree: "app", Version: "v3", Seq: 3, State: Switched, Hook: &Hook{Name: "exec", Exit: 1}},
		{Node: "d", Tree: "app", Version: "v2", Seq: 2, State: Staged},
	}
	for _, r := range reports {
		if err := tb.Update(r, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.Update(Report{Node: "e", Tree: "app", Version: "v1", Seq: 1, State: Switched}, now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	got := tb.Status(now)[0]
	again := Summarize("app", Latest{Seq: 3, Version: "v3"}, got.Rows)
	if again.Summary() != got.Summary() || again.Live != 4 || again.OnLatest != 1 {
		t.Fatalf("table %q, summarized %q (live %d, on latest %d)", got.Summary(), again.Summary(), again.Live, again.OnLatest)
	}
	if want := "1/4 nodes on app v3 (2 behind: b, d; 1 failed: c; 1 lost: e)"; got.Summary() != want {
		t.Fatalf("summary %q, want %q", got.Summary(), want)
	}
	if GateOf([]TreeStatus{got}) != HookFailed {
		t.Fatal("a failed hook must fail the gate")
	}
}
