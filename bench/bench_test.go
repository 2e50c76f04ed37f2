package bench

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4K": 4 << 10, "512M": 512 << 20, "1G": 1 << 30, "1GiB": 1 << 30, "64MB": 64 << 20} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1Q"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("odd median %v", m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("even median %v", m)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("empty median is not NaN")
	}
}

func tempFile(t testing.TB, size int64) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.bin")
	h, err := GenFile(p, size, 7)
	if err != nil {
		t.Fatal(err)
	}
	return p, h
}

// The baselines must deliver every byte, in order, or they measure nothing.
func TestZMQBaseline(t *testing.T) {
	t.Run("buffered", func(t *testing.T) { testZMQBaseline(t, false) })
	t.Run("direct", func(t *testing.T) {
		probe := filepath.Join(t.TempDir(), "probe")
		if w, err := newDirectWriter(probe); err != nil {
			t.Skipf("no O_DIRECT here: %v", err)
		} else {
			w.Close()
		}
		testZMQBaseline(t, true)
	})
}

func testZMQBaseline(t *testing.T, direct bool) {
	src, want := tempFile(t, 3<<20+12345)
	out := filepath.Join(t.TempDir(), "dst.bin")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := ZMQServe(ctx, "tcp://127.0.0.1:0", src, 1<<20, func(a string) { addr <- a })
		errc <- err
	}()
	n, err := ZMQFetch(ctx, waitAddr(t, ctx, addr, errc), out, direct)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	got, size, err := HashFile(out)
	if err != nil || got != want || size != n {
		t.Fatalf("hash %s size %d (received %d), err %v; want %s", got, size, n, err, want)
	}
}

// waitAddr waits for a server started in a goroutine to report its
// address: a server that fails to start ends the test at once with its
// error instead of leaving it waiting for the whole test timeout.
func waitAddr(t *testing.T, ctx context.Context, addr <-chan string, errc <-chan error) string {
	t.Helper()
	select {
	case a := <-addr:
		return a
	case err := <-errc:
		t.Fatalf("the server stopped before it reported an address: %v", err)
	case <-ctx.Done():
		t.Fatalf("the server reported no address: %v", ctx.Err())
	}
	return ""
}

func TestTCPBaseline(t *testing.T) {
	src, want := tempFile(t, 3<<20+999)
	out := filepath.Join(t.TempDir(), "dst.bin")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := TCPServe(ctx, "127.0.0.1:0", src, 1<<20, func(a string) { addr <- a })
		errc <- err
	}()
	if _, err := TCPFetch(ctx, waitAddr(t, ctx, addr, errc), out, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got, _, err := HashFile(out); err != nil || got != want {
		t.Fatalf("hash %s, err %v; want %s", got, err, want)
	}
}

func TestRunnerMeasuresAndBounds(t *testing.T) {
	p, err := Start("sh", nil, "sh", "-c", "echo hello >&2; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitLine(regexpMust(`^hello$`), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.MaxRSS <= 0 || st.Wall <= 0 || st.CPU() <= 0 {
		t.Errorf("implausible figures %+v", st)
	}
	p, err = Start("sleeper", nil, "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := p.Wait(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Wait on a sleeper: %v", err)
	}
	if time.Since(t0) > 5*time.Second {
		t.Error("Wait did not kill in time")
	}
}

func TestReportRenders(t *testing.T) {
	sc := &Scenario{Key: "single", Title: "t", Rounds: 1, Contenders: []Contender{{Name: "zsend -> zrecv"}, {Name: "rsync --whole-file --fsync"}, {Name: "raw zmq4, write + fsync"}}}
	for i, c := range sc.Contenders {
		sc.Runs = append(sc.Runs, Run{Contender: c.Name, Round: 1, Bytes: 1 << 30, Wall: float64(i + 1),
			Procs: []ProcStat{{Role: "sender", User: 1, Sys: 0.5, MaxRSS: 10 << 20}, {Role: "receiver", User: 2, MaxRSS: 20 << 20}}})
	}
	res := &Results{Config: Config{Size: 1 << 30}, Scenarios: []*Scenario{sc}, Targets: ComputeTargets([]*Scenario{sc})}
	var b strings.Builder
	if err := res.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"zsend/zrecv vs rsync --whole-file --fsync = **2.00x**", "| single | zsend -> zrecv vs rsync --whole-file --fsync | >= 1.5x | 2.00x | **PASS** |",
		"| single | zsend -> zrecv vs raw zmq4 that writes + fsyncs | >= 0.8x | 3.00x | **PASS** |", "| latency |", "n/a"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// BenchmarkZMQRouterDealer is the raw zmq4 ceiling in one process: a ROUTER
// streams a file to a DEALER over TCP loopback, no protocol, no hashing,
// the receiver discarding the data. The file is read from the page cache.
//
//	go test -run '^$' -bench ZMQ -benchtime 5x ./bench
func BenchmarkZMQRouterDealer(b *testing.B) {
	for _, chunk := range []int{256 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("chunk=%dKiB", chunk>>10), func(b *testing.B) {
			src, _ := tempFile(b, 256<<20)
			b.SetBytes(256 << 20)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				benchPair(b, func(ctx context.Context, ready func(string)) error {
					_, err := ZMQServe(ctx, "tcp://127.0.0.1:0", src, chunk, ready)
					return err
				}, func(ctx context.Context, addr string) error {
					_, err := ZMQFetch(ctx, addr, "", false)
					return err
				})
			}
		})
	}
}

// BenchmarkTCP is the plain TCP loopback ceiling with the same file and
// 1 MiB writes.
func BenchmarkTCP(b *testing.B) {
	src, _ := tempFile(b, 256<<20)
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		benchPair(b, func(ctx context.Context, ready func(string)) error {
			_, err := TCPServe(ctx, "127.0.0.1:0", src, 1<<20, ready)
			return err
		}, func(ctx context.Context, addr string) error {
			_, err := TCPFetch(ctx, addr, "", 1<<20)
			return err
		})
	}
}

func benchPair(b *testing.B, serve func(context.Context, func(string)) error, fetch func(context.Context, string) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, func(a string) { addr <- a }) }()
	var a string
	select {
	case a = <-addr:
	case err := <-errc:
		b.Fatal(err)
	}
	if err := fetch(ctx, a); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// A process that prints more lines than are kept still has its later
// lines matched (the kept lines are a rolling window).
func TestWaitLineAfterManyLines(t *testing.T) {
	p, err := Start("chatty", nil, "sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo line $i >&2; i=$((i+1)); done; echo the end >&2; sleep 1", maxKeptLines+500))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if _, err := p.WaitLine(regexpMust(`^the end$`), 30*time.Second); err != nil {
		t.Fatal(err)
	}
}
