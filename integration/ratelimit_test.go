package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/ratelimit"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Tests of zsend --rate-limit (sender.Config.RateLimit). Time is only
// ever bounded from below (a transfer takes at least what the limit
// allows), and data from above (no more arrived by a moment than the
// burst plus the rate times the time since the start): a slow machine
// makes both truer, never false.

// budget is the most chunk data a server limited to rate (with chunk size
// chunk) may have sent by a time elapsed after a moment at which its
// bucket held at most a burst.
func budget(rate, chunk int64, elapsed time.Duration) int64 {
	return ratelimit.Burst(rate, chunk) + int64(elapsed.Seconds()*float64(rate))
}

// wireMeter checks, at every progress event of any of its fetches, that
// the data verified so far by all of them is within the budget.
type wireMeter struct {
	t           *testing.T
	rate, chunk int64
	start       time.Time
	mu          sync.Mutex
	wire        map[string]int64
	events      int
	failed      bool
}

func newWireMeter(t *testing.T, rate, chunk int64) *wireMeter {
	return &wireMeter{t: t, rate: rate, chunk: chunk, start: time.Now(), wire: map[string]int64{}}
}

func (m *wireMeter) progress(client string) func(receiver.Event) {
	return func(e receiver.Event) {
		if e.Kind != receiver.EventProgress && e.Kind != receiver.EventDone {
			return
		}
		elapsed := time.Since(m.start)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.events++
		m.wire[client] = e.Wire
		var total int64
		for _, w := range m.wire {
			total += w
		}
		if max := budget(m.rate, m.chunk, elapsed); total > max && !m.failed {
			m.failed = true // once is enough
			m.t.Errorf("%d bytes verified %v after the start, beyond the limit's %d", total, elapsed, max)
		}
	}
}

// atLeast is the shortest time a server limited to rate, whose bucket
// holds burst, can take to send n bytes, with a margin of 10%.
func atLeast(n, rate, chunk int64) time.Duration {
	return time.Duration(0.9 * float64(n-ratelimit.Burst(rate, chunk)) / float64(rate) * float64(time.Second))
}

func TestRateLimitOneClient(t *testing.T) {
	const size, rate, chunk = 2 << 20, 1 << 20, 64 << 10
	src, ep, _ := serveRandom(t, "f.bin", size, sender.Config{RateLimit: rate, ChunkSize: chunk})
	out := t.TempDir()
	meter := newWireMeter(t, rate, chunk)
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Progress: meter.progress("a")}, "f.bin"); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(meter.start)
	sameFile(t, src, filepath.Join(out, "f.bin"))
	if min := atLeast(size, rate, chunk); elapsed < min {
		t.Fatalf("%d bytes at %d bytes/s took %v, less than %v", size, rate, elapsed, min)
	}
	t.Logf("%d bytes in %v (limit %d bytes/s, %d progress events checked)", size, elapsed, rate, meter.events)
}

// The limit is for the server, all sessions together.
func TestRateLimitSharedByClients(t *testing.T) {
	const size, rate, chunk = 1 << 20, 1 << 20, 64 << 10
	dir := t.TempDir()
	a := writeRandom(t, dir, "a.bin", size)
	b := writeRandom(t, dir, "b.bin", size)
	ep, _ := serve(t, sender.Config{Paths: []string{a, b}, RateLimit: rate, ChunkSize: chunk})
	meter := newWireMeter(t, rate, chunk)
	var wg sync.WaitGroup
	outs := map[string]string{"a.bin": t.TempDir(), "b.bin": t.TempDir()}
	errs := make(chan error, 2)
	for name, out := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Progress: meter.progress(name)}, name)
			errs <- err
		}()
	}
	wg.Wait()
	elapsed := time.Since(meter.start)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sameFile(t, a, filepath.Join(outs["a.bin"], "a.bin"))
	sameFile(t, b, filepath.Join(outs["b.bin"], "b.bin"))
	if min := atLeast(2*size, rate, chunk); elapsed < min {
		t.Fatalf("two clients fetched %d bytes each at %d bytes/s in all in %v, less than %v", size, rate, elapsed, min)
	}
}

