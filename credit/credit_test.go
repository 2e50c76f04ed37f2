package credit

import (
	"errors"
	"testing"
	"time"
)

func TestGateIsMonotonic(t *testing.T) {
	var g Gate
	if g.Available() != 0 || g.Take(1) {
		t.Fatal("a new gate must allow nothing")
	}
	if !g.Grant(100) {
		t.Fatal("first grant must grow the limit")
	}
	if g.Grant(50) || g.Grant(100) {
		t.Fatal("stale or duplicate grants must be ignored")
	}
	if g.Limit() != 100 {
		t.Fatalf("limit %d", g.Limit())
	}
	if !g.Take(60) || g.Take(41) || !g.Take(40) || g.Take(1) {
		t.Fatal("take must allow exactly the granted bytes")
	}
	if g.Sent() != 100 || g.Available() != 0 {
		t.Fatalf("sent %d available %d", g.Sent(), g.Available())
	}
	// A reordered older grant arriving after a newer one changes nothing.
	g.Grant(300)
	g.Grant(200)
	if g.Available() != 200 {
		t.Fatalf("available %d after reordered grants", g.Available())
	}
}

func TestWindowRejectsOverrun(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1000, 1000)
	if got := w.Start(now); got != 1000 {
		t.Fatalf("initial grant %d", got)
	}
	if err := w.Received(1000); err != nil {
		t.Fatal(err)
	}
	if err := w.Received(1); !errors.Is(err, ErrOverrun) {
		t.Fatalf("overrun not detected: %v", err)
	}
	if err := w.Received(^uint64(0)); !errors.Is(err, ErrOverrun) {
		t.Fatalf("wrapping overrun not detected: %v", err)
	}
}

func TestWindowUpdatesAtAnEighth(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1000, 1000)
	w.Start(now)
	w.Received(1000)
	if _, ok := w.Consumed(124, now); ok {
		t.Fatal("update sent before an eighth of the window was consumed")
	}
	limit, ok := w.Consumed(1, now)
	if !ok || limit != 1125 {
		t.Fatalf("update at an eighth: %d %v, want 1125", limit, ok)
	}
	if w.Outstanding() != 875 {
		t.Fatalf("outstanding %d", w.Outstanding())
	}
	// Data in flight + buffered never exceeds the window.
	if w.Limit()-125 > w.Size() {
		t.Fatal("granted more than a window beyond consumed")
	}
}

func TestWindowGrowsWhenConsumedWithinFewRTTs(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.SetRTT(50 * time.Millisecond)
	w.Start(now)
	// An eighth of the window consumed in 10ms, far less than 4 RTTs / 8.
	w.Received(128 << 10)
	now = now.Add(10 * time.Millisecond)
	limit, ok := w.Consumed(128<<10, now)
	if !ok || w.Size() != 2<<20 {
		t.Fatalf("window %d after a fast epoch (limit %d, %v)", w.Size(), limit, ok)
	}
	if limit != (128<<10)+(2<<20) {
		t.Fatalf("limit %d does not use the grown window", limit)
	}
	// Keep consuming fast: it doubles up to the cap and stops there. Each
	// step receives and consumes an eighth of the window, which triggers an
	// update.
	for i := 0; i < 20; i++ {
		n := w.Size() / 8
		if err := w.Received(n); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Millisecond)
		if _, ok := w.Consumed(n, now); !ok {
			t.Fatal("no update after half a window")
		}
	}
	if w.Size() != 16<<20 {
		t.Fatalf("window %d, want capped at %d", w.Size(), 16<<20)
	}
}

func TestWindowDoesNotGrowWhenSlowOrWithoutRTT(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.Start(now)
	w.Received(1 << 20)
	w.Consumed(1<<20, now.Add(time.Microsecond))
	if w.Size() != 1<<20 {
		t.Fatal("grew without an RTT estimate")
	}
	w.SetRTT(time.Millisecond)
	w.Received(1 << 20)
	// A window took 1s: 1000 RTTs. The window is not the bottleneck.
	w.Consumed(1<<20, now.Add(time.Second))
	if w.Size() != 1<<20 {
		t.Fatalf("grew to %d on a slow consumer", w.Size())
	}
}

func TestNewWindowMaxBelowInitial(t *testing.T) {
	w := NewWindow(100, 10)
	if w.maxWindow != 100 {
		t.Fatalf("max %d", w.maxWindow)
	}
}

func TestWindowTunesOnMinimumRTT(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.SetRTT(time.Millisecond)
	// Later samples inflated by queueing behind data must not count.
	w.SetRTT(500 * time.Millisecond)
	w.SetRTT(0)
	w.Start(now)
	w.Received(1 << 20)
	// An eighth consumed in 10ms: quick against 500ms, slow against 1ms.
	w.Consumed(1<<17, now.Add(10*time.Millisecond))
	if w.Size() != 1<<20 {
		t.Fatalf("window grew to %d on a queueing-inflated RTT", w.Size())
	}
}

func TestWindowDoesNotGrowWithABacklog(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.SetRTT(50 * time.Millisecond)
	w.Start(now)
	// The whole window arrived, only an eighth is consumed: the receiver
	// is the bottleneck, however fast that eighth went.
	w.Received(1 << 20)
	w.Consumed(1<<17, now.Add(time.Millisecond))
	if w.Size() != 1<<20 {
		t.Fatalf("window grew to %d although the receiver had a backlog", w.Size())
	}
}
