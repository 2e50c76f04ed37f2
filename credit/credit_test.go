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

// mustReceive accounts n bytes that the test granted: an error here is a
// broken setup, not the behaviour under test.
func mustReceive(t *testing.T, w *Window, n uint64) {
	t.Helper()
	if err := w.Received(n); err != nil {
		t.Fatalf("receiving %d granted bytes: %v", n, err)
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
	if got := w.Start(now); got != 1000 {
		t.Fatalf("initial grant %d", got)
	}
	mustReceive(t, w, 1000)
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

// consumeEighths receives and consumes n eighths of the current window,
// advancing the clock by step for each, and returns the clock.
func consumeEighths(t *testing.T, w *Window, now time.Time, n int, step time.Duration) time.Time {
	t.Helper()
	for i := 0; i < n; i++ {
		e := w.Size() / 8
		if err := w.Received(e); err != nil {
			t.Fatal(err)
		}
		now = now.Add(step)
		if _, ok := w.Consumed(e, now); !ok {
			t.Fatal("no update after an eighth of the window")
		}
	}
	return now
}

func TestWindowGrowsWhenConsumedWithinFewRTTs(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.SetRTT(50 * time.Millisecond)
	w.Start(now)
	// Seven eighths, however fast, decide nothing: no whole window yet.
	now = consumeEighths(t, w, now, 7, time.Millisecond)
	if w.Size() != 1<<20 {
		t.Fatalf("window %d decided on less than a window", w.Size())
	}
	// The eighth eighth completes a window in 8ms, under 4 RTTs (200ms).
	now = consumeEighths(t, w, now, 1, time.Millisecond)
	if w.Size() != 2<<20 {
		t.Fatalf("window %d after a fast window", w.Size())
	}
	if w.Limit()-w.Size() != 1<<20 {
		t.Fatalf("limit %d does not use the grown window", w.Limit())
	}
	// Keep consuming fast: it doubles up to the cap and stops there.
	now = consumeEighths(t, w, now, 8*10, time.Millisecond)
	if w.Size() != 16<<20 {
		t.Fatalf("window %d, want capped at %d", w.Size(), 16<<20)
	}
}

// A burst of writes completing together looks fast over an eighth of the
// window; over the whole window the consumer is slow: no growth.
func TestWindowIgnoresBursts(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(8<<20, 64<<20)
	w.SetRTT(700 * time.Microsecond) // loopback
	w.Start(now)
	// Each eighth arrives in a 100us burst after 1.3ms: 750 MB/s overall.
	for i := 0; i < 64; i++ {
		now = consumeEighths(t, w, now.Add(1200*time.Microsecond), 1, 100*time.Microsecond)
	}
	if w.Size() != 8<<20 {
		t.Fatalf("window grew to %d on bursts over a fast local link", w.Size())
	}
}

func TestWindowDoesNotGrowWhenSlowOrWithoutRTT(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.Start(now)
	mustReceive(t, w, 1<<20)
	if _, ok := w.Consumed(1<<20, now.Add(time.Microsecond)); !ok {
		t.Fatal("no update after a whole window was consumed")
	}
	if w.Size() != 1<<20 {
		t.Fatal("grew without an RTT estimate")
	}
	w.SetRTT(time.Millisecond)
	mustReceive(t, w, 1<<20)
	// A window took 1s: 1000 RTTs. The window is not the bottleneck.
	if _, ok := w.Consumed(1<<20, now.Add(time.Second)); !ok {
		t.Fatal("no update after a whole window was consumed")
	}
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
	// The smallest sample is neither the first nor the last: samples
	// inflated by queueing behind data must not count, whenever they come.
	w.SetRTT(500 * time.Millisecond)
	w.SetRTT(time.Millisecond)
	w.SetRTT(300 * time.Millisecond)
	w.SetRTT(0) // no sample
	w.Start(now)
	mustReceive(t, w, 1<<20)
	// A window consumed in 10ms: quick against 300 or 500ms, slow against 1ms.
	if _, ok := w.Consumed(1<<20, now.Add(10*time.Millisecond)); !ok {
		t.Fatal("no update after a whole window was consumed")
	}
	if w.Size() != 1<<20 {
		t.Fatalf("window grew to %d on a queueing-inflated RTT", w.Size())
	}
	// The same window consumed in 3ms is quick against the minimum (1ms):
	// the window grows, so the check above can tell the two apart.
	mustReceive(t, w, 1<<20)
	if _, ok := w.Consumed(1<<20, now.Add(13*time.Millisecond)); !ok {
		t.Fatal("no update after a whole window was consumed")
	}
	if w.Size() != 2<<20 {
		t.Fatalf("window %d after a window consumed in 3 minimum RTTs, want %d", w.Size(), 2<<20)
	}
}

func TestWindowDoesNotGrowWithABacklog(t *testing.T) {
	now := time.Unix(0, 0)
	w := NewWindow(1<<20, 16<<20)
	w.SetRTT(50 * time.Millisecond)
	w.Start(now)
	// The receiver stays most of a window behind what has arrived: it is
	// the bottleneck, however fast the window went by.
	mustReceive(t, w, 1<<20)
	for i := 0; i < 8; i++ {
		now = now.Add(time.Millisecond)
		if _, ok := w.Consumed(1<<17, now); !ok {
			t.Fatalf("no update after eighth %d", i+1)
		}
		if i < 7 {
			if err := w.Received(1 << 17); err != nil {
				t.Fatal(err)
			}
		}
	}
	if w.Size() != 1<<20 {
		t.Fatalf("window grew to %d although the receiver had a backlog", w.Size())
	}
}

// The edges of the tuning rule, each pinned so that a change to it is
// noticed: the decision needs a whole window since the last one, "under 4
// round trips" is strict, the round trips scale with the part of a window
// consumed, and a backlog of exactly a quarter window still counts as
// starved.
func TestWindowTuningBoundaries(t *testing.T) {
	const w0 = 1 << 20
	rtt := 10 * time.Millisecond

	t.Run("a whole window per decision, also after the first", func(t *testing.T) {
		now := time.Unix(0, 0)
		w := NewWindow(w0, 16*w0)
		w.SetRTT(rtt)
		w.Start(now)
		now = consumeEighths(t, w, now, 8, time.Millisecond)
		if w.Size() != 2*w0 {
			t.Fatalf("window %d after a fast window", w.Size())
		}
		consumeEighths(t, w, now, 7, time.Millisecond)
		if w.Size() != 2*w0 {
			t.Fatalf("window %d after 7/8 of the grown window", w.Size())
		}
	})

	t.Run("exactly 4 RTTs is not under 4", func(t *testing.T) {
		now := time.Unix(0, 0)
		w := NewWindow(w0, 16*w0)
		w.SetRTT(rtt)
		w.Start(now)
		mustReceive(t, w, w0)
		if _, ok := w.Consumed(w0, now.Add(4*rtt)); !ok {
			t.Fatal("no update after a whole window")
		}
		if w.Size() != w0 {
			t.Fatalf("window grew to %d on a window consumed in exactly 4 RTTs", w.Size())
		}
	})

	t.Run("RTTs scale with the part of a window consumed", func(t *testing.T) {
		now := time.Unix(0, 0)
		w := NewWindow(w0, 16*w0)
		w.SetRTT(rtt)
		w.Start(now)
		// 1.5 windows in 4 RTTs: under the 6 RTTs that 1.5 windows allow.
		for range 2 {
			mustReceive(t, w, 3*w0/4)
			now = now.Add(2 * rtt)
			if _, ok := w.Consumed(3*w0/4, now); !ok {
				t.Fatal("no update after 3/4 of a window")
			}
		}
		if w.Size() != 2*w0 {
			t.Fatalf("window %d after 1.5 windows in 4 RTTs, want %d", w.Size(), 2*w0)
		}
	})

	t.Run("a quarter-window backlog is still starved", func(t *testing.T) {
		now := time.Unix(0, 0)
		w := NewWindow(w0, 16*w0)
		w.SetRTT(rtt)
		w.Start(now)
		mustReceive(t, w, w0)
		for i := range 7 {
			if _, ok := w.Consumed(w0/8, now.Add(time.Duration(i+1)*time.Millisecond)); !ok {
				t.Fatalf("no update after eighth %d", i+1)
			}
		}
		mustReceive(t, w, w0/4)
		if w.Unused() != w.Limit()-w0-w0/4 {
			t.Fatalf("unused %d, limit %d, received %d", w.Unused(), w.Limit(), w0+w0/4)
		}
		if _, ok := w.Consumed(w0/8, now.Add(8*time.Millisecond)); !ok {
			t.Fatal("no update after the eighth eighth")
		}
		if w.Outstanding() != w0/4 || w.Size() != 2*w0 {
			t.Fatalf("backlog %d, window %d: want %d and a doubled window", w.Outstanding(), w.Size(), w0/4)
		}
	})
}
