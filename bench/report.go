package bench

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Results is what the suite writes to JSON and renders to Markdown.
type Results struct {
	Machine   [][2]string `json:"machine"`
	Config    Config      `json:"config"`
	Settings  [][2]string `json:"settings"`
	Quick     bool        `json:"quick"`
	Started   time.Time   `json:"started"`
	Finished  time.Time   `json:"finished"`
	Scenarios []*Scenario `json:"scenarios"`
	Targets   []Target    `json:"targets"`
}

// Target is one stated goal and whether the run met it.
type Target struct {
	Scenario string  `json:"scenario"`
	What     string  `json:"what"`
	Goal     string  `json:"goal"`
	Value    float64 `json:"value"`
	Measured string  `json:"measured"`
	Pass     bool    `json:"pass"`
	Missing  bool    `json:"missing,omitempty"` // not measured (scenario skipped or failed)
}

// Status is PASS, FAIL or n/a.
func (t Target) Status() string {
	switch {
	case t.Missing:
		return "n/a"
	case t.Pass:
		return "PASS"
	default:
		return "FAIL"
	}
}

// Results collects what the suite measured.
func (s *Suite) Results() *Results {
	r := &Results{Config: s.cfg, Quick: s.cfg.Quick, Started: s.Started, Finished: s.Finished, Scenarios: s.Scenarios}
	r.Machine = MachineInfo(s.cfg.Work, s.cfg.Meta)
	if s.Floor > 0 {
		r.Machine = append(r.Machine, [2]string{"peak RSS floor", fmt.Sprintf("%.1f MiB (what /bin/true reports through the zrun launcher; no figure below can be lower)", MiB(s.Floor))})
	} else {
		r.Machine = append(r.Machine, [2]string{"peak RSS floor", "unknown: zrun launcher not used, so every RSS includes the harness's own size"})
	}
	if tc := s.TouchCost; !math.IsNaN(tc[0]) && tc[0] > 0 {
		worst := math.Max(tc[0], tc[1])
		r.Machine = append(r.Machine, [2]string{"fresh memory", fmt.Sprintf("%.2f µs per 4 KiB page at the start, %.2f at the end (first write to newly mapped memory; "+
			"every page-cache page a buffered write allocates pays this too: %.1f s of CPU per GiB at %.2f µs)", tc[0], tc[1], worst*(1<<30/4096)/1e6, worst)})
	}
	c := s.cfg
	r.Settings = [][2]string{
		{"mode", map[bool]string{true: "QUICK=1 (smoke: reduced sizes, 1 round; targets are indicative only)", false: "full"}[c.Quick]},
		{"rounds", fmt.Sprintf("%d (single, fan-out, latency); %d (small files); %d (memory)", c.Rounds, c.SmallRounds, c.MemRounds)},
		{"sizes", fmt.Sprintf("single %s, fan-out %d x %s, latency %s, small %d x %s vs 1 x %s, memory %s",
			FormatSize(c.Size), c.FanN, FormatSize(c.FanSize), FormatSize(c.LatSize), c.SmallN, FormatSize(c.SmallSize), FormatSize(c.SmallOne), FormatSize(c.MemSize))},
		{"raw baselines' chunk", FormatSize(int64(c.Chunk))},
		{"proxy", fmt.Sprintf("%v each way, queue limit %s per direction", c.Delay, FormatSize(int64(c.ProxyQueue)))},
	}
	r.Targets = ComputeTargets(s.Scenarios)
	return r
}

// agg is the per-contender summary over its successful rounds.
type agg struct {
	ok, failed int
	errs       []string
	rate, wall []float64
	roles      []string
	cpu, user  map[string][]float64
	sys        map[string][]float64
	rss        map[string][]float64 // MiB
	spread     []float64            // fan-out: slowest / fastest receiver
	slow, fast []float64            // fan-out: slowest / fastest receiver MB/s
}

func canonRole(r string) string {
	if strings.HasPrefix(r, "receiver ") {
		return "receiver"
	}
	if strings.HasPrefix(r, "relay ") {
		return "relay"
	}
	if strings.HasPrefix(r, "sender ") {
		return "sender"
	}
	return r
}

