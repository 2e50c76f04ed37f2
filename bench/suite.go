package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes one run of the suite (see scripts/bench.sh for the
// environment knobs that fill it).
type Config struct {
	Bin  string // directory holding zsend, zrecv and zbench
	Work string // scratch directory (sources and outputs, same disk)

	Quick       bool
	Rounds      int   // rounds of the single-stream, fan-out and latency scenarios
	Size        int64 // single-stream file
	Chunk       int   // chunk size of the raw baselines (zsend's default is 1 MiB)
	FanSize     int64
	FanN        int
	LatSize     int64
	Delay       time.Duration // one-way delay of the proxy
	ProxyQueue  int           // bytes the proxy may hold per direction
	SmallN      int
	SmallSize   int64
	SmallOne    int64 // the single file the small files are compared with
	SmallRounds int
	MemSize     int64
	MemRounds   int
	TreeN       int   // files of the tree scenarios
	TreeDirs    int   // directories they are spread over
	TreeMax     int64 // largest file of the tree (sizes are uniform in 0..TreeMax)
	TreeRounds  int
	TreeMemN    int // entries of the tree-memory scenario
	// The relay scenario (issue 12): RelayN receiving nodes; the tree has
	// RelayRelays relays among them (0: round(sqrt(RelayN))); every server
	// limited to RelayRate ("" or "0": unlimited); payloads: a RelayMB
	// version and one file changed in a tree of RelayFiles files of
	// 0..RelayFileMax bytes; RelayTopologies: star, tree (both if empty).
	RelayN          int
	RelayRelays     int
	RelayRate       string
	RelayMB         int64
	RelayFiles      int
	RelayFileMax    int64
	RelayTopologies []string
	RelayPayloads   []string // big, tree (both if empty)
	// The propagation scenario (issue 10): PropN followers of a tree of
	// PropFiles files of 0..PropFileMax bytes served with zsend --watch;
	// PropChanges one-file changes one by one, then PropBulk files at
	// once, then (PropBarrier) PropChanges changes again with --barrier.
	PropN       int
	PropFiles   int
	PropFileMax int64
	PropChanges int
	PropBulk    int
	PropBarrier bool
	QuietWait   time.Duration // wait up to this long for other load to settle before each run
	Only        []string      // scenario keys to run (all if empty)

	Meta map[string]string `json:"meta"` // machine and build facts from the script
	Log  io.Writer         `json:"-"`
}

// Run is one measured run of one contender.
type Run struct {
	Contender string     `json:"contender"`
	Round     int        `json:"round"`
	Bytes     int64      `json:"bytes"`  // payload delivered (all receivers)
	Wall      float64    `json:"wall_s"` // timed span: receiver start to (last) receiver exit
	Procs     []ProcStat `json:"procs"`
	Rates     []float64  `json:"rates_mbps,omitempty"` // per receiver, MB/s (fan-out)
	Err       string     `json:"error,omitempty"`
	// Fleet holds the figures of the fleet scenarios (relay, propagation).
	Fleet *FleetFigures `json:"fleet,omitempty"`
	// OtherCPU is CPU time the machine spent during the run outside the
	// measured processes and the harness: kernel threads (writeback,
	// softirq) and anything else running. A large value means interference.
	OtherCPU float64 `json:"other_cpu_s"`
	// Quiet is false if the machine did not become quiet before the run
	// within the wait allowed.
	Quiet bool `json:"quiet"`
}

// Rate is the throughput of the run in MB/s.
func (r Run) Rate() float64 { return MBps(r.Bytes, r.Wall) }

// Contender is one way of moving the data in a scenario.
type Contender struct {
	Name string `json:"name"`
	Note string `json:"note,omitempty"`
	run  func(ctx context.Context) (Run, error)
}

// Scenario is a set of contenders run alternately, round by round.
type Scenario struct {
	Key        string      `json:"key"`
	Title      string      `json:"title"`
	Desc       string      `json:"desc"`
	Rounds     int         `json:"rounds"`
	Bytes      int64       `json:"bytes"`   // largest payload of one run, for the watchdog
	Sources    []string    `json:"sources"` // source files (or directories), read into the page cache before every run
	Contenders []Contender `json:"contenders"`
	Runs       []Run       `json:"runs"`
	// KeepOutputs keeps every run's output until the scenario ends,
	// instead of deleting it after the run: see outDir.
	KeepOutputs bool `json:"keep_outputs,omitempty"`
	// Settle, if set, is waited (after a sync(2)) before every run, so
	// that files the runs before deleted no longer cost this one: ext4
	// without a journal (this machine's) skips, when it allocates an
	// inode, every inode freed in the last 5 s (300 s while its inode
	// table block is not yet written back), and creating thousands of
	// files right after deleting thousands pays for that scan.
	Settle time.Duration `json:"settle,omitempty"`
}

// Suite runs the scenarios.
type Suite struct {
	cfg       Config
	src       string
	hashes    map[string]string // source name -> BLAKE3 hex
	Scenarios []*Scenario
	Floor     int64 // peak RSS reported for /bin/true through the launcher
	// TouchCost is the cost of first touching fresh anonymous memory, in
	// microseconds per 4 KiB page, at the start and the end of the run.
	TouchCost [2]float64
	Started   time.Time
	Finished  time.Time
	outSeq    int // makes every output directory a new one

	treeBytes, memTreeBytes int64 // sizes of the generated trees
	relTreeBytes            int64 // the relay scenario's tree
	propTreeBytes           int64 // the propagation scenario's tree
	relRound, propRound     int   // changes made so far (each gives new content)
}

// NewSuite prepares a suite; Run generates the data and runs it.
func NewSuite(cfg Config) *Suite {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Chunk == 0 {
		cfg.Chunk = 1 << 20
	}
	return &Suite{cfg: cfg, src: filepath.Join(cfg.Work, "src"), hashes: map[string]string{}}
}

// Config returns the suite's configuration.
func (s *Suite) Config() Config { return s.cfg }

func (s *Suite) logf(format string, args ...any) {
	fmt.Fprintf(s.cfg.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (s *Suite) want(key string) bool {
	if len(s.cfg.Only) == 0 {
		// The fleet scenarios run hundreds of processes for minutes:
		// only when named.
		return key != "relay" && key != "propagation"
	}
	for _, k := range s.cfg.Only {
		if k == key {
			return true
		}
	}
	return false
}

func (s *Suite) bin(name string) string { return filepath.Join(s.cfg.Bin, name) }

// timeout bounds one process of a run moving n bytes: generous (10 MB/s
// plus a minute) so that slow machines report instead of failing.
func timeoutFor(n int64) time.Duration {
	return time.Minute + time.Duration(float64(n)/10e6*float64(time.Second))
}

// Run generates the data, runs every scenario and returns the first
// infrastructure error (contender failures are recorded in the runs).
func (s *Suite) Run(ctx context.Context) error {
	s.Started = time.Now()
	defer func() { s.Finished = time.Now() }()
	if zrun := s.bin("zrun"); fileExists(zrun) {
		Launcher.Path, Launcher.Dir = zrun, filepath.Join(s.cfg.Work, "stats")
		if err := os.MkdirAll(Launcher.Dir, 0o755); err != nil {
			return err
		}
		if p, err := Start("floor", nil, "true"); err == nil {
			if st, err := p.Wait(10 * time.Second); err == nil {
				s.Floor = st.MaxRSS
			}
		}
	}
	s.TouchCost[0] = PageTouchCost()
	defer func() { s.TouchCost[1] = PageTouchCost() }()
	if err := s.generate(); err != nil {
		return fmt.Errorf("generating data: %w", err)
	}
	s.build()
	for _, sc := range s.Scenarios {
		if err := s.runScenario(ctx, sc); err != nil {
			return err
		}
	}
	return nil
}

// PageTouchCost maps 256 MiB of fresh anonymous memory, writes one byte
// in each 4 KiB page and returns the time per page in microseconds (the
// page fault, zeroing, and on a virtual machine whatever the host does to
// back the page). NaN if the mapping fails.
func PageTouchCost() float64 {
	const size, page = 256 << 20, 4096
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return math.NaN()
	}
	defer unix.Munmap(b)
	t0 := time.Now()
	for i := 0; i < size; i += page {
		b[i] = 1
	}
	return float64(time.Since(t0).Microseconds()) / (size / page)
}

// machineBusy returns the CPU seconds all CPUs have spent not idle since
// boot (user, nice, system, irq, softirq, steal from /proc/stat).
func machineBusy() float64 {
	f := strings.Fields(strings.SplitN(readFile("/proc/stat"), "\n", 2)[0])
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / 100 // USER_HZ
}

// selfCPU is the harness process's own CPU seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// waitQuiet waits up to max for a 300 ms window in which the machine is
// less than 15% of one CPU busy, and reports whether it saw one. With
// max <= 0 it looks at one window and does not wait.
func waitQuiet(ctx context.Context, max time.Duration) bool {
	deadline := time.Now().Add(max)
	for {
		b0 := machineBusy()
		select {
		case <-ctx.Done():
			return false
		case <-time.After(300 * time.Millisecond):
		}
		if (machineBusy()-b0)/0.3 < 0.15 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// rmemMax is the third field of net.ipv4.tcp_rmem (Linux's default 6 MiB
// if unreadable).
func rmemMax() int64 {
	f := strings.Fields(readFile("/proc/sys/net/ipv4/tcp_rmem"))
	if len(f) == 3 {
		if n, err := strconv.ParseInt(f[2], 10, 64); err == nil {
			return n
		}
	}
	return 6 << 20
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (s *Suite) generate() error {
	c := s.cfg
	if err := os.MkdirAll(filepath.Join(s.src, "small"), 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		size int64
		need bool
	}{
		{"big.bin", c.Size, s.want("single")},
		{"fan.bin", c.FanSize, s.want("fanout")},
		{"lat.bin", c.LatSize, s.want("latency")},
		{"one.bin", c.SmallOne, s.want("small")},
		{"mem.bin", c.MemSize, s.want("memory")},
	}
	seed := uint64(1)
	for _, f := range files {
		seed++
		if !f.need {
			continue
		}
		t0 := time.Now()
		h, err := GenFile(filepath.Join(s.src, f.name), f.size, seed)
		if err != nil {
			return err
		}
		s.hashes[f.name] = h
		s.logf("generated %s (%s) in %.1fs", f.name, FormatSize(f.size), time.Since(t0).Seconds())
	}
	if s.want("small") {
		for i := 0; i < c.SmallN; i++ {
			seed++
			name := fmt.Sprintf("small/f%04d", i)
			h, err := GenFile(filepath.Join(s.src, name), c.SmallSize, seed)
			if err != nil {
				return err
			}
			s.hashes[name] = h
		}
		s.logf("generated %d files of %s", c.SmallN, FormatSize(c.SmallSize))
	}
	if err := s.generateTrees(); err != nil {
		return err
	}
	if err := s.generateFleets(); err != nil {
		return err
	}
	syscall.Sync()
	return nil
}

// build defines the scenarios and their contenders.
func (s *Suite) build() {
	c := s.cfg
	if s.want("single") {
		sc := &Scenario{Key: "single", Sources: []string{"big.bin"}, Rounds: c.Rounds, Bytes: c.Size,
			Title: fmt.Sprintf("Single stream: one %s random file", FormatSize(c.Size)),
			Desc: fmt.Sprintf("One receiver fetches one file over loopback. Throughput is the file size over the receiver process's wall time "+
				"(start to exit: connect, transfer, verification, fsync, rename where the tool does them). Raw baselines use %s frames/writes.",
				FormatSize(int64(c.Chunk)))}
		sc.Contenders = []Contender{
			{Name: "zsend -> zrecv", Note: "default settings: BLAKE3 per chunk and per file, credit flow control, fsync + atomic rename",
				run: func(ctx context.Context) (Run, error) { return s.zsendOne(ctx, "big.bin", nil) }},
			{Name: "zsend -> zrecv, CURVE", Note: "as above, with CURVE (RFC 26): zsend --curve-secret --allow DIR, zrecv --server-key --curve-secret; every frame boxed (XSalsa20-Poly1305)",
				run: func(ctx context.Context) (Run, error) { return s.zsendOne(ctx, "big.bin", s.curveArgs) }},
			{Name: "raw zmq4, discard", Note: fmt.Sprintf("ROUTER -> DEALER, %s frames, no protocol, no hashing; receiver drops the data", FormatSize(int64(c.Chunk))),
				run: func(ctx context.Context) (Run, error) { return s.zmqOne(ctx, "big.bin", zmqDiscard) }},
			{Name: "raw zmq4, write + fsync", Note: "as above; receiver writes a file (through the page cache) and fsyncs it at the end",
				run: func(ctx context.Context) (Run, error) { return s.zmqOne(ctx, "big.bin", zmqWrite) }},
			{Name: "raw zmq4, O_DIRECT write + fsync", Note: "as above, but the receiver writes with O_DIRECT (staged in an aligned buffer, bypassing the page cache), as zrecv now does for large files",
				run: func(ctx context.Context) (Run, error) { return s.zmqOne(ctx, "big.bin", zmqDirect) }},
			{Name: "rsync --whole-file", Note: "rsync daemon on 127.0.0.1, fresh per run",
				run: func(ctx context.Context) (Run, error) { return s.rsyncOne(ctx, "big.bin", false) }},
			{Name: "rsync --whole-file --fsync", Note: "as above, fsync every written file",
				run: func(ctx context.Context) (Run, error) { return s.rsyncOne(ctx, "big.bin", true) }},
			{Name: "plain TCP, write + fsync", Note: fmt.Sprintf("Go, %s read/write loops, receiver fsyncs at the end", FormatSize(int64(c.Chunk))),
				run: func(ctx context.Context) (Run, error) { return s.tcpOne(ctx, "big.bin", true, false) }},
			{Name: "plain TCP, discard", Note: "Go, receiver drops the data (the loopback ceiling)",
				run: func(ctx context.Context) (Run, error) { return s.tcpOne(ctx, "big.bin", false, false) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
	if s.want("fanout") {
		sc := &Scenario{Key: "fanout", Sources: []string{"fan.bin"}, Rounds: c.Rounds, Bytes: int64(c.FanN) * c.FanSize,
			Title: fmt.Sprintf("Fan-out: %d concurrent zrecv of one %s file from one zsend", c.FanN, FormatSize(c.FanSize)),
			Desc: fmt.Sprintf("Aggregate throughput is %d x the file size over the time from the first receiver's start to the last receiver's exit. "+
				"Each receiver writes its own output directory. Receiver CPU is the sum over all receivers; receiver RSS is the largest of them.", c.FanN)}
		sc.Contenders = []Contender{
			{Name: "1 x zrecv", Note: "single receiver, same file",
				run: func(ctx context.Context) (Run, error) { return s.zsendFan(ctx, "fan.bin", 1) }},
			{Name: fmt.Sprintf("%d x zrecv", c.FanN), Note: "all started at once",
				run: func(ctx context.Context) (Run, error) { return s.zsendFan(ctx, "fan.bin", c.FanN) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
	if s.want("latency") {
		sc := &Scenario{Key: "latency", Sources: []string{"lat.bin"}, Rounds: c.Rounds, Bytes: c.LatSize,
			Title: fmt.Sprintf("High latency: %s through a proxy adding %v each way", FormatSize(c.LatSize), c.Delay),
			Desc: fmt.Sprintf("Both contenders go through the same kind of delay proxy (internal/faultproxy in its own process, fresh per run). "+
				"The proxy reads eagerly on loopback and holds up to %s per direction, so plain TCP through it is bounded only by that queue "+
				"(%s per %v one-way: %.0f MB/s), not by the kernel's TCP windows. A windowed protocol gets at most window / RTT: zrecv's default "+
				"maximum credit window of 64 MiB over a %v RTT is %.0f MB/s. On a real link of that RTT, TCP itself would be bounded by its receive "+
				"window, at most tcp_rmem max (%s here, of which the kernel advertises roughly half to all): %.0f-%.0f MB/s.",
				FormatSize(int64(c.ProxyQueue)), FormatSize(int64(c.ProxyQueue)), c.Delay, float64(c.ProxyQueue)/c.Delay.Seconds()/1e6,
				2*c.Delay, float64(64<<20)/(2*c.Delay.Seconds())/1e6,
				FormatSize(rmemMax()), float64(rmemMax())/2/(2*c.Delay.Seconds())/1e6, float64(rmemMax())/(2*c.Delay.Seconds())/1e6)}
		sc.Contenders = []Contender{
			{Name: "zsend -> proxy -> zrecv", Note: "default settings (credit window 8 MiB, auto-tuned up to 64 MiB)",
				run: func(ctx context.Context) (Run, error) { return s.zsendLatency(ctx, "lat.bin") }},
			{Name: "plain TCP via proxy, write + fsync", Note: "the Go TCP copy through the same proxy",
				run: func(ctx context.Context) (Run, error) { return s.tcpOne(ctx, "lat.bin", true, true) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
	if s.want("small") {
		total := int64(c.SmallN) * c.SmallSize
		sc := &Scenario{Key: "small", Sources: []string{"small", "one.bin"}, Rounds: c.SmallRounds, Bytes: int64(c.SmallN) * (c.SmallSize + 100<<10), KeepOutputs: true,
			Title: fmt.Sprintf("Many small files: %d x %s vs one %s file", c.SmallN, FormatSize(c.SmallSize), FormatSize(c.SmallOne)),
			Desc: fmt.Sprintf("One zrecv invocation fetches all %d files (%s in all; zsend serves the directory; the names are passed as arguments, small/f0000 ...), "+
				"against one zrecv fetching a single %s file. Time is the zrecv process's wall time, startup included (about the same for both).",
				c.SmallN, FormatSize(total), FormatSize(c.SmallOne))}
		sc.Contenders = []Contender{
			{Name: fmt.Sprintf("%d x %s", c.SmallN, FormatSize(c.SmallSize)), Note: "one zrecv, one session, every file fsynced and renamed",
				run: func(ctx context.Context) (Run, error) { return s.zsendSmall(ctx) }},
			{Name: fmt.Sprintf("1 x %s", FormatSize(c.SmallOne)),
				run: func(ctx context.Context) (Run, error) { return s.zsendOne(ctx, "one.bin", nil) }},
			{Name: fmt.Sprintf("local floor: create %d x %s", c.SmallN, FormatSize(c.SmallSize)),
				Note: "no network, no hashing: one process creating the files with zrecv's steps for a file of one chunk (unnamed file, write, mode, mtime; per 128 files one syncfs, a link per file, one directory fsync), to show what the file system alone costs",
				run:  func(ctx context.Context) (Run, error) { return s.localFloor(ctx) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
	if s.want("memory") {
		sc := &Scenario{Key: "memory", Sources: []string{"mem.bin"}, Rounds: c.MemRounds, Bytes: c.MemSize,
			Title: fmt.Sprintf("Memory: one %s file, default settings", FormatSize(c.MemSize)),
			Desc:  "Peak RSS (ru_maxrss from wait4) of a fresh zsend and of zrecv for one large file."}
		sc.Contenders = []Contender{
			{Name: "zsend -> zrecv", Note: "default settings",
				run: func(ctx context.Context) (Run, error) { return s.zsendOne(ctx, "mem.bin", nil) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
	s.buildTrees()
	s.buildFleets()
}

func (s *Suite) runScenario(ctx context.Context, sc *Scenario) error {
	n := len(sc.Contenders)
	for r := 0; r < sc.Rounds; r++ {
		for i := 0; i < n; i++ {
			// Rotate the order every round so no contender always runs
			// first (or right after the heaviest writer).
			ct := sc.Contenders[(i+r)%n]
			if err := ctx.Err(); err != nil {
				return err
			}
			if sc.Settle > 0 {
				syscall.Sync()
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(sc.Settle):
				}
			}
			if err := s.warm(sc.Sources); err != nil {
				return err
			}
			quiet := waitQuiet(ctx, s.cfg.QuietWait)
			busy0, self0 := machineBusy(), selfCPU()
			// Every wait in a run is bounded; the watchdog is the net under
			// those bounds: it reports where the harness is stuck and kills
			// every process, which unblocks the run.
			bound := 2*timeoutFor(sc.Bytes) + 2*time.Minute
			wd := time.AfterFunc(bound, func() {
				buf := make([]byte, 1<<20)
				s.logf("watchdog: [%s] %s still running after %v; killing its processes. Goroutines:\n%s", sc.Key, ct.Name, bound, buf[:runtime.Stack(buf, true)])
				KillAll()
			})
			run, err := ct.run(ctx)
			wd.Stop()
			other := machineBusy() - busy0 - (selfCPU() - self0)
			for _, p := range run.Procs {
				other -= p.CPU()
			}
			run.OtherCPU = max(other, 0)
			run.Quiet = quiet
			run.Contender = ct.Name
			run.Round = r + 1
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				run.Err = firstLines(err.Error(), 6)
				s.logf("[%s] round %d %-34s FAILED: %v", sc.Key, r+1, ct.Name, err)
			} else {
				s.logf("[%s] round %d %-34s %8.1f MB/s  %6.2fs  %s other cpu %.2fs%s", sc.Key, r+1, ct.Name, run.Rate(), run.Wall,
					procSummary(run.Procs), run.OtherCPU, map[bool]string{true: "", false: " (machine busy before the run)"}[quiet])
			}
			sc.Runs = append(sc.Runs, run)
			if !sc.KeepOutputs {
				s.cleanOut()
			}
		}
	}
	s.cleanOut()
	syscall.Sync()
	return nil
}

func procSummary(ps []ProcStat) string {
	var b strings.Builder
	for _, p := range ps {
		if strings.HasPrefix(p.Role, "receiver ") || strings.HasPrefix(p.Role, "relay ") {
			continue // fan-out: the per-receiver lines would be noise
		}
		fmt.Fprintf(&b, " %s cpu %.2fs rss %.0fMiB;", p.Role, p.CPU(), MiB(p.MaxRSS))
	}
	return b.String()
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, "\n")
}

// warm reads the sources through, so every run starts with them in the page
// cache even where the kernel reclaims cold pages in the background (see
// the machine table: DAMON).
func (s *Suite) warm(names []string) error {
	buf := make([]byte, 1<<20)
	for _, n := range names {
		err := filepath.WalkDir(filepath.Join(s.src, n), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
			return err
		})
		if err != nil {
			return fmt.Errorf("warming %s: %w", n, err)
		}
	}
	return nil
}

// outDir returns a new, empty output directory and makes sure earlier
// runs' writes are on disk, so they are not charged to this run.
//
// The directory is always a new one, so a run never follows the deletion
// of its predecessor's files directly. That matters on ext4 without a
// journal (as on the machines we measured; see the machine table): its
// inode allocator passes over inodes freed in the last minute or more
// (recently_deleted), one by one, so creating 1000 files right after
// deleting 1000 spent most of its time in that scan (perf: 50% of the
// receiver's CPU). The small-files scenario also keeps its outputs until
// it ends (Scenario.KeepOutputs).
func (s *Suite) outDir(name string) (string, error) {
	s.outSeq++
	d := filepath.Join(s.cfg.Work, "out", fmt.Sprintf("%s-%d", name, s.outSeq))
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	syscall.Sync()
	return d, nil
}

func (s *Suite) cleanOut() {
	_ = os.RemoveAll(filepath.Join(s.cfg.Work, "out"))
}

func (s *Suite) verify(path, name string) error {
	h, _, err := HashFile(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", name, err)
	}
	if h != s.hashes[name] {
		return fmt.Errorf("verify %s: BLAKE3 %s, want %s", name, h, s.hashes[name])
	}
	return nil
}

func (s *Suite) size(name string) int64 {
	st, err := os.Stat(filepath.Join(s.src, name))
	if err != nil {
		return 0
	}
	return st.Size()
}

var (
	reZsend = regexp.MustCompile(`serving \d+ path\(s\) on (tcp://\S+)`)
	reReady = regexp.MustCompile(`^zbench: ready (\S+)`)
	reRsync = regexp.MustCompile(`rsyncd version .* starting`)
)

const startTimeout = 20 * time.Second

func (s *Suite) startZsend(paths ...string) (*Proc, string, error) {
	return s.startZsendArgs(nil, paths...)
}

func (s *Suite) startZsendArgs(extra []string, paths ...string) (*Proc, string, error) {
	// The state directory (published versions) lives on the scratch disk,
	// never in the user's home.
	args := append(append([]string{"-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(s.cfg.Work, "zsend-state")}, extra...), paths...)
	p, err := Start("sender", nil, s.bin("zsend"), args...)
	if err != nil {
		return nil, "", err
	}
	m, err := p.WaitLine(reZsend, startTimeout)
	if err != nil {
		p.Kill()
		return nil, "", err
	}
	return p, m[1], nil
}

func (s *Suite) startTool(role string, args ...string) (*Proc, string, error) {
	p, err := Start(role, nil, s.bin("zbench"), args...)
	if err != nil {
		return nil, "", err
	}
	m, err := p.WaitLine(reReady, startTimeout)
	if err != nil {
		p.Kill()
		return nil, "", err
	}
	return p, m[1], nil
}

// stopServer ends a long-running server with SIGTERM and returns its
// measurements (it is not an error for it to die of that signal).
func stopServer(p *Proc) (ProcStat, error) {
	return p.Stop(syscall.SIGTERM, 20*time.Second)
}

// curveKeys makes (once) a server pair, a client pair and an allow
// directory listing the client, with the commands' own --keygen.
func (s *Suite) curveKeys() (server, client, allow string, err error) {
	dir := filepath.Join(s.cfg.Work, "curve")
	server, client, allow = filepath.Join(dir, "server"), filepath.Join(dir, "client"), filepath.Join(dir, "allow")
	if _, err := os.Stat(allow); err == nil {
		return server, client, allow, nil
	}
	if err := os.MkdirAll(allow, 0o755); err != nil {
		return "", "", "", err
	}
	for _, k := range []string{server, client} {
		if out, err := exec.Command(s.bin("zsend"), "--keygen", k).CombinedOutput(); err != nil {
			return "", "", "", fmt.Errorf("zsend --keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(client)
	if err != nil {
		return "", "", "", err
	}
	return server, client, allow, os.WriteFile(filepath.Join(allow, "client"), pub, 0o644)
}

// curveArgs returns the zsend and zrecv flags of a CURVE run.
func (s *Suite) curveArgs() ([]string, []string, error) {
	server, client, allow, err := s.curveKeys()
	if err != nil {
		return nil, nil, err
	}
	return []string{"--curve-secret", server + "_secret", "--allow", allow},
		[]string{"--server-key", server, "--curve-secret", client + "_secret"}, nil
}

// zsendOne: fresh zsend serving the named source, one zrecv fetching it;
// flags, if set, gives extra zsend and zrecv flags.
func (s *Suite) zsendOne(ctx context.Context, name string, flags func() ([]string, []string, error)) (Run, error) {
	var sflags, rflags []string
	if flags != nil {
		var err error
		if sflags, rflags, err = flags(); err != nil {
			return Run{}, err
		}
	}
	out, err := s.outDir("zrecv")
	if err != nil {
		return Run{}, err
	}
	srv, ep, err := s.startZsendArgs(sflags, filepath.Join(s.src, name))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	size := s.size(name)
	cli, err := Start("receiver", nil, s.bin("zrecv"), append(append([]string{"-q", "-o", out}, rflags...), ep, name)...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(size))
	sst, serr := stopServer(srv)
	run := Run{Bytes: size, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	return run, s.verify(filepath.Join(out, name), name)
}

// zsendFan: fresh zsend, n zrecv started together, each into its own dir.
func (s *Suite) zsendFan(ctx context.Context, name string, n int) (Run, error) {
	srv, ep, err := s.startZsend(filepath.Join(s.src, name))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	size := s.size(name)
	outs := make([]string, n)
	for i := range outs {
		if outs[i], err = s.outDir(fmt.Sprintf("r%d", i)); err != nil {
			return Run{}, err
		}
	}
	clis := make([]*Proc, 0, n)
	defer func() {
		for _, c := range clis {
			c.Kill()
		}
	}()
	for i := 0; i < n; i++ {
		role := "receiver"
		if n > 1 {
			role = fmt.Sprintf("receiver %d", i+1)
		}
		c, err := Start(role, nil, s.bin("zrecv"), "-q", "-o", outs[i], ep, name)
		if err != nil {
			return Run{}, err
		}
		clis = append(clis, c)
	}
	var errs []error
	run := Run{Bytes: int64(n) * size}
	var first, last time.Time
	var sts []ProcStat
	deadline := time.Now().Add(timeoutFor(int64(n) * size))
	for _, c := range clis {
		st, err := c.WaitUntil(deadline)
		errs = append(errs, err)
		sts = append(sts, st)
		run.Rates = append(run.Rates, MBps(size, st.Wall))
		if first.IsZero() || c.Started().Before(first) {
			first = c.Started()
		}
		if c.Ended().After(last) {
			last = c.Ended()
		}
	}
	run.Wall = last.Sub(first).Seconds()
	sst, serr := stopServer(srv)
	run.Procs = append([]ProcStat{sst}, sts...)
	errs = append(errs, serr)
	if err := errors.Join(errs...); err != nil {
		return run, err
	}
	for i := range outs {
		if err := s.verify(filepath.Join(outs[i], name), name); err != nil {
			return run, err
		}
	}
	return run, nil
}

// zsendLatency: fresh zsend, a fresh delay proxy in front of it, zrecv
// through the proxy.
func (s *Suite) zsendLatency(ctx context.Context, name string) (Run, error) {
	out, err := s.outDir("zrecv")
	if err != nil {
		return Run{}, err
	}
	srv, ep, err := s.startZsend(filepath.Join(s.src, name))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	px, paddr, err := s.startProxy(strings.TrimPrefix(ep, "tcp://"))
	if err != nil {
		return Run{}, err
	}
	defer px.Kill()
	size := s.size(name)
	cli, err := Start("receiver", nil, s.bin("zrecv"), "-q", "-o", out, "tcp://"+paddr, name)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(size))
	pst, perr := stopServer(px)
	sst, serr := stopServer(srv)
	run := Run{Bytes: size, Wall: cst.Wall, Procs: []ProcStat{sst, cst, pst}}
	if err := errors.Join(cerr, perr, serr); err != nil {
		return run, err
	}
	return run, s.verify(filepath.Join(out, name), name)
}

func (s *Suite) startProxy(target string) (*Proc, string, error) {
	return s.startTool("proxy", "delayproxy", "-target", target, "-delay", s.cfg.Delay.String(),
		"-queue", strconv.Itoa(s.cfg.ProxyQueue), "-timeout", "30m")
}

// zsendSmall: fresh zsend serving the small-files directory, one zrecv
// naming every file.
func (s *Suite) zsendSmall(ctx context.Context) (Run, error) {
	out, err := s.outDir("zrecv")
	if err != nil {
		return Run{}, err
	}
	srv, ep, err := s.startZsend(filepath.Join(s.src, "small"))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	names := make([]string, s.cfg.SmallN)
	for i := range names {
		names[i] = fmt.Sprintf("small/f%04d", i)
	}
	total := int64(s.cfg.SmallN) * s.cfg.SmallSize
	cli, err := Start("receiver", nil, s.bin("zrecv"), append([]string{"-q", "-o", out, ep}, names...)...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(total) + time.Duration(s.cfg.SmallN)*100*time.Millisecond)
	sst, serr := stopServer(srv)
	run := Run{Bytes: total, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	for _, n := range names {
		if err := s.verify(filepath.Join(out, n), n); err != nil {
			return run, err
		}
	}
	return run, nil
}

// localFloor: zbench mkfiles, the file-system work of the small-files
// fetch without the transfer.
func (s *Suite) localFloor(ctx context.Context) (Run, error) {
	out, err := s.outDir("floor")
	if err != nil {
		return Run{}, err
	}
	total := int64(s.cfg.SmallN) * s.cfg.SmallSize
	p, err := Start("receiver", nil, s.bin("zbench"), "mkfiles", "-n", strconv.Itoa(s.cfg.SmallN),
		"-size", strconv.FormatInt(s.cfg.SmallSize, 10), out)
	if err != nil {
		return Run{}, err
	}
	defer p.Kill()
	st, err := p.Wait(timeoutFor(total) + time.Duration(s.cfg.SmallN)*100*time.Millisecond)
	return Run{Bytes: total, Wall: st.Wall, Procs: []ProcStat{st}}, err
}

const (
	zmqDiscard = iota
	zmqWrite
	zmqDirect
)

// zmqOne: the raw zmq4 baseline, two processes.
func (s *Suite) zmqOne(ctx context.Context, name string, mode int) (Run, error) {
	write := mode != zmqDiscard
	out, err := s.outDir("zmq")
	if err != nil {
		return Run{}, err
	}
	size := s.size(name)
	srv, ep, err := s.startTool("sender", "zmqsend", "-b", "tcp://127.0.0.1:0", "-chunk", strconv.Itoa(s.cfg.Chunk),
		"-timeout", timeoutFor(size).String(), filepath.Join(s.src, name))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	args := []string{"zmqrecv", "-timeout", timeoutFor(size).String()}
	dst := filepath.Join(out, name)
	if write {
		args = append(args, "-o", dst)
	}
	if mode == zmqDirect {
		args = append(args, "-direct")
	}
	cli, err := Start("receiver", nil, s.bin("zbench"), append(args, ep)...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(size))
	sst, serr := srv.Wait(20 * time.Second)
	run := Run{Bytes: size, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	if write {
		return run, s.verify(dst, name)
	}
	return run, nil
}

// tcpOne: the plain TCP baseline, optionally through a fresh delay proxy.
func (s *Suite) tcpOne(ctx context.Context, name string, write, viaProxy bool) (Run, error) {
	out, err := s.outDir("tcp")
	if err != nil {
		return Run{}, err
	}
	size := s.size(name)
	srv, addr, err := s.startTool("sender", "tcpsend", "-l", "127.0.0.1:0", "-chunk", strconv.Itoa(s.cfg.Chunk),
		"-timeout", timeoutFor(size).String(), filepath.Join(s.src, name))
	if err != nil {
		return Run{}, err
	}
	defer srv.Kill()
	var px *Proc
	if viaProxy {
		if px, addr, err = s.startProxy(addr); err != nil {
			return Run{}, err
		}
		defer px.Kill()
	}
	args := []string{"tcprecv", "-chunk", strconv.Itoa(s.cfg.Chunk), "-timeout", timeoutFor(size).String()}
	dst := filepath.Join(out, name)
	if write {
		args = append(args, "-o", dst)
	}
	cli, err := Start("receiver", nil, s.bin("zbench"), append(args, addr)...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(size))
	sst, serr := srv.Wait(20 * time.Second)
	run := Run{Bytes: size, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	errs := []error{cerr, serr}
	if px != nil {
		pst, perr := stopServer(px)
		run.Procs = append(run.Procs, pst)
		errs = append(errs, perr)
	}
	if err := errors.Join(errs...); err != nil {
		return run, err
	}
	if write {
		return run, s.verify(dst, name)
	}
	return run, nil
}

// rsyncOne: a fresh rsync daemon on 127.0.0.1 serving the sources, one
// rsync client pulling the named file with --whole-file.
func (s *Suite) rsyncOne(ctx context.Context, name string, fsync bool) (Run, error) {
	out, err := s.outDir("rsync")
	if err != nil {
		return Run{}, err
	}
	conf := filepath.Join(s.cfg.Work, "rsyncd.conf")
	if _, err := os.Stat(conf); err != nil {
		text := fmt.Sprintf("use chroot = no\nuid = %d\ngid = %d\nlog file = /dev/stderr\nnumeric ids = yes\n\n[bench]\n  path = %s\n  read only = yes\n",
			os.Getuid(), os.Getgid(), s.src)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return Run{}, err
		}
	}
	port, err := FreePort()
	if err != nil {
		return Run{}, err
	}
	d, err := Start("sender", nil, "rsync", "--daemon", "--no-detach", "--address=127.0.0.1",
		"--port="+strconv.Itoa(port), "--config="+conf)
	if err != nil {
		return Run{}, err
	}
	defer d.Kill()
	if _, err := d.WaitLine(reRsync, startTimeout); err != nil {
		return Run{}, err
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), d, startTimeout); err != nil {
		return Run{}, err
	}
	size := s.size(name)
	args := []string{"--whole-file"}
	if fsync {
		args = append(args, "--fsync")
	}
	args = append(args, fmt.Sprintf("rsync://127.0.0.1:%d/bench/%s", port, name), out+"/")
	cli, err := Start("receiver", nil, "rsync", args...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(timeoutFor(size))
	// Let the daemon reap its per-connection child first, so the child's
	// CPU and RSS are included in the daemon's rusage.
	deadline := time.Now().Add(10 * time.Second)
	for len(d.Children()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sst, serr := stopServer(d)
	run := Run{Bytes: size, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	return run, s.verify(filepath.Join(out, name), name)
}

// waitListening waits until something accepts connections at addr without
// connecting to it (a probe connection would cost the rsync daemon a fork):
// it looks the port up in /proc/net/tcp.
func waitListening(addr string, p *Proc, timeout time.Duration) error {
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	want := fmt.Sprintf("0100007F:%04X", port)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !p.Running() {
			return fmt.Errorf("%s exited before listening%s", p.Role, p.tail())
		}
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return nil // cannot tell; the log line was enough
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && f[1] == want && f[3] == "0A" { // 0A = LISTEN
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s: nothing listening on %s after %v", p.Role, addr, timeout)
}
