package receiver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
)

func TestRateMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	t.Run("steady above the minimum", func(t *testing.T) {
		m := newRateMeter(1024, time.Minute, t0)
		for s := 1; s <= 600; s++ {
			m.add(2048, at(time.Duration(s)*time.Second))
			if slow, rate := m.slow(at(time.Duration(s) * time.Second)); slow {
				t.Fatalf("2 KiB/s judged slow at %ds (rate %.0f)", s, rate)
			}
		}
	})
	t.Run("drip below the minimum", func(t *testing.T) {
		m := newRateMeter(1024, time.Minute, t0)
		fired := time.Duration(0)
		for s := 5; s <= 600; s += 5 {
			now := at(time.Duration(s) * time.Second)
			m.add(4096, now) // 4 KiB every 5 s: 819 B/s
			if slow, _ := m.slow(now); slow {
				fired = time.Duration(s) * time.Second
				break
			}
		}
		if fired != time.Minute {
			t.Fatalf("a drip of 819 B/s against 1 KiB/s judged slow at %v, want exactly when the first window is complete (1m)", fired)
		}
	})
	t.Run("never before a whole window", func(t *testing.T) {
		m := newRateMeter(1024, time.Minute, t0)
		if slow, _ := m.slow(at(59 * time.Second)); slow {
			t.Fatal("judged slow before a whole window passed")
		}
		if slow, _ := m.slow(at(61 * time.Second)); !slow {
			t.Fatal("nothing for a minute not judged slow")
		}
	})
	t.Run("fast, then stopped", func(t *testing.T) {
		m := newRateMeter(1024, time.Minute, t0)
		for s := 1; s <= 120; s++ {
			m.add(1<<20, at(time.Duration(s)*time.Second))
			m.slow(at(time.Duration(s) * time.Second))
		}
		// Nothing more: slow once the last window holds too little.
		if slow, _ := m.slow(at(150 * time.Second)); slow {
			t.Fatal("judged slow 30s after 1 MiB/s")
		}
		var when time.Duration
		for s := 150; s < 400; s++ {
			if slow, _ := m.slow(at(time.Duration(s) * time.Second)); slow {
				when = time.Duration(s) * time.Second
				break
			}
		}
		// The window is measured from a mark at most window/8 older.
		if when < 180*time.Second || when > 190*time.Second {
			t.Fatalf("judged slow at %v after data stopped at 120s, want 180-188s", when)
		}
	})
	t.Run("off", func(t *testing.T) {
		m := newRateMeter(-1, time.Minute, t0)
		if slow, _ := m.slow(at(time.Hour)); slow {
			t.Fatal("a meter with no minimum fired")
		}
	})
}

func TestChunkBudgetCountsPerOffset(t *testing.T) {
	var b taskBudget
	for i := 1; i <= 3; i++ {
		if n := b.chunkFailed(4096); n != i {
			t.Fatalf("failure %d at the same offset counted %d", i, n)
		}
	}
	if n := b.chunkFailed(8192); n != 1 {
		t.Fatalf("a failure at another offset counted %d, want 1", n)
	}
	if n := b.chunkFailed(4096); n != 1 {
		t.Fatalf("back at the first offset: counted %d, want 1 (the run was broken)", n)
	}
}

// Reused + Wire is the verified content, however it was obtained;
// everything else received is Refetched; re-verified data is no progress.
func TestByteAccountingAddsUp(t *testing.T) {
	tk := &task{size: 10 << 20}
	// An earlier run left 3 MiB; the server resumes at 2 MiB (rounded).
	tk.b.kept(2 << 20)
	tk.next = 2 << 20
	if got := tk.b.advanced(3 << 20); got != 1<<20 {
		t.Fatalf("first chunk beyond the reused prefix: %d new bytes", got)
	}
	tk.next, tk.wire = 6<<20, 4<<20
	tk.b.advanced(6 << 20)
	// Reconnect: the new session resumes at 5 MiB, so 1 MiB comes again.
	tk.b.kept(5 << 20)
	tk.next = 5 << 20
	if got := tk.b.advanced(6 << 20); got != 0 {
		t.Fatalf("a chunk verified again counted %d new bytes", got)
	}
	if got := tk.b.advanced(7 << 20); got != 1<<20 {
		t.Fatalf("a new chunk after a reconnect counted %d", got)
	}
	tk.next, tk.wire = 10<<20, 9<<20
	tk.done = true
	wire, reused, refetched := tk.counts()
	if reused != 2<<20 || wire != 8<<20 || refetched != 1<<20 || wire+reused != tk.size {
		t.Fatalf("wire %d reused %d refetched %d for %d", wire, reused, refetched, tk.size)
	}
	// A restart drops what was held: nothing is reused any more.
	tk.b.restarted()
	tk.b.kept(0)
	if _, reused, _ := tk.counts(); reused != 0 {
		t.Fatalf("reused %d after a restart", reused)
	}
}