func summarize(sc *Scenario, name string) *agg {
	a := &agg{cpu: map[string][]float64{}, user: map[string][]float64{}, sys: map[string][]float64{}, rss: map[string][]float64{}}
	for _, run := range sc.Runs {
		if run.Contender != name {
			continue
		}
		if run.Err != "" {
			a.failed++
			a.errs = append(a.errs, fmt.Sprintf("round %d: %s", run.Round, run.Err))
			continue
		}
		a.ok++
		a.rate = append(a.rate, run.Rate())
		a.wall = append(a.wall, run.Wall)
		u, sy, rs := map[string]float64{}, map[string]float64{}, map[string]float64{}
		for _, p := range run.Procs {
			r := canonRole(p.Role)
			if !slices.Contains(a.roles, r) {
				a.roles = append(a.roles, r)
			}
			u[r] += p.User
			sy[r] += p.Sys
			rs[r] = math.Max(rs[r], MiB(p.MaxRSS))
		}
		for r := range u {
			a.user[r] = append(a.user[r], u[r])
			a.sys[r] = append(a.sys[r], sy[r])
			a.cpu[r] = append(a.cpu[r], u[r]+sy[r])
			a.rss[r] = append(a.rss[r], rs[r])
		}
		if len(run.Rates) > 1 {
			lo, hi := MinMax(run.Rates)
			a.slow = append(a.slow, lo)
			a.fast = append(a.fast, hi)
			a.spread = append(a.spread, lo/hi)
		}
	}
	return a
}

// largestRSS is the largest peak RSS of a zsend (role sender) or zrecv
// (role receiver) process in any zsend run with a single receiver.
func largestRSS(scs []*Scenario, role string) float64 {
	m := 0.0
	for _, sc := range scs {
		for _, run := range sc.Runs {
			if !strings.HasPrefix(run.Contender, "zsend") && !strings.Contains(run.Contender, "zrecv") && sc.Key != "small" || len(run.Rates) > 1 {
				continue
			}
			for _, p := range run.Procs {
				if canonRole(p.Role) == role {
					m = math.Max(m, MiB(p.MaxRSS))
				}
			}
		}
	}
	return m
}

func maxOf(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return slices.Max(xs)
}

func find(scs []*Scenario, key string) *Scenario {
	for _, sc := range scs {
		if sc.Key == key {
			return sc
		}
	}
	return nil
}

// medianRate returns the median MB/s of a contender, NaN if it has no
// successful run (or any failed run: a contender that failed in any round
// does not get a ratio).
func medianRate(sc *Scenario, name string) float64 {
	if sc == nil {
		return math.NaN()
	}
	a := summarize(sc, name)
	if a.failed > 0 || a.ok == 0 {
		return math.NaN()
	}
	return Median(a.rate)
}

func medianWall(sc *Scenario, name string) float64 {
	if sc == nil {
		return math.NaN()
	}
	a := summarize(sc, name)
	if a.failed > 0 || a.ok == 0 {
		return math.NaN()
	}
	return Median(a.wall)
}

func ratioTarget(scKey, what, goal string, v, min float64) Target {
	t := Target{Scenario: scKey, What: what, Goal: goal, Value: v}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		t.Missing = true
		t.Measured = "not measured"
		t.Value = 0 // JSON has no NaN
		return t
	}
	t.Measured = fmt.Sprintf("%.2fx", v)
	t.Pass = v >= min
	return t
}

