package ratelimit

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ns int64) time.Time { return t0.Add(time.Duration(ns)) }

func TestStartsFullAndHoldsAtMostBurst(t *testing.T) {
	b := New(1000, 300, t0)
	if got := b.Tokens(t0); got != 300 {
		t.Fatalf("new bucket holds %d, want 300 (full)", got)
	}
	if got := b.Tokens(at(int64(time.Hour))); got != 300 {
		t.Fatalf("after an hour idle it holds %d, want the burst 300", got)
	}
	if !b.Take(at(int64(time.Hour)), 300) || b.Take(at(int64(time.Hour)), 1) {
		t.Fatal("a full bucket must give exactly its burst at once")
	}
}

// The tokens gained over a span are exactly floor(span * rate / 1s), in
// whatever steps the time is passed in: nothing is lost to rounding.
func TestLongRunRateIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, rate := range []int64{1, 3, 7, 1000, 999_999_937, 50 << 20, 1 << 40} {
		burst := int64(1 << 62) // never full: every earned token is counted
		b := New(rate, burst, t0)
		if !b.Take(t0, burst) {
			t.Fatal("cannot empty the bucket")
		}
		var ns int64
		var taken int64
		for range 10000 {
			ns += rng.Int64N(3_000_000) // up to 3 ms, odd steps
			n := b.Tokens(at(ns))
			if n > 0 {
				if !b.Take(at(ns), n) {
					t.Fatalf("rate %d: cannot take the %d tokens held", rate, n)
				}
				taken += n
			}
		}
		want := new(big.Int).Mul(big.NewInt(ns), big.NewInt(rate))
		want.Quo(want, big.NewInt(int64(time.Second)))
		if want.Cmp(big.NewInt(taken)) != 0 {
			t.Errorf("rate %d over %v: took %d, want exactly %v", rate, time.Duration(ns), taken, want)
		}
	}
}

// A sender taking chunks as fast as allowed over a long time sends burst
// plus rate*time, no more and no less than one chunk of slack.
func TestSustainedChunksMatchRate(t *testing.T) {
	const rate, chunk = 1 << 20, 64 << 10
	burst := Burst(rate, chunk)
	b := New(rate, burst, t0)
	now := t0
	var sent int64
	for now.Sub(t0) < 100*time.Second {
		if b.Take(now, chunk) {
			sent += chunk
			continue
		}
		d := b.Delay(now, chunk)
		if d <= 0 {
			t.Fatalf("take refused but delay %v", d)
		}
		now = now.Add(d)
	}
	elapsed := now.Sub(t0)
	ideal := burst + int64(elapsed.Seconds()*rate)
	if sent > ideal || sent < ideal-chunk {
		t.Fatalf("sent %d in %v, want within a chunk below %d", sent, elapsed, ideal)
	}
}

func TestDelayIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		rate := 1 + rng.Int64N(1<<32)
		burst := 1 + rng.Int64N(1<<24)
		b := New(rate, burst, t0)
		b.Take(t0, rng.Int64N(burst+1))
		start := at(rng.Int64N(int64(time.Millisecond)))
		n := 1 + rng.Int64N(2*burst)
		d := b.Delay(start, n)
		if d == 0 {
			if !b.Take(start, n) {
				t.Fatalf("rate %d burst %d: delay 0 but take of %d refused", rate, burst, n)
			}
			continue
		}
		early := *b
		if early.Take(start.Add(d-1), n) {
			t.Fatalf("rate %d burst %d n %d: take succeeded 1ns before the delay %v", rate, burst, n, d)
		}
		if !b.Take(start.Add(d), n) {
			t.Fatalf("rate %d burst %d n %d: take refused after the delay %v", rate, burst, n, d)
		}
	}
}

// A take larger than the burst goes once the bucket is full and leaves a
// debt, so the long-run rate holds for chunks bigger than the bucket.
func TestTakeLargerThanBurst(t *testing.T) {
	b := New(100, 50, t0)
	if !b.Take(t0, 120) {
		t.Fatal("a full bucket must let a take larger than the burst go")
	}
	if got := b.Tokens(t0); got != -70 {
		t.Fatalf("holds %d after taking 120 of 50, want -70", got)
	}
	// The next 120 waits until the bucket is full again: 120 tokens, 1.2s.
	if d := b.Delay(t0, 120); d != 1200*time.Millisecond {
		t.Fatalf("delay %v, want 1.2s", d)
	}
	if b.Take(at(int64(1199*time.Millisecond)), 120) || !b.Take(at(int64(1200*time.Millisecond)), 120) {
		t.Fatal("the second large take must go exactly when the bucket is full")
	}
}