func TestDialCauseNamesTheCause(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, "connection refused"},
		{&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}, "no such socket file"},
		{fmt.Errorf("zmq4: could not dial: %w", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Name: "nohost.invalid", Err: "no such host", IsNotFound: true}}), `no such host "nohost.invalid"`},
	} {
		if got := dialCause(c.err); got != c.want {
			t.Errorf("dialCause(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// Nothing listening: the dial fails at once with the cause, and giving up
// names it.
func TestUnreachableNamesTheCause(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + l.Addr().String()
	l.Close()
	var reconnects []Event
	_, err = Fetch(context.Background(), Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 2 * time.Second,
		Progress: func(e Event) {
			if e.Kind == EventReconnect {
				reconnects = append(reconnects, e)
			}
		}}, "f")
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("error %v, want ErrUnreachable naming the refused connection", err)
	}
	if len(reconnects) < 3 {
		t.Fatalf("%d reconnect events", len(reconnects))
	}
	// The delay doubles from 100ms while nothing is verified.
	if reconnects[0].RetryIn != 100*time.Millisecond || reconnects[1].RetryIn != 200*time.Millisecond {
		t.Errorf("first delays %v, %v: want 100ms, 200ms", reconnects[0].RetryIn, reconnects[1].RetryIn)
	}
	for _, e := range reconnects {
		if e.RetryIn > 2*time.Second {
			t.Errorf("delay %v above 2s", e.RetryIn)
		}
	}
	for i, e := range reconnects {
		if e.Attempt != i+1 || e.Endpoint != ep || !strings.Contains(e.Message, "connecting to "+ep) {
			t.Errorf("reconnect event %d: attempt %d, endpoint %q, %q", i, e.Attempt, e.Endpoint, e.Message)
		}
	}
}

// Interrupted: partial state is kept, and the error says so in words, not
// "context canceled"; it still matches context.Canceled.
func TestInterruptedError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Fetch(ctx, Config{Endpoint: "tcp://127.0.0.1:1", OutputDir: t.TempDir()}, "f")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v does not match context.Canceled", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "interrupted; partial state kept for resume") || strings.Contains(msg, "context canceled") {
		t.Fatalf("error %q", msg)
	}
}

func TestFailedResultShowsNoHash(t *testing.T) {
	failed := Result{Name: "a.bin", Path: "out/a.bin", Err: &FileError{Name: "a.bin", Err: ErrVerify}}
	if s := failed.String(); strings.Contains(s, strings.Repeat("0", 64)) || !strings.Contains(s, "verification failed") {
		t.Fatalf("failed result shows %q", s)
	}
	var h protocol.Hash
	h[0] = 0xab
	ok := Result{Name: "a.bin", Path: "out/a.bin", Size: 3, Hash: h}
	if s := ok.String(); !strings.Contains(s, h.String()) || !strings.Contains(s, "out/a.bin") {
		t.Fatalf("verified result shows %q", s)
	}
}

// A file put in place counts as at least 4 KiB toward MinRate, so many
// small files are not taken for a slow server.
func TestFileDoneCountsTowardRate(t *testing.T) {
	c := &client{rate: newRateMeter(1024, time.Minute, time.Now())}
	s := &conn{c: c}
	tk := &task{name: "empty", inflight: 1}
	s.apply(result{kind: opCommit, batch: []*task{tk}, errs: []error{nil}})
	if !tk.done || c.rate.total != fileProgress || !s.progress {
		t.Fatalf("done %v, counted %d toward the rate, progress %v", tk.done, c.rate.total, s.progress)
	}
}

// LIST (zrecv --list, a tree sync's first step) reconnects as Fetch does:
// 0.1 s doubling, never more than 2 s.
func TestListReconnectDelays(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + l.Addr().String()
	l.Close()
	var delays []time.Duration
	_, err = List(context.Background(), Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 7 * time.Second,
		Progress: func(e Event) {
			if e.Kind == EventReconnect {
				delays = append(delays, e.RetryIn)
			}
		}}, "")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 2000}
	if len(delays) < len(want) {
		t.Fatalf("delays %v", delays)
	}
	for i, d := range delays {
		w := 2000 * time.Millisecond
		if i < len(want) {
			w = want[i] * time.Millisecond
		}
		if d != w && !(i == len(delays)-1 && d < w) { // the last one may be cut by the timeout
			t.Errorf("delay %d: %v, want %v (all: %v)", i, d, w, delays)
		}
	}
}