// ComputeTargets evaluates the stated goals against the scenarios' runs.
func ComputeTargets(scs []*Scenario) []Target {
	var ts []Target
	single := find(scs, "single")
	z := medianRate(single, "zsend -> zrecv")
	rawT := ratioTarget("single", "zsend -> zrecv vs raw zmq4 that writes + fsyncs", ">= 0.8x", z/medianRate(single, "raw zmq4, write + fsync"), 0.8)
	if d := z / medianRate(single, "raw zmq4, O_DIRECT write + fsync"); !rawT.Missing && !math.IsNaN(d) {
		rawT.Measured += fmt.Sprintf(" (for reference, vs the raw O_DIRECT variant: %.2fx)", d)
	}
	ts = append(ts,
		ratioTarget("single", "zsend -> zrecv vs rsync --whole-file --fsync", ">= 1.5x", z/medianRate(single, "rsync --whole-file --fsync"), 1.5),
		rawT,
		ratioTarget("single", "zsend -> zrecv with CURVE vs without", ">= 0.6x", medianRate(single, "zsend -> zrecv, CURVE")/z, 0.6))
	{
		// CURVE must not cost memory: peak RSS within 8 MiB of plaintext.
		t := Target{Scenario: "single", What: "CURVE peak RSS minus plaintext (zsend, zrecv; max of rounds)", Goal: "<= 8 MiB"}
		var plain, cv *agg
		if single != nil {
			plain, cv = summarize(single, "zsend -> zrecv"), summarize(single, "zsend -> zrecv, CURVE")
		}
		if single != nil && plain.ok > 0 && cv.ok > 0 && plain.failed == 0 && cv.failed == 0 {
			ds := maxOf(cv.rss["sender"]) - maxOf(plain.rss["sender"])
			dr := maxOf(cv.rss["receiver"]) - maxOf(plain.rss["receiver"])
			t.Value = max(ds, dr)
			t.Measured = fmt.Sprintf("%+.1f MiB, %+.1f MiB", ds, dr)
			t.Pass = t.Value <= 8
		} else {
			t.Missing, t.Measured = true, "not measured"
		}
		ts = append(ts, t)
	}

	mem := find(scs, "memory")
	for _, role := range []string{"sender", "receiver"} {
		what := map[string]string{"sender": "zsend peak RSS", "receiver": "zrecv peak RSS"}[role]
		t := Target{Scenario: "memory", What: what + " (one large file)", Goal: "<= 48 MiB"}
		if mem != nil {
			a := summarize(mem, "zsend -> zrecv")
			if a.failed == 0 && a.ok > 0 {
				t.Value = maxOf(a.rss[role])
				t.Measured = fmt.Sprintf("%.1f MiB", t.Value)
				if other := largestRSS(scs, role); other > t.Value {
					t.Measured += fmt.Sprintf(" (largest in any single-receiver run of this suite: %.1f MiB)", other)
				}
				t.Pass = t.Value <= 48
			} else {
				t.Missing, t.Measured = true, "not measured"
			}
		} else {
			t.Missing, t.Measured = true, "not measured"
		}
		ts = append(ts, t)
	}

	fan := find(scs, "fanout")
	var fanName string
	if fan != nil && len(fan.Contenders) > 1 {
		fanName = fan.Contenders[1].Name
	}
	ts = append(ts, ratioTarget("fanout", "fan-out aggregate vs single receiver", ">= 0.9x", medianRate(fan, fanName)/medianRate(fan, "1 x zrecv"), 0.9))
	{
		t := Target{Scenario: "fanout", What: "fan-out slowest vs fastest receiver", Goal: ">= 0.75x"}
		t2 := Target{Scenario: "fanout", What: "fan-out zsend peak RSS", Goal: "<= 64 MiB"}
		if fan != nil {
			a := summarize(fan, fanName)
			if a.failed == 0 && a.ok > 0 {
				t.Value = Median(a.spread)
				t.Measured = fmt.Sprintf("%.2fx (median of rounds; worst %.2fx)", t.Value, slices.Min(a.spread))
				t.Pass = t.Value >= 0.75
				t2.Value = maxOf(a.rss["sender"])
				t2.Measured = fmt.Sprintf("%.1f MiB (max of rounds)", t2.Value)
				t2.Pass = t2.Value <= 64
			} else {
				t.Missing, t2.Missing = true, true
				t.Measured, t2.Measured = "not measured", "not measured"
			}
		} else {
			t.Missing, t2.Missing = true, true
			t.Measured, t2.Measured = "not measured", "not measured"
		}
		ts = append(ts, t, t2)
	}

	lat := find(scs, "latency")
	ts = append(ts, ratioTarget("latency", "zsend -> zrecv vs plain TCP, both via the delay proxy", ">= 0.8x",
		medianRate(lat, "zsend -> proxy -> zrecv")/medianRate(lat, "plain TCP via proxy, write + fsync"), 0.8))

	small := find(scs, "small")
	{
		t := Target{Scenario: "small", What: "time of many small files vs one 4 MiB file", Goal: "<= 2x"}
		if small != nil && len(small.Contenders) >= 2 {
			v := medianWall(small, small.Contenders[0].Name) / medianWall(small, small.Contenders[1].Name)
			if math.IsNaN(v) {
				t.Missing, t.Measured = true, "not measured"
			} else {
				t.Value, t.Measured, t.Pass = v, fmt.Sprintf("%.2fx", v), v <= 2
			}
		} else {
			t.Missing, t.Measured = true, "not measured"
		}
		ts = append(ts, t)
	}
	return append(append(ts, treeTargets(scs)...), fleetTargets(scs)...)
}

