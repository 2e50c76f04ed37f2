package sender

import (
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
)

// wanting is a session holding a chunk it has not sent.
func wanting() *session { return &session{cur: &transfer{pending: &chunk{}}} }

// Sessions waiting for the budget take turns: the first refused is the
// next served, whoever asks first when the budget allows it.
func TestRateTurns(t *testing.T) {
	now := time.Unix(1000, 0)
	const chunk = 64 << 10
	var r rateState
	r.init(chunk, chunk, now) // one chunk per second; burst MinBurst = one chunk
	a, b, c := wanting(), wanting(), wanting()
	if !r.take(a, chunk, now) {
		t.Fatal("a full budget refused the first chunk")
	}
	if r.take(b, chunk, now) || r.holder != b || !r.blocked || r.wait != time.Second {
		t.Fatalf("b refused: holder %p (b %p), blocked %v, wait %v; want b to hold, 1s", r.holder, b, r.blocked, r.wait)
	}
	r.newRound()
	later := now.Add(time.Second)
	// a asks first when the budget allows a chunk again: b's turn.
	if r.take(a, chunk, later) || r.take(c, chunk, later) || r.ready(c, 1, later) {
		t.Fatal("a session other than the holder was served")
	}
	if !r.take(b, chunk, later) || r.holder != nil {
		t.Fatal("the holder was not served when the budget allowed its chunk")
	}
	// A holder that no longer waits (its session ended) gives up its turn.
	r.newRound()
	if r.take(c, chunk, later) || r.holder != c {
		t.Fatal("c should hold the next turn")
	}
	c.dead = true
	if !r.take(a, chunk, later.Add(time.Second)) {
		t.Fatal("a dead holder kept its turn")
	}
	// A holder whose transfer ended (CANCEL) gives it up too.
	if r.take(b, chunk, later.Add(time.Second)) || r.holder != b {
		t.Fatal("b should hold the next turn")
	}
	b.cur = nil
	if !r.ready(a, chunk, later.Add(2*time.Second)) {
		t.Fatal("a holder without a transfer kept its turn")
	}
}

func TestRateUnlimited(t *testing.T) {
	var r rateState
	r.init(0, 1<<20, time.Now())
	for range 1000 {
		if !r.take(wanting(), 4<<20, time.Now()) || r.blocked {
			t.Fatal("an unlimited server held a chunk back")
		}
	}
}

// With a limit, the chunk size proposed is at most the largest power of
// two not above it; a limit below one smallest chunk per second is refused.
func TestRateLimitConfig(t *testing.T) {
	for _, c := range []struct {
		limit      int64
		chunk      int
		want       int
		wantsError bool
	}{
		{0, 0, protocol.DefaultChunk, false},
		{50 << 20, 0, protocol.DefaultChunk, false},
		{1 << 20, 0, 1 << 20, false},
		{1<<20 - 1, 0, 512 << 10, false},
		{100 << 10, 0, 64 << 10, false},
		{4096, 0, 4096, false},
		{100 << 10, 16 << 10, 16 << 10, false},
		{4095, 0, 0, true},
		{-1, 0, 0, true},
	} {
		cfg := Config{RateLimit: c.limit, ChunkSize: c.chunk}
		err := cfg.setDefaults()
		if (err != nil) != c.wantsError {
			t.Errorf("RateLimit %d: error %v, want error %v", c.limit, err, c.wantsError)
			continue
		}
		if err == nil && cfg.ChunkSize != c.want {
			t.Errorf("RateLimit %d, ChunkSize %d: chunk size %d, want %d", c.limit, c.chunk, cfg.ChunkSize, c.want)
		}
	}
}