func TestZeroIsUnlimited(t *testing.T) {
	for _, rate := range []int64{0, -5} {
		b := New(rate, 10, t0)
		if !b.Unlimited() || b.Rate() != 0 {
			t.Fatalf("rate %d: not unlimited", rate)
		}
		for range 100 {
			if !b.Take(t0, math.MaxInt64) || b.Delay(t0, math.MaxInt64) != 0 {
				t.Fatalf("rate %d: an unlimited bucket refused", rate)
			}
		}
	}
}

func TestRateChange(t *testing.T) {
	b := New(1000, 1000, t0)
	b.Take(t0, 1000) // empty
	// Half a second at 1000/s, then the rate drops to 10/s: 500 earned at
	// the old rate are kept.
	b.SetRate(at(int64(500*time.Millisecond)), 10, 1000)
	if got := b.Tokens(at(int64(500 * time.Millisecond))); got != 500 {
		t.Fatalf("holds %d after the change, want 500 earned at the old rate", got)
	}
	if got := b.Tokens(at(int64(1500 * time.Millisecond))); got != 510 {
		t.Fatalf("holds %d a second later, want 510", got)
	}
	// A smaller burst cuts what is held.
	b.SetRate(at(int64(1500*time.Millisecond)), 10, 100)
	if got := b.Tokens(at(int64(1500 * time.Millisecond))); got != 100 {
		t.Fatalf("holds %d after the burst shrank to 100", got)
	}
	// Unlimited, then limited again: starts full.
	b.SetRate(at(int64(2*time.Second)), 0, 100)
	if !b.Take(at(int64(2*time.Second)), 1<<40) {
		t.Fatal("unlimited bucket refused")
	}
	b.SetRate(at(int64(3*time.Second)), 10, 100)
	if got := b.Tokens(at(int64(3 * time.Second))); got != 100 {
		t.Fatalf("holds %d after limiting again, want full (100)", got)
	}
}

func TestClockGoingBackEarnsNothing(t *testing.T) {
	b := New(1000, 1000, t0)
	b.Take(at(int64(time.Second)), 1000)
	if got := b.Tokens(t0); got != 0 {
		t.Fatalf("holds %d at an earlier time, want 0", got)
	}
	if got := b.Tokens(at(int64(1100 * time.Millisecond))); got != 100 {
		t.Fatalf("holds %d 100ms after the take, want 100", got)
	}
}

// Extreme values never overflow: the largest rate, burst, take and span.
func TestOverflowSafety(t *testing.T) {
	const maxI = math.MaxInt64
	b := New(maxI, maxI, t0)
	if !b.Take(t0, maxI) || b.Tokens(t0) != 0 {
		t.Fatal("largest take from a full largest bucket")
	}
	if got := b.Tokens(at(int64(time.Second))); got != maxI {
		t.Fatalf("holds %d after 1s at the largest rate, want the burst", got)
	}
	// Deepest debt: a 1-token bucket taking the largest amount.
	b = New(1, 1, t0)
	if !b.Take(t0, maxI) {
		t.Fatal("full bucket refused a large take")
	}
	if got := b.Tokens(t0); got != 1-maxI {
		t.Fatalf("debt %d, want %d", got, int64(1-maxI))
	}
	if d := b.Delay(t0, 1); d != time.Duration(maxI) {
		t.Fatalf("delay %v, want the saturated maximum", d)
	}
	// The largest span: the debt is paid (maxI seconds at 1/s would be
	// needed; this earns what ~292 years give, without overflowing).
	far := t0.Add(time.Duration(maxI))
	got := b.Tokens(far)
	want := 1 - maxI + int64(time.Duration(maxI)/time.Second)
	if got != want {
		t.Fatalf("after the largest span holds %d, want %d", got, want)
	}
	// Large rate, tiny burst, long span: capped at the burst.
	b = New(maxI, 1, t0)
	b.Take(t0, 1)
	if got := b.Tokens(far); got != 1 {
		t.Fatalf("holds %d, want 1", got)
	}
}

func TestBurst(t *testing.T) {
	for _, c := range []struct{ rate, largest, want int64 }{
		{1 << 20, 0, MinBurst},
		{100 << 20, 0, 5 << 20},
		{1 << 20, 1 << 20, 1 << 20},
		{50 << 20, 1 << 20, 50 << 20 / 20},
		{4096, 4096, MinBurst},
	} {
		if got := Burst(c.rate, c.largest); got != c.want {
			t.Errorf("Burst(%d, %d) = %d, want %d", c.rate, c.largest, got, c.want)
		}
	}
}
