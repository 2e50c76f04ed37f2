// Package ratelimit is a token bucket as pure arithmetic: no clocks (the
// caller passes the time in), no goroutines, no I/O. zsend uses one bucket
// per server to cap the chunk data all its sessions send together
// (zsend --rate-limit).
//
// A bucket holds at most Burst tokens (one token is one byte) and gains
// Rate tokens per second, counted exactly in integer nanoseconds: the
// fraction of a token earned so far is carried over, so over any span in
// which the bucket is never full the tokens gained are exactly
// floor(elapsed * rate / 1e9), whatever the steps the time was passed in.
// Intermediate products are 128-bit, so no rate, burst or span overflows.
//
// A take larger than the burst (a chunk bigger than the bucket) is allowed
// once the bucket is full, and leaves the bucket in debt by the excess:
// the long-run rate stays exact, and such a take never waits forever.
package ratelimit

import (
	"math"
	"math/bits"
	"time"
)

const nsPerSecond = uint64(time.Second)

// MinBurst is the smallest burst Burst returns: 64 KiB.
const MinBurst = 64 << 10

// Burst is the burst zsend gives a bucket of rate bytes per second whose
// largest single take is largest bytes (a chunk): max(MinBurst, rate/20,
// largest), that is at most a twentieth of a second of data beyond the
// rate, and never less than one chunk, so a whole chunk can go at once.
func Burst(rate, largest int64) int64 {
	return max(MinBurst, rate/20, largest)
}

// Bucket is a token bucket. The zero value is not usable; use New. A
// Bucket is not safe for concurrent use.
type Bucket struct {
	rate   int64 // tokens per second; 0: unlimited
	burst  int64 // most tokens held, >= 1
	tokens int64 // may be negative: debt from a take larger than burst
	frac   uint64
	last   time.Time
}

// New returns a bucket of rate tokens per second holding at most burst
// tokens, full at now. rate <= 0 means unlimited: every take succeeds at
// once. burst < 1 is taken as 1.
func New(rate, burst int64, now time.Time) *Bucket {
	b := &Bucket{}
	b.SetRate(now, rate, burst)
	return b
}

// Rate is the bucket's rate in tokens per second; 0 means unlimited.
func (b *Bucket) Rate() int64 { return b.rate }

// Burst is the most tokens the bucket holds.
func (b *Bucket) Burst() int64 { return b.burst }

// Unlimited reports whether the bucket lets everything through.
func (b *Bucket) Unlimited() bool { return b.rate == 0 }

// SetRate changes the rate and the burst at now. The tokens earned until
// now are counted at the old rate; what the bucket holds is kept, cut to
// the new burst. Going from unlimited to a limit starts full.
func (b *Bucket) SetRate(now time.Time, rate, burst int64) {
	wasUnlimited := b.rate == 0
	b.refill(now)
	if rate < 0 {
		rate = 0
	}
	if burst < 1 {
		burst = 1
	}
	b.rate, b.burst = rate, burst
	if wasUnlimited || b.tokens > burst {
		b.tokens = burst
	}
	if wasUnlimited {
		b.frac = 0
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
}

// Tokens is what the bucket holds at now (negative while in debt);
// math.MaxInt64 when unlimited.
func (b *Bucket) Tokens(now time.Time) int64 {
	if b.rate == 0 {
		return math.MaxInt64
	}
	b.refill(now)
	return b.tokens
}

// Take takes n tokens at now if the bucket allows it, and reports whether
// it did. It allows n when it holds n tokens, or when n exceeds the burst
// and the bucket is full (it then goes into debt by n - burst). n <= 0
// always succeeds and takes nothing.
func (b *Bucket) Take(now time.Time, n int64) bool {
	if n <= 0 || b.rate == 0 {
		return true
	}
	b.refill(now)
	if b.tokens < min(n, b.burst) {
		return false
	}
	// tokens <= burst, so the result is at least burst - n > math.MinInt64.
	b.tokens -= n
	return true
}

// Delay is how long after now a Take of n would succeed (0: at once),
// assuming nothing else is taken meanwhile. It is exact: Take(now+Delay,
// n) succeeds and Take one nanosecond earlier does not. It saturates at
// the largest time.Duration.
func (b *Bucket) Delay(now time.Time, n int64) time.Duration {
	if n <= 0 || b.rate == 0 {
		return 0
	}
	b.refill(now)
	need := min(n, b.burst)
	if b.tokens >= need {
		return 0
	}
	// Wait for the deficit, less the fraction of a token already earned:
	// ceil((deficit * 1e9 - frac) / rate) nanoseconds.
	deficit := uint64(need) - uint64(b.tokens) // < 2^64: need > tokens > MinInt64
	hi, lo := bits.Mul64(deficit, nsPerSecond)
	lo, borrow := bits.Sub64(lo, b.frac, 0)
	hi -= borrow // frac < 1e9 <= deficit * 1e9: no underflow
	rate := uint64(b.rate)
	if hi >= rate {
		return time.Duration(math.MaxInt64)
	}
	q, r := bits.Div64(hi, lo, rate)
	if r != 0 {
		q++
	}
	if q > math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(q)
}

// refill adds the tokens earned between the last update and now. A now
// before the last update (a caller's clock that went back) earns nothing.
func (b *Bucket) refill(now time.Time) {
	if b.rate == 0 {
		b.last = now
		return
	}
	elapsed := now.Sub(b.last)
	if elapsed <= 0 {
		return
	}
	b.last = now
	if b.tokens >= b.burst {
		b.frac = 0
		return
	}
	// earned*1e9 = elapsed*rate + frac, in 128 bits.
	hi, lo := bits.Mul64(uint64(elapsed), uint64(b.rate))
	var carry uint64
	lo, carry = bits.Add64(lo, b.frac, 0)
	hi += carry
	missing := uint64(b.burst) - uint64(b.tokens) // < 2^64 (see Delay)
	mhi, mlo := bits.Mul64(missing, nsPerSecond)
	if hi > mhi || (hi == mhi && lo >= mlo) {
		b.tokens, b.frac = b.burst, 0
		return
	}
	// Below missing*1e9 < 2^64*1e9, so hi < 1e9 and Div64 cannot overflow.
	q, r := bits.Div64(hi, lo, nsPerSecond)
	b.tokens = int64(uint64(b.tokens) + q) // q < missing: stays <= burst
	b.frac = r
}