// MachineInfo describes the machine, for the report.
func MachineInfo(dir string, meta map[string]string) [][2]string {
	var m [][2]string
	add := func(k, v string) {
		if v != "" {
			m = append(m, [2]string{k, v})
		}
	}
	cpu := firstMatch("/proc/cpuinfo", "model name")
	if strings.Contains(readFile("/proc/cpuinfo"), " hypervisor") {
		cpu += " (virtual machine)"
	}
	add("CPU", cpu)
	add("cores", fmt.Sprintf("%d logical CPUs", runtime.NumCPU()))
	if f := strings.Fields(firstMatch("/proc/meminfo", "MemTotal")); len(f) >= 2 {
		if kib, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			add("memory", fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20)))
		}
	}
	add("kernel", strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")))
	add("OS", osRelease())
	gov := meta["go"]
	if gov == "" {
		gov = runtime.Version()
	}
	add("Go", gov)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/go-zeromq/zmq4" {
				add("zmq4", d.Version)
			}
		}
	}
	add("rsync", meta["rsync"])
	add("scratch filesystem", mountOf(dir))
	add("file system journal", journalInfo(dir))
	add("tcp_rmem / tcp_wmem", strings.Join(strings.Fields(readFile("/proc/sys/net/ipv4/tcp_rmem")), " ")+" / "+
		strings.Join(strings.Fields(readFile("/proc/sys/net/ipv4/tcp_wmem")), " "))
	add("background reclaim", damonInfo())
	add("commit", meta["commit"])
	add("date", meta["date"])
	return m
}

// damonInfo describes DAMON contexts that act on memory (for example
// "pageout" of cold pages, which evicts cold page cache), "" if none.
func damonInfo() string {
	var out []string
	ks, _ := filepath.Glob("/sys/kernel/mm/damon/admin/kdamonds/*/state")
	for _, st := range ks {
		if strings.TrimSpace(readFile(st)) != "on" {
			continue
		}
		acts, _ := filepath.Glob(filepath.Join(filepath.Dir(st), "contexts/*/schemes/*/action"))
		for _, a := range acts {
			ops := strings.TrimSpace(readFile(filepath.Join(filepath.Dir(a), "../../operations")))
			out = append(out, fmt.Sprintf("DAMON on (%s): scheme %s", ops, strings.TrimSpace(readFile(a))))
		}
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "; ") + " - cold pages, page cache included, are reclaimed in the background; the harness reads the sources before every run"
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func firstMatch(path, prefix string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			if _, v, ok := strings.Cut(sc.Text(), ":"); ok && prefix != "MemTotal" {
				return strings.TrimSpace(v)
			}
			return sc.Text()
		}
	}
	return ""
}