// While a transfer is held back by the limit, the server answers PING on
// the same session, and LIST and STATUS from others, at once: the limit
// makes the serving loop wait for the budget, never sleep.
func TestRateLimitKeepsControlPrompt(t *testing.T) {
	const size, rate, chunk = 1 << 20, 64 << 10, 64 << 10
	dir := filepath.Join(t.TempDir(), "app")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, dir, "big", size)
	ep, _ := serve(t, sender.Config{Paths: []string{dir}, StateDir: t.TempDir(), RateLimit: rate})

	p := dialZ(t, ep, true)
	if w := p.hello(t, protocol.MaxChunkSize); w.ChunkSize != chunk {
		t.Fatalf("chunk size %d proposed with a limit of %d bytes/s, want %d", w.ChunkSize, rate, chunk)
	}
	start := time.Now()
	p.send(t, &protocol.Get{Request: 1, Name: "app/big"})
	p.send(t, &protocol.Credit{Limit: size})
	var received int64
	// next returns the next message other than CHUNK, counting the
	// CHUNKs' data against the budget on the way.
	next := func(d time.Duration, what string) protocol.Message {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			m := p.expect(t, time.Until(deadline))
			c, ok := m.(*protocol.Chunk)
			if !ok {
				return m
			}
			received += int64(len(c.Data))
			if max := budget(rate, chunk, time.Since(start)); received > max {
				t.Fatalf("%d bytes received %v after the GET, beyond the limit's %d", received, time.Since(start), max)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no answer within %v", what, d)
			}
		}
	}
	if f, ok := next(3*time.Second, "GET").(*protocol.File); !ok || f.Size != size {
		t.Fatalf("GET answered with %T %+v", f, f)
	}
	// The budget is spent after the first chunk (burst: one chunk).
	for received == 0 {
		m := p.expect(t, 3*time.Second)
		c, ok := m.(*protocol.Chunk)
		if !ok {
			t.Fatalf("got %T %+v, want CHUNK", m, m)
		}
		received += int64(len(c.Data))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 2 * time.Second}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		began := time.Now()
		trees, err := receiver.List(ctx, cfg, "app")
		if err != nil || len(trees) != 1 || trees[0].Name != "app" {
			t.Errorf("LIST during a limited transfer: %v, %+v", err, trees)
		} else if d := time.Since(began); d > 2*time.Second {
			t.Errorf("LIST during a limited transfer took %v", d)
		}
	}()
	go func() {
		defer wg.Done()
		began := time.Now()
		if _, err := receiver.Status(ctx, cfg, ""); err != nil {
			t.Errorf("STATUS during a limited transfer: %v", err)
		} else if d := time.Since(began); d > 2*time.Second {
			t.Errorf("STATUS during a limited transfer took %v", d)
		}
	}()
	// One PING after another: a loop that slept until the budget allowed
	// the next chunk (about a second at this limit) would answer each
	// only after its sleep.
	pings := time.Now()
	const nPings = 5
	for token := uint64(1); token <= nPings; token++ {
		p.send(t, &protocol.Ping{Token: token})
		if m, ok := next(2*time.Second, "PING").(*protocol.Pong); !ok || m.Token != token {
			t.Fatalf("PING %d answered with %T %+v", token, m, m)
		}
	}
	if d := time.Since(pings); d > 3*time.Second {
		t.Errorf("%d PINGs one after another took %v during a limited transfer", nPings, d)
	}
	wg.Wait()
	if received >= size {
		t.Fatalf("the whole file arrived during the checks (%d bytes in %v): the limit was not in force", received, time.Since(start))
	}
	p.send(t, &protocol.Bye{Code: protocol.CodeOK})
}

func TestRateLimitCLI(t *testing.T) {
	const size, rate, chunk = 2 << 20, 1 << 20, 64 << 10
	src := writeRandom(t, t.TempDir(), "f.bin", size)
	ep, _ := zsendProc(t, "--rate-limit", "1M", "--chunk-size", "64K", src)
	out := t.TempDir()
	start := time.Now()
	if code, _, stderr := zrecv(t, "-o", out, ep, "f.bin"); code != 0 {
		t.Fatalf("zrecv exit %d: %s", code, stderr)
	}
	elapsed := time.Since(start)
	sameFile(t, src, filepath.Join(out, "f.bin"))
	if min := atLeast(size, rate, chunk); elapsed < min {
		t.Fatalf("zsend --rate-limit 1M sent %d bytes in %v, less than %v", size, elapsed, min)
	}

	// Bad values are usage errors that say what is wrong.
	for value, want := range map[string]string{
		"abc":          "invalid rate",
		"1.5M":         "invalid rate",
		"-1":           "invalid rate",
		"1K":           "below the minimum",
		"17179869184G": "invalid rate",
	} {
		cmd := exec.Command(filepath.Join(binDir, "zsend"), "--state-dir", t.TempDir(), "--rate-limit", value, src)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 ||
			!strings.Contains(errb.String(), "--rate-limit") || !strings.Contains(errb.String(), want) {
			t.Errorf("zsend --rate-limit %s: %v, stderr %q; want exit 2 and %q", value, err, errb.String(), want)
		}
	}
	// zrecv's --rate-limit is a relay's: parsed the same way, and refused
	// where there is no server to limit.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate-limit", "abc", "--follow", ep, "t"}, "invalid rate"},
		{[]string{"--rate-limit", "2K", "--follow", ep, "t"}, "below the minimum"},
		{[]string{"--rate-limit", "1M", ep, "f.bin"}, "needs --follow --serve"},
	} {
		code, _, stderr := zrecv(t, append([]string{"-o", out}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, "--rate-limit") || !strings.Contains(stderr, c.want) {
			t.Errorf("zrecv %v: exit %d, stderr %q; want exit 2 and %q", c.args, code, stderr, c.want)
		}
	}
}
