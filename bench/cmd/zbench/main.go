// Command zbench is the benchmark harness of zsend/zrecv (driven by
// scripts/bench.sh) and the baseline tools it runs as separate processes.
//
//	zbench suite [flags]                      run the scenarios, write BENCHMARKS.md
//	zbench report -json R -o FILE             render a results file again
//	zbench zmqsend -b EP [-chunk N] FILE      raw zmq4 ROUTER sender
//	zbench zmqrecv [-o FILE [-direct]] EP     raw zmq4 DEALER receiver
//	zbench tcpsend -l ADDR [-chunk N] FILE    plain TCP sender
//	zbench tcprecv [-o FILE] [-chunk N] ADDR  plain TCP receiver
//	zbench delayproxy -target ADDR -delay D   TCP proxy adding one-way delay
//	zbench mkfiles -n N -size S DIR           create N files as zrecv does, no network (small-files floor)
//
// The tools print "zbench: ready ADDR" on stderr once listening.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/zsend/zsend/bench"
	"github.com/zsend/zsend/internal/faultproxy"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "suite":
		err = suite(ctx, args)
	case "report":
		err = report(args)
	case "zmqsend":
		err = zmqsend(ctx, args)
	case "zmqrecv":
		err = zmqrecv(ctx, args)
	case "tcpsend":
		err = tcpsend(ctx, args)
	case "tcprecv":
		err = tcprecv(ctx, args)
	case "delayproxy":
		err = delayproxy(ctx, args)
	case "mkfiles":
		err = mkfiles(ctx, args)
	case "mktree":
		err = mktree(ctx, args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "zbench %s: %v\n", cmd, err)
		bench.KillAll()
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: zbench suite|report|zmqsend|zmqrecv|tcpsend|tcprecv|delayproxy|mkfiles [flags] (see bench/cmd/zbench/main.go)")
	os.Exit(2)
}

func ready(addr string) { fmt.Fprintf(os.Stderr, "zbench: ready %s\n", addr) }

// bounded applies the tool's own -timeout on top of ctx.
func bounded(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// timed runs f under the timeout and reports how many bytes it moved and
// how fast.
func timed(ctx context.Context, timeout time.Duration, what string, f func(context.Context) (int64, error)) error {
	ctx, cancel := bounded(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	n, err := f(ctx)
	if err == nil {
		s := time.Since(t0).Seconds()
		fmt.Fprintf(os.Stderr, "zbench: %s %d bytes in %.3fs (%.0f MB/s)\n", what, n, s, float64(n)/s/1e6)
	}
	return err
}

func zmqsend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("zmqsend", flag.ExitOnError)
	ep := fs.String("b", "tcp://127.0.0.1:0", "endpoint to bind")
	chunk := fs.Int("chunk", 1<<20, "frame size in bytes")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one FILE")
	}
	return timed(ctx, *timeout, "sent", func(ctx context.Context) (int64, error) {
		return bench.ZMQServe(ctx, *ep, fs.Arg(0), *chunk, ready)
	})
}

func zmqrecv(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("zmqrecv", flag.ExitOnError)
	out := fs.String("o", "", "write the data to this file and fsync it (default: discard)")
	direct := fs.Bool("direct", false, "write -o with O_DIRECT (bypassing the page cache)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one ENDPOINT")
	}
	return timed(ctx, *timeout, "received", func(ctx context.Context) (int64, error) {
		return bench.ZMQFetch(ctx, fs.Arg(0), *out, *direct)
	})
}

func tcpsend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tcpsend", flag.ExitOnError)
	addr := fs.String("l", "127.0.0.1:0", "address to listen on")
	chunk := fs.Int("chunk", 1<<20, "write size in bytes")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one FILE")
	}
	return timed(ctx, *timeout, "sent", func(ctx context.Context) (int64, error) {
		return bench.TCPServe(ctx, *addr, fs.Arg(0), *chunk, ready)
	})
}

func tcprecv(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tcprecv", flag.ExitOnError)
	out := fs.String("o", "", "write the data to this file and fsync it (default: discard)")
	chunk := fs.Int("chunk", 1<<20, "read size in bytes")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one ADDR")
	}
	return timed(ctx, *timeout, "received", func(ctx context.Context) (int64, error) {
		return bench.TCPFetch(ctx, fs.Arg(0), *out, *chunk)
	})
}

func mkfiles(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mkfiles", flag.ExitOnError)
	n := fs.Int("n", 1000, "number of files")
	size := fs.Int64("size", 4096, "bytes per file")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("want one DIR")
	}
	return timed(ctx, *timeout, "written", func(ctx context.Context) (int64, error) {
		return bench.MakeFiles(ctx, fs.Arg(0), *n, *size)
	})
}

func mktree(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mktree", flag.ExitOnError)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	fs.Parse(args)
	if fs.NArg() != 2 {
		return fmt.Errorf("want SRC OUT")
	}
	return timed(ctx, *timeout, "written", func(ctx context.Context) (int64, error) {
		return bench.MakeTree(ctx, fs.Arg(0), fs.Arg(1))
	})
}

func delayproxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("delayproxy", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT to forward to")
	delay := fs.Duration("delay", 25*time.Millisecond, "one-way delay added to each direction")
	queue := fs.Int("queue", faultproxy.DefaultQueueLimit, "bytes held per direction before the proxy stops reading")
	timeout := fs.Duration("timeout", 30*time.Minute, "exit after this long")
	fs.Parse(args)
	if *target == "" {
		return fmt.Errorf("-target is required")
	}
	p, err := faultproxy.New(*target, faultproxy.WithDelay(*delay), faultproxy.WithQueueLimit(*queue))
	if err != nil {
		return err
	}
	ready(p.Addr())
	select {
	case <-ctx.Done():
	case <-time.After(*timeout):
	}
	fmt.Fprintf(os.Stderr, "zbench: proxy forwarded %d bytes down, %d up\n", p.BytesDown(), p.BytesUp())
	return p.Close()
}

func suite(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	var (
		binDir   = fs.String("bin", "", "directory with zsend, zrecv and zbench")
		work     = fs.String("work", "", "scratch directory (removed by the caller)")
		out      = fs.String("o", "BENCHMARKS.md", "Markdown report to write")
		jsonOut  = fs.String("json", "", "also write the raw results as JSON here")
		quick    = fs.Bool("quick", false, "smoke mode (report only)")
		rounds   = fs.Int("rounds", 3, "rounds for single, fan-out and latency")
		size     = fs.String("size", "1G", "single-stream file size")
		chunk    = fs.String("chunk", "1M", "chunk size of the raw baselines")
		fanSize  = fs.String("fan-size", "512M", "fan-out file size")
		fanN     = fs.Int("fan-n", 8, "fan-out receivers")
		latSize  = fs.String("lat-size", "512M", "latency scenario file size")
		delay    = fs.Duration("delay", 25*time.Millisecond, "proxy one-way delay")
		pq       = fs.String("proxy-queue", "64M", "proxy queue limit per direction")
		smallN   = fs.Int("small-n", 1000, "number of small files")
		smallSz  = fs.String("small-size", "4K", "size of each small file")
		smallOne = fs.String("small-one", "4M", "size of the single file compared with the small files")
		smallR   = fs.Int("small-rounds", 5, "rounds of the small-files scenario")
		memSize  = fs.String("mem-size", "4G", "memory scenario file size")
		memR     = fs.Int("mem-rounds", 1, "rounds of the memory scenario")
		treeN    = fs.Int("tree-n", 10000, "files of the tree scenarios")
		treeDirs = fs.Int("tree-dirs", 1000, "directories of the tree scenarios")
		treeMax  = fs.String("tree-max", "16K", "largest file of the tree (sizes uniform from 0)")
		treeR    = fs.Int("tree-rounds", 3, "rounds of the tree scenarios")
		treeMemN = fs.Int("tree-mem-n", 100000, "entries of the tree-memory scenario")
		relayN   = fs.Int("relay-n", 20, "relay scenario: receiving nodes (the issue asks 200)")
		relayR   = fs.Int("relay-relays", 0, "relay scenario: relays of the tree (0: round(sqrt(relay-n)))")
		relayRt  = fs.String("relay-rate", "100M", "relay scenario: --rate-limit of every server, bytes/s (0: unlimited)")
		relayMB  = fs.String("relay-size", "64M", "relay scenario: size of the big version")
		relayF   = fs.Int("relay-files", 10000, "relay scenario: files of the tree")
		relayFM  = fs.String("relay-file-max", "1K", "relay scenario: largest file of the tree")
		relayT   = fs.String("relay-topologies", "", "relay scenario: star,tree (default both)")
		relayP   = fs.String("relay-payloads", "", "relay scenario: big,tree (default both)")
		propN    = fs.Int("prop-n", 50, "propagation scenario: followers")
		propF    = fs.Int("prop-files", 10000, "propagation scenario: files of the tree")
		propFM   = fs.String("prop-file-max", "1K", "propagation scenario: largest file of the tree")
		propC    = fs.Int("prop-changes", 20, "propagation scenario: one-file changes")
		propB    = fs.Int("prop-bulk", 1000, "propagation scenario: files of the bulk change")
		propBar  = fs.Bool("prop-barrier", true, "propagation scenario: also the one-file changes with --barrier")
		quietW   = fs.Duration("quiet-wait", 0, "before each run, wait up to this long for other load to settle")
		only     = fs.String("only", "", "comma-separated scenarios: single,fanout,latency,small,memory,tree,treemem,relay,propagation")
		meta     = fs.String("meta", "", "KEY=VALUE;... facts for the report (go, rsync, commit, date)")
		strict   = fs.Bool("strict", false, "exit 3 if a target fails (never in quick mode)")
		merge    = fs.Bool("merge", false, "merge this run's scenarios into the existing -o report instead of replacing it")
		timeout  = fs.Duration("timeout", 2*time.Hour, "abort the whole suite after this long")
	)
	fs.Parse(args)
	if *binDir == "" || *work == "" {
		return fmt.Errorf("-bin and -work are required")
	}
	parse := func(name, v string) int64 {
		n, err := bench.ParseSize(v)
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "zbench suite: %s: bad size %q\n", name, v)
			os.Exit(2)
		}
		return n
	}
	cfg := bench.Config{
		Bin: *binDir, Work: *work, Quick: *quick, Rounds: *rounds,
		Size: parse("size", *size), Chunk: int(parse("chunk", *chunk)),
		FanSize: parse("fan-size", *fanSize), FanN: *fanN,
		LatSize: parse("lat-size", *latSize), Delay: *delay, ProxyQueue: int(parse("proxy-queue", *pq)),
		SmallN: *smallN, SmallSize: parse("small-size", *smallSz), SmallOne: parse("small-one", *smallOne), SmallRounds: *smallR,
		MemSize: parse("mem-size", *memSize), MemRounds: *memR, QuietWait: *quietW,
		TreeN: *treeN, TreeDirs: *treeDirs, TreeMax: parse("tree-max", *treeMax), TreeRounds: *treeR, TreeMemN: *treeMemN,
		RelayN: *relayN, RelayRelays: *relayR, RelayRate: *relayRt, RelayMB: parse("relay-size", *relayMB), RelayFiles: *relayF,
		RelayFileMax: parse("relay-file-max", *relayFM),
		PropN:        *propN, PropFiles: *propF, PropFileMax: parse("prop-file-max", *propFM), PropChanges: *propC, PropBulk: *propB, PropBarrier: *propBar,
		Meta: map[string]string{}, Log: os.Stderr,
	}
	if *relayP != "" {
		cfg.RelayPayloads = strings.Split(*relayP, ",")
	}
	if *relayT != "" {
		cfg.RelayTopologies = strings.Split(*relayT, ",")
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	for _, kv := range strings.Split(*meta, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			cfg.Meta[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if cfg.Rounds < 1 || cfg.SmallRounds < 1 || cfg.MemRounds < 1 || cfg.FanN < 1 || cfg.SmallN < 1 ||
		cfg.RelayN < 1 || cfg.RelayFiles < 1 || cfg.PropN < 1 || cfg.PropFiles < 1 || cfg.PropChanges < 1 || cfg.PropBulk < 1 || cfg.PropBulk > cfg.PropFiles {
		return fmt.Errorf("rounds and counts must be >= 1")
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// kill -USR1 prints where the harness is, without stopping it.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "zbench suite: goroutines:\n%s\n", buf[:runtime.Stack(buf, true)])
		}
	}()
	// Whatever happens, leave no process behind.
	stopKill := context.AfterFunc(ctx, bench.KillAll)
	defer stopKill()
	defer bench.KillAll()

	s := bench.NewSuite(cfg)
	runErr := s.Run(ctx)
	if runErr != nil && ctx.Err() != nil {
		return fmt.Errorf("aborted: %w", runErr)
	}
	res := s.Results()
	if *jsonOut != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if *merge {
		if err := mergeReport(res, *out); err != nil {
			return err
		}
	} else if err := writeReport(res, *out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\nwrote %s\n", *out)
	failedRuns := 0
	for _, sc := range res.Scenarios {
		for _, r := range sc.Runs {
			if r.Err != "" {
				failedRuns++
			}
		}
	}
	for _, t := range res.Targets {
		fmt.Fprintf(os.Stderr, "  %-4s  %-62s %-10s %s\n", t.Status(), t.What, t.Goal, t.Measured)
	}
	if runErr != nil {
		return runErr
	}
	if failedRuns > 0 {
		return fmt.Errorf("%d run(s) failed (see %s)", failedRuns, *out)
	}
	if *strict && !*quick {
		for _, t := range res.Targets {
			if !t.Pass && !t.Missing {
				fmt.Fprintln(os.Stderr, "zbench suite: a target failed (-strict)")
				os.Exit(3)
			}
		}
	}
	return nil
}

func writeReport(res *bench.Results, path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := res.WriteMarkdown(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// mergeReport merges the run into the report at path (a new report if
// there is none yet).
func mergeReport(res *bench.Results, path string) error {
	old, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return writeReport(res, path)
	} else if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := res.MergeMarkdown(string(old), f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("json", "", "results file written by zbench suite -json")
	out := fs.String("o", "BENCHMARKS.md", "Markdown report to write")
	merge := fs.Bool("merge", false, "merge the results' scenarios into the existing -o report")
	fs.Parse(args)
	b, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var res bench.Results
	if err := json.Unmarshal(b, &res); err != nil {
		return err
	}
	res.Targets = bench.ComputeTargets(res.Scenarios)
	if *merge {
		return mergeReport(&res, *out)
	}
	return writeReport(&res, *out)
}