func osRelease() string {
	for _, l := range strings.Split(readFile("/etc/os-release"), "\n") {
		if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// mountFor finds the mount holding dir in /proc/mounts: its device, mount
// point and file-system type ("" if none).
func mountFor(dir string) (dev, mp, fstype string) {
	for _, l := range strings.Split(readFile("/proc/mounts"), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		if (dir == f[1] || strings.HasPrefix(dir, strings.TrimSuffix(f[1], "/")+"/")) && len(f[1]) > len(mp) {
			dev, mp, fstype = f[0], f[1], f[2]
		}
	}
	return dev, mp, fstype
}

// mountOf returns "DEVICE (FSTYPE) at MOUNTPOINT" for the filesystem
// holding dir.
func mountOf(dir string) string {
	dev, mp, fstype := mountFor(dir)
	if mp == "" {
		return ""
	}
	return fmt.Sprintf("%s (%s) at %s", dev, fstype, mp)
}

// journalInfo says whether the ext4 file system holding dir has a journal
// (jbd2 lists the devices it journals), "" for other file systems.
func journalInfo(dir string) string {
	dev, _, fstype := mountFor(dir)
	if fstype != "ext4" {
		return ""
	}
	name := filepath.Base(dev)
	if js, _ := filepath.Glob("/proc/fs/jbd2/" + name + "-*"); len(js) > 0 {
		return "ext4 with a journal"
	}
	return "none: ext4 without a journal, whose inode allocator scans past inodes freed in the last minute or more, so creating many files soon after deleting many is slow; output directories are always new, and the small-files runs keep their outputs until the scenario ends"
}

func fmtF(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// WriteMarkdown renders BENCHMARKS.md.
func (r *Results) WriteMarkdown(w io.Writer) error {
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("# Benchmarks\n\n")
	p("Generated by `scripts/bench.sh` (the `bench/` harness); do not edit by hand, run it again. ")
	if r.Quick {
		p("**This is a QUICK=1 smoke run: sizes are reduced and there is one round, so the figures and the PASS/FAIL marks are indicative only.** ")
	}
	p("Run started %s and took %s.\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	p("```sh\nscripts/bench.sh                   # full run: SIZE=1G ROUNDS=3, about 5 minutes on 2 cores\nQUICK=1 scripts/bench.sh           # smoke run, well under a minute, never fails on thresholds\nSIZE=2G ROUNDS=5 ONLY=single scripts/bench.sh\n" +
		"MERGE=1 ONLY=relay RELAY_N=50 scripts/bench.sh        # relays, star versus tree (not in the full run); merged into this file\n" +
		"MERGE=1 ONLY=propagation PROP_N=50 scripts/bench.sh   # follow-mode propagation (not in the full run); merged into this file\n```\n\n")

	p("## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range r.Machine {
		p("| %s | %s |\n", kv[0], mdEscape(kv[1]))
	}
	for _, kv := range r.Settings {
		p("| %s | %s |\n", kv[0], mdEscape(kv[1]))
	}

	p("\n## Targets\n\n| scenario | target | goal | measured | result |\n|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		st := t.Status()
		if st != "n/a" {
			st = "**" + st + "**"
		}
		p("| %s | %s | %s | %s | %s |\n", t.Scenario, t.What, t.Goal, t.Measured, st)
	}

	p("\n## How it is measured\n\n")
	p("- Every contender runs as separate processes (a sender and a receiver; plus the delay proxy where used), started fresh for every run by a Go runner " +
		"(`bench/runner.go`) through a tiny launcher (`bench/cmd/zrun`) that forks the program and reads its rusage from wait4: user and system CPU seconds " +
		"and peak RSS (ru_maxrss, which also covers waited-for children: the rsync client's forked receiver, the rsync daemon's per-connection child, reaped " +
		"before the daemon is stopped). The launcher exists because Linux carries the replaced image's peak RSS over execve: started directly from the harness, " +
		"every process would report at least the harness's own size. The floor it leaves is in the machine table.\n")
	p("- Before each run the harness waits (up to a bound) for the machine to be quiet, and it records the CPU time the machine spent during the run outside " +
		"the measured processes (\"other CPU\": kernel writeback and softirq threads, and anything else running), so interference is visible.\n")
	p("- Throughput is payload bytes / the receiver process's wall time (process start to exit), in MB/s = 10^6 bytes/s; sizes are binary (MiB, GiB). " +
		"Figures are the median over rounds (min-max alongside); CPU and RSS columns are medians too, except that RSS targets use the largest value seen.\n")
	p("- Contenders of a scenario alternate round by round in one run (the order rotates each round), never concurrently. Before every run, the previous " +
		"outputs are deleted and `sync(2)` is called, so no run pays for another's writeback. Sources are random data written just before the run, on the " +
		"same disk as the outputs, so they are read from the page cache (warm), as a file server would.\n")
	p("- Every written output is checked against the source's BLAKE3 after the run (outside the timed span). A zsend server serves one run and is then " +
		"stopped, so its hash cache starts cold: every run includes the sender's hashing.\n")
	p("- Absolute figures drift by 20%% or more between runs on shared machines; compare contenders within one run.\n")

	for _, sc := range r.Scenarios {
		r.writeScenario(p, sc)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func (r *Results) writeScenario(p func(string, ...any), sc *Scenario) {
	title, id := sc.heading()
	p("\n## %s\n\n<!-- scenario: %s -->\n%s\n\n", title, id, sc.Desc)
	roles := []string{}
	for _, c := range sc.Contenders {
		a := summarize(sc, c.Name)
		for _, role := range a.roles {
			if !slices.Contains(roles, role) {
				roles = append(roles, role)
			}
		}
	}
	slices.SortStableFunc(roles, func(a, b string) int { return roleRank(a) - roleRank(b) })
	p("| contender | MB/s (median) | MB/s min-max | time s (median) |")
	for _, role := range roles {
		p(" %s CPU s (user+sys) | %s peak RSS MiB |", role, role)
	}
	p(" runs ok |\n|---|---:|---:|---:|")
	for range roles {
		p("---:|---:|")
	}
	p("---:|\n")
	for _, c := range sc.Contenders {
		a := summarize(sc, c.Name)
		lo, hi := MinMax(a.rate)
		p("| %s | %s | %s-%s | %s |", c.Name, fmtF(Median(a.rate), 0), fmtF(lo, 0), fmtF(hi, 0), fmtF(Median(a.wall), 3))
		for _, role := range roles {
			if len(a.cpu[role]) == 0 {
				p(" - | - |")
				continue
			}
			p(" %s = %su + %ss | %s |", fmtF(Median(a.cpu[role]), 2), fmtF(Median(a.user[role]), 2), fmtF(Median(a.sys[role]), 2), fmtF(Median(a.rss[role]), 1))
		}
		p(" %d/%d |\n", a.ok, a.ok+a.failed)
	}
	notes := false
	for _, c := range sc.Contenders {
		if c.Note != "" {
			if !notes {
				p("\n")
				notes = true
			}
			p("- *%s*: %s\n", c.Name, c.Note)
		}
	}
	p("\n")
	r.writeRatios(p, sc)
	r.writeFleet(p, sc)
	for _, c := range sc.Contenders {
		a := summarize(sc, c.Name)
		for _, e := range a.errs {
			p("\n**%s failed**, %s\n", c.Name, strings.ReplaceAll(strings.TrimSpace(e), "\n", " / "))
		}
	}
	// Per-round raw figures.
	var others []float64
	busy := 0
	for _, run := range sc.Runs {
		others = append(others, run.OtherCPU)
		if !run.Quiet {
			busy++
		}
	}
	if len(others) > 0 {
		p("\nOther CPU during the runs (kernel threads and other processes, not the measured ones): median %.2f s, max %.2f s per run", Median(others), maxOf(others))
		if busy > 0 {
			p("; %d of %d runs started while the machine was still busy with something else", busy, len(sc.Runs))
		}
		p(".\n")
	}
	p("\n<details><summary>Per-round figures</summary>\n\n| round | contender | MB/s | time s | other CPU s | per process: CPU s (user+sys), peak RSS MiB |\n|---:|---|---:|---:|---:|---|\n")
	for _, run := range sc.Runs {
		var parts []string
		groups := map[string]*ProcStat{}
		var order []string
		for _, pr := range run.Procs {
			if r := canonRole(pr.Role); len(run.Procs) > 12 && (r == "receiver" || r == "relay") {
				// A fleet: one entry per role (CPU summed, largest RSS).
				g := groups[r]
				if g == nil {
					g = &ProcStat{Role: r}
					groups[r] = g
					order = append(order, r)
				}
				g.ExitCode++ // the count of processes
				g.User += pr.User
				g.Sys += pr.Sys
				g.MaxRSS = max(g.MaxRSS, pr.MaxRSS)
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %.2f (%.2f+%.2f), %.1f", pr.Role, pr.CPU(), pr.User, pr.Sys, MiB(pr.MaxRSS)))
		}
		for _, r := range order {
			g := groups[r]
			parts = append(parts, fmt.Sprintf("%d x %s %.2f in all (%.2f+%.2f), largest %.1f", g.ExitCode, r, g.CPU(), g.User, g.Sys, MiB(g.MaxRSS)))
		}
		rate := fmtF(run.Rate(), 0)
		if run.Err != "" {
			rate = "FAILED"
		}
		extra := ""
		if len(run.Rates) > 1 {
			lo, hi := MinMax(run.Rates)
			extra = fmt.Sprintf(" (receivers %.0f-%.0f MB/s)", lo, hi)
		}
		quiet := ""
		if !run.Quiet {
			quiet = " (busy before)"
		}
		p("| %d | %s | %s%s | %.3f | %.2f%s | %s |\n", run.Round, run.Contender, rate, extra, run.Wall, run.OtherCPU, quiet, mdEscape(strings.Join(parts, "; ")))
	}
	p("\n</details>\n")
}

func roleRank(r string) int {
	switch r {
	case "sender":
		return 0
	case "receiver":
		return 1
	case "relay":
		return 2
	case "proxy":
		return 3
	}
	return 4
}

func ratioLine(p func(string, ...any), a, b string, ra, rb float64, target string) {
	v := ra / rb
	if math.IsNaN(v) || math.IsInf(v, 0) {
		p("- %s vs %s: not measured\n", a, b)
		return
	}
	p("- %s vs %s = **%.2fx**", a, b, v)
	if target != "" {
		p(" (target %s)", target)
	}
	p("\n")
}

func (r *Results) writeRatios(p func(string, ...any), sc *Scenario) {
	switch sc.Key {
	case "single":
		z := medianRate(sc, "zsend -> zrecv")
		p("Ratios of median throughput:\n\n")
		for _, c := range sc.Contenders[1:] {
			target := map[string]string{"rsync --whole-file --fsync": ">= 1.5x", "raw zmq4, write + fsync": ">= 0.8x"}[c.Name]
			ratioLine(p, "zsend/zrecv", c.Name, z, medianRate(sc, c.Name), target)
		}
		za, ra, rd := summarize(sc, "zsend -> zrecv"), summarize(sc, "raw zmq4, write + fsync"), summarize(sc, "raw zmq4, O_DIRECT write + fsync")
		if len(za.cpu["sender"]) > 0 && len(ra.cpu["sender"]) > 0 && len(rd.cpu["sender"]) > 0 {
			gib := float64(r.Config.Size) / (1 << 30)
			p("- CPU seconds per GiB moved (medians): zsend %.2f vs raw zmq4 sender %.2f; zrecv %.2f vs raw zmq4 receiver %.2f (page-cache write + fsync) "+
				"or %.2f (O_DIRECT write + fsync)\n",
				Median(za.cpu["sender"])/gib, Median(ra.cpu["sender"])/gib, Median(za.cpu["receiver"])/gib, Median(ra.cpu["receiver"])/gib, Median(rd.cpu["receiver"])/gib)
		}
	case "fanout":
		if len(sc.Contenders) < 2 {
			return
		}
		one, many := sc.Contenders[0].Name, sc.Contenders[1].Name
		p("Ratios:\n\n")
		ratioLine(p, "aggregate of "+many, "single receiver", medianRate(sc, many), medianRate(sc, one), ">= 0.9x")
		a := summarize(sc, many)
		if len(a.spread) > 0 {
			p("- slowest vs fastest receiver = **%.2fx** (median of rounds; per round %s; slowest %s MB/s, fastest %s MB/s, medians) (target >= 0.75x)\n",
				Median(a.spread), joinF(a.spread, 2), fmtF(Median(a.slow), 0), fmtF(Median(a.fast), 0))
			p("- zsend peak RSS with %d receivers: %s MiB (max of rounds; target <= 64 MiB); with one receiver: %s MiB\n",
				r.Config.FanN, fmtF(maxOf(a.rss["sender"]), 1), fmtF(maxOf(summarize(sc, one).rss["sender"]), 1))
		}
	case "latency":
		if len(sc.Contenders) < 2 {
			return
		}
		p("Ratios:\n\n")
		ratioLine(p, sc.Contenders[0].Name, sc.Contenders[1].Name, medianRate(sc, sc.Contenders[0].Name), medianRate(sc, sc.Contenders[1].Name), ">= 0.8x")
	case "small":
		if len(sc.Contenders) < 2 {
			return
		}
		many, one := sc.Contenders[0].Name, sc.Contenders[1].Name
		wm, wo := medianWall(sc, many), medianWall(sc, one)
		p("Ratios:\n\n")
		if !math.IsNaN(wm / wo) {
			p("- time of %s vs %s = **%.2fx** (target <= 2x); %.0f files/s\n", many, one, wm/wo, float64(r.Config.SmallN)/wm)
		}
		if len(sc.Contenders) >= 3 {
			floor := sc.Contenders[2].Name
			if wf := medianWall(sc, floor); !math.IsNaN(wf / wo) {
				p("- %s (no network) vs %s = **%.2fx**: what the file system alone costs for the small files, as a multiple of the whole 4 MiB fetch; the fetch of the small files takes %.2fx that floor\n",
					floor, one, wf/wo, wm/wf)
			}
		}
	case "memory":
		a := summarize(sc, "zsend -> zrecv")
		if a.ok > 0 {
			p("Peak RSS: zsend **%s MiB**, zrecv **%s MiB** (largest of %d run(s); target <= 48 MiB each)\n",
				fmtF(maxOf(a.rss["sender"]), 1), fmtF(maxOf(a.rss["receiver"]), 1), a.ok)
		}
	}
}

func joinF(xs []float64, prec int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmtF(x, prec)
	}
	return strings.Join(s, ", ")
}
