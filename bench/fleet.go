package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Fleets of follower processes (zrecv --follow), for the relay scenario
// (issue 12: a star against a two-level tree of relays) and the
// propagation scenario (issue 10: a change at the source until every
// follower has switched to it).
//
// Every process logs with --log-format json; the times measured are the
// "time" fields of those records (nanoseconds, one machine, one clock):
// the root's "published" event and each follower's "switched" event,
// which mirror.Follow emits right after the stable path was switched.
// Nothing polls the nodes' directories, so 200 followers cost the harness
// no CPU while they work.

// FleetFigures is what a fleet run measured, beyond the generic Run.
type FleetFigures struct {
	Topology string `json:"topology,omitempty"` // "star" or "tree"
	Payload  string `json:"payload,omitempty"`
	Nodes    int    `json:"nodes"`            // nodes that receive the version (relays included)
	Relays   int    `json:"relays,omitempty"` // tree: relays among them
	Rate     string `json:"rate,omitempty"`   // each server's --rate-limit, or why there is none
	// All is the time from the root's publish to the last node's switch;
	// P50 and P99 are over the nodes' times (nearest rank).
	All float64 `json:"all_s"`
	P50 float64 `json:"p50_s"`
	P99 float64 `json:"p99_s"`
	// Tree: the first and the last relay's switch, and the leaves' p50.
	RelayFirst float64 `json:"relay_first_s,omitempty"`
	RelayLast  float64 `json:"relay_last_s,omitempty"`
	LeafP50    float64 `json:"leaf_p50_s,omitempty"`
	// Bound is the time the rate limit alone imposes on the big version:
	// star N x size / rate; tree (relays + the most leaves of one relay)
	// x size / rate (0 when unlimited or not the big version).
	Bound float64 `json:"bound_s,omitempty"`
	// RootWritten is what the root process wrote (wchar of /proc/PID/io:
	// its socket writes, protocol framing included, and its log lines)
	// from just before the SIGHUP to the last switch, less what the
	// publish added to its state directory; RootFileBytes is the increase
	// of zsend_bytes_sent_total (whole files and manifests sent) over the
	// same span; -1 when unknown.
	RootWritten   int64 `json:"root_written_b"`
	RootFileBytes int64 `json:"root_file_b"`
	// Phases: the propagation scenario's series of changes.
	Phases []PhaseFigures `json:"phases,omitempty"`
	Notes  []string       `json:"notes,omitempty"`
}

// PhaseFigures is one series of changes of the propagation scenario.
type PhaseFigures struct {
	Name    string    `json:"name"`
	Changes int       `json:"changes"`
	Last    []float64 `json:"last_s"`   // per change: write to the last follower's switch
	Spread  []float64 `json:"spread_s"` // per change: first to last follower's switch
	Node    []float64 `json:"node_s"`   // every follower of every change: write to its switch
	RootCPU float64   `json:"root_cpu_s"`
}

// logRec is the part of a slog JSON record the harness reads.
type logRec struct {
	Time     time.Time `json:"time"`
	Msg      string    `json:"msg"`
	Event    string    `json:"event"`
	Tree     string    `json:"tree"`
	Name     string    `json:"name"`
	Seq      uint64    `json:"seq"`
	Endpoint string    `json:"endpoint"`
	URL      string    `json:"url"`
	Err      string    `json:"err"`
	// SwitchedAt is a follower's "switched" record's time of the rename
	// (the record is logged after pruning and hooks).
	SwitchedAt time.Time `json:"switched_at"`
}

func parseRec(line string) (logRec, bool) {
	var r logRec
	if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &r) != nil {
		return r, false
	}
	return r, true
}

// fnode is one process of a fleet: the root zsend, a relay or a leaf.
type fnode struct {
	role  string // "sender", "relay N", "receiver N"
	p     *Proc
	out   string // follower: its -o directory
	serve string // relay: the endpoint it serves on

	cursor   int
	switched map[uint64]time.Time // follower: seq -> time of its switch to it
	onSeq    uint64               // follower: highest version switched to or found unchanged
	lastErr  string
	conn     time.Time // follower: its last "connected" record
	// root only
	ep        string
	metrics   string
	published map[uint64]time.Time
	latest    uint64
}

// scan reads the node's new log records.
func (n *fnode) scan() {
	lines, next := n.p.LinesFrom(n.cursor)
	n.cursor = next
	for _, l := range lines {
		r, ok := parseRec(l)
		if !ok {
			continue
		}
		switch {
		case r.Event == "switched" || r.Event == "unchanged":
			if n.switched == nil {
				n.switched = map[uint64]time.Time{}
			}
			if _, seen := n.switched[r.Seq]; !seen && r.Event == "switched" {
				at := r.SwitchedAt
				if at.IsZero() {
					at = r.Time // a zrecv from before switched_at
				}
				n.switched[r.Seq] = at
			}
			n.onSeq = max(n.onSeq, r.Seq)
		case r.Event == "connected":
			n.conn = r.Time
		case r.Event == "failed":
			n.lastErr = strings.TrimSpace(r.Msg + " " + r.Err)
		case r.Event == "published":
			if n.published == nil {
				n.published = map[uint64]time.Time{}
			}
			n.published[r.Seq] = r.Time
			n.latest = max(n.latest, r.Seq)
		case r.Msg == "serving" && r.Endpoint != "":
			n.ep = r.Endpoint
		case r.Msg == "metrics" && r.URL != "":
			n.metrics = r.URL
		}
	}
}

// switchTime is when the follower first switched to a version >= seq.
func (n *fnode) switchTime(seq uint64) (time.Time, bool) {
	var best time.Time
	for s, t := range n.switched {
		if s >= seq && (best.IsZero() || t.Before(best)) {
			best = t
		}
	}
	return best, !best.IsZero()
}

// waitUntil polls the node's log until cond holds, the process exits or
// the deadline passes.
func (n *fnode) waitUntil(deadline time.Time, what string, cond func() bool) error {
	bound := time.Until(deadline).Round(time.Second)
	for {
		n.scan()
		if cond() {
			return nil
		}
		if !n.p.Running() {
			n.scan()
			if cond() {
				return nil
			}
			return fmt.Errorf("%s exited while waiting for %s%s", n.role, what, n.p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s within %v%s", n.role, what, bound, n.p.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFleet waits until every node runs version seq or later.
func waitFleet(nodes []*fnode, seq uint64, deadline time.Time) error {
	for {
		var lag []*fnode
		for _, n := range nodes {
			n.scan()
			if n.onSeq >= seq {
				continue
			}
			if !n.p.Running() {
				return fmt.Errorf("%s exited before reaching version %d%s", n.role, seq, n.p.tail())
			}
			lag = append(lag, n)
		}
		if len(lag) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			l := lag[0]
			return fmt.Errorf("%d of %d nodes not on version %d in time (%s is on %d; last error %q)%s",
				len(lag), len(nodes), seq, l.role, l.onSeq, l.lastErr, l.p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSpace fails if the file system holding dir has less than need
// bytes (plus a 10% margin) free.
func checkSpace(dir string, need int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil // cannot tell: let the run find out
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if need+need/10 > free {
		return fmt.Errorf("not enough disk space in %s: the nodes' copies need about %s, %s free (lower RELAY_N/PROP_N or the payload)",
			dir, FormatSize(need), FormatSize(free))
	}
	return nil
}

// dirSizes maps every regular file below dir to its size.
func dirSizes(dir string) map[string]int64 {
	m := map[string]int64{}
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				m[p] = fi.Size()
			}
		}
		return nil
	})
	return m
}

// grown is the bytes by which the files of after exceed those of before
// (new files whole, grown ones by their growth).
func grown(before, after map[string]int64) int64 {
	var n int64
	for p, sz := range after {
		n += max(sz-before[p], 0)
	}
	return n
}

// helpHas reports whether a command's --help mentions flag.
func helpHas(bin, flag string) bool {
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	return strings.Contains(string(out), flag)
}

// procIO returns the wchar of /proc/PID/io (-1 if unreadable).
func procIO(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	for _, l := range strings.Split(readFile(fmt.Sprintf("/proc/%d/io", pid)), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// procCPU returns the user+system CPU seconds of a live process (NaN if
// unreadable).
func procCPU(pid int) float64 {
	s := readFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := strings.LastIndexByte(s, ')')
	if pid <= 0 || i < 0 {
		return math.NaN()
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return math.NaN()
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	return (u + sy) / 100 // USER_HZ
}

// scrapeMetric reads one unlabelled metric from a Prometheus endpoint (-1
// if it cannot).
func scrapeMetric(url, name string) int64 {
	if url == "" {
		return -1
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f)
			}
		}
	}
	return -1
}

// percentile is the nearest-rank q-quantile of xs (NaN for none).
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	k := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

// stopNodes stops the nodes with SIGTERM, all at once, each bounded.
func stopNodes(nodes []*fnode) ([]ProcStat, error) {
	sts := make([]ProcStat, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts[i], errs[i] = stopServer(n.p)
			sts[i].Role = n.role
		}()
	}
	wg.Wait()
	return sts, errors.Join(errs...)
}

// fleetArgs are the flags every fleet process gets: JSON logs, and a peer
// timeout long enough for a 2-core machine running hundreds of processes
// (a heartbeat may wait for a CPU).
var fleetPeerTimeout = "30s"

// startRoot starts the root zsend serving dir (its tree) with a fresh
// state directory and waits until it has published.
func (s *Suite) startRoot(dir, state string, extra ...string) (*fnode, error) {
	args := append([]string{"--log-format", "json", "-b", "tcp://127.0.0.1:0", "--state-dir", state,
		"--metrics", "127.0.0.1:0", "--peer-timeout", fleetPeerTimeout}, extra...)
	p, err := Start("sender", nil, s.bin("zsend"), append(args, dir)...)
	if err != nil {
		return nil, err
	}
	n := &fnode{role: "sender", p: p}
	if err := n.waitUntil(time.Now().Add(startTimeout+time.Duration(s.cfg.RelayFiles+s.cfg.PropFiles)*time.Millisecond), "publish",
		func() bool { return n.ep != "" && n.latest > 0 }); err != nil {
		p.Kill()
		return nil, err
	}
	return n, nil
}

// startFollower starts zrecv --follow of tree from endpoints (a
// comma-separated failover list) into out; serve makes it a relay.
func (s *Suite) startFollower(role, node, out, endpoints, tree, serve string, extra ...string) (*fnode, error) {
	args := []string{"--follow", "--log-format", "json", "--node", node, "--peer-timeout", fleetPeerTimeout, "-o", out}
	if serve != "" {
		args = append(args, "--serve", serve)
	}
	args = append(append(args, extra...), endpoints, tree)
	p, err := Start(role, nil, s.bin("zrecv"), args...)
	if err != nil {
		return nil, err
	}
	return &fnode{role: role, p: p, out: out, serve: serve}, nil
}

// fleet is the processes of one run, for cleanup whatever happens.
type fleet struct{ nodes []*fnode }

func (f *fleet) add(n *fnode) { f.nodes = append(f.nodes, n) }

func (f *fleet) kill() {
	for _, n := range f.nodes {
		n.p.Kill()
	}
}

// verifyNodes checks every follower's copy of tree against want (a
// TreeDigest), two at a time.
func verifyNodes(nodes []*fnode, tree, want string) error {
	var mu sync.Mutex
	var errs []error
	ch := make(chan *fnode)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range ch {
				err := func() error {
					real, err := filepath.EvalSymlinks(filepath.Join(n.out, tree))
					if err != nil {
						return err
					}
					got, _, err := TreeDigest(real)
					if err != nil {
						return err
					}
					if got != want {
						return fmt.Errorf("its copy of %s differs from the source", tree)
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("verify %s: %w", n.role, err))
					mu.Unlock()
				}
			}
		}()
	}
	for _, n := range nodes {
		ch <- n
	}
	close(ch)
	wg.Wait()
	return errors.Join(errs...)
}

// initialBound bounds a fleet's first sync of n copies of a tree of files
// entries and bytes: generous, a bound, not an expectation.
func initialBound(n, files int, bytes int64) time.Duration {
	return 2*time.Minute + time.Duration(n)*(timeoutFor(bytes)-time.Minute) + time.Duration(n*files)*2*time.Millisecond
}

// rewrite gives a file new content of size bytes, derived from round.
func rewrite(path string, size int, round int) error {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(round*131 + i*7 + round>>8)
	}
	copy(b, fmt.Sprintf("round %d\n", round))
	return os.WriteFile(path, b, 0o644)
}

// ---------------------------------------------------------------------
// Relays (issue 12): a star against a two-level tree.

// relayPayloads names the two payloads of the relay scenario.
const (
	relayBig  = "big"
	relayTree = "tree"
)

// relayRelays is the number of relays of the tree topology.
func (c Config) relayRelays() int {
	if c.RelayRelays > 0 {
		return min(c.RelayRelays, c.RelayN)
	}
	return max(1, int(math.Round(math.Sqrt(float64(c.RelayN)))))
}

func (s *Suite) relayRun(ctx context.Context, topo, payload string) (Run, error) {
	c := s.cfg
	n := c.RelayN
	fig := &FleetFigures{Topology: topo, Nodes: n, RootWritten: -1, RootFileBytes: -1}
	run := Run{Fleet: fig}
	var tree, src string
	var perNode int64
	switch payload {
	case relayBig:
		tree, src = "relbig", filepath.Join(s.src, "relbig")
		perNode = c.RelayMB
		fig.Payload = fmt.Sprintf("%s version", FormatSize(c.RelayMB))
		// Version 1 is the tree without the big file; it is moved in
		// before the measured publish and out again after the run.
		_ = os.Rename(filepath.Join(src, "big.bin"), filepath.Join(s.src, "relbig.bin"))
		defer os.Rename(filepath.Join(src, "big.bin"), filepath.Join(s.src, "relbig.bin"))
	default:
		tree, src = "reltree", filepath.Join(s.src, "reltree")
		perNode = 1024
		fig.Payload = fmt.Sprintf("one file changed in %d", c.RelayFiles)
	}
	var rootFlags, relayFlags []string
	if c.RelayRate != "" && c.RelayRate != "0" {
		if helpHas(s.bin("zsend"), "--rate-limit") {
			rootFlags = append(rootFlags, "--rate-limit", c.RelayRate)
			fig.Rate = c.RelayRate + "/s per server"
			if rate, err := ParseSize(c.RelayRate); err == nil && rate > 0 && payload == relayBig {
				copies := n
				if topo == "tree" {
					r := c.relayRelays()
					copies = r + (n-r+r-1)/r
				}
				fig.Bound = float64(copies) * float64(c.RelayMB) / float64(rate)
			}
		} else {
			fig.Rate = "unlimited (this zsend has no --rate-limit)"
		}
		if topo == "tree" {
			if helpHas(s.bin("zrecv"), "--rate-limit") {
				relayFlags = append(relayFlags, "--rate-limit", c.RelayRate)
			} else {
				fig.Rate += "; relays unlimited (this zrecv has no --rate-limit)"
			}
		}
	} else {
		fig.Rate = "unlimited"
	}
	s.logf("[relay] %s, %s: %d nodes, rate %s", topo, fig.Payload, n, fig.Rate)
	rootFlags = append(rootFlags, "--max-sessions", strconv.Itoa(max(256, 2*n+64)))
	// Every node keeps its copies: refuse to fill the disk.
	treeCost := s.relTreeBytes + int64(c.RelayFiles)*4096 // a block per small file at least
	need := int64(n+2) * 2 * treeCost
	if payload == relayBig {
		need = int64(n+2) * perNode
	}
	if err := checkSpace(s.cfg.Work, need); err != nil {
		return run, err
	}
	base, err := s.outDir("fleet")
	if err != nil {
		return run, err
	}
	root, err := s.startRoot(src, filepath.Join(base, "root-state"), rootFlags...)
	if err != nil {
		return run, err
	}
	fl := &fleet{}
	defer fl.kill()
	fl.add(root)
	v1 := root.latest
	var treeBytes int64
	if payload == relayTree {
		treeBytes = s.relTreeBytes
	}
	bound := time.Now().Add(initialBound(n, c.RelayFiles, treeBytes))
	var followers, relays, leaves []*fnode
	mkOut := func(i int) (string, error) {
		d := filepath.Join(base, fmt.Sprintf("node%03d", i))
		return d, os.Mkdir(d, 0o755)
	}
	if topo == "star" {
		for i := 0; i < n; i++ {
			out, err := mkOut(i)
			if err != nil {
				return run, err
			}
			f, err := s.startFollower(fmt.Sprintf("receiver %d", i+1), fmt.Sprintf("leaf%03d", i+1), out, root.ep, tree, "")
			if err != nil {
				return run, err
			}
			fl.add(f)
			leaves = append(leaves, f)
		}
	} else {
		r := c.relayRelays()
		fig.Relays = r
		for i := 0; i < r; i++ {
			out, err := mkOut(i)
			if err != nil {
				return run, err
			}
			port, err := FreePort()
			if err != nil {
				return run, err
			}
			f, err := s.startFollower(fmt.Sprintf("relay %d", i+1), fmt.Sprintf("relay%02d", i+1), out, root.ep, tree,
				fmt.Sprintf("tcp://127.0.0.1:%d", port), relayFlags...)
			if err != nil {
				return run, err
			}
			fl.add(f)
			relays = append(relays, f)
		}
		// The leaves start once every relay holds version 1 and listens.
		if err := waitFleet(relays, v1, bound); err != nil {
			return run, fmt.Errorf("relays' first sync: %w", err)
		}
		for _, rl := range relays {
			if err := waitListening(strings.TrimPrefix(rl.serve, "tcp://"), rl.p, startTimeout); err != nil {
				return run, err
			}
		}
		failover := r > 1 && helpHas(s.bin("zrecv"), "comma-separated list")
		if r > 1 && !failover {
			fig.Notes = append(fig.Notes, "leaves without a failover list: this zrecv takes one ENDPOINT")
		}
		for i := r; i < n; i++ {
			out, err := mkOut(i)
			if err != nil {
				return run, err
			}
			// Each leaf: its relay, then the next one as failover.
			k := (i - r) % r
			eps := relays[k].serve
			if failover {
				eps += "," + relays[(k+1)%r].serve
			}
			f, err := s.startFollower(fmt.Sprintf("receiver %d", i-r+1), fmt.Sprintf("leaf%03d", i-r+1), out, eps, tree, "")
			if err != nil {
				return run, err
			}
			fl.add(f)
			leaves = append(leaves, f)
		}
	}
	followers = append(append(followers, relays...), leaves...)
	if err := waitFleet(followers, v1, bound); err != nil {
		return run, fmt.Errorf("first sync: %w", err)
	}
	s.logf("[relay] %s, %s: %d nodes on version %d; publishing", topo, fig.Payload, len(followers), v1)

	// The measured change. The root's counters are read before the
	// SIGHUP (read after the publish, they would miss what the root sends
	// before the harness gets there); what the publish itself writes (its
	// copy into the state directory) is taken off the root's wchar below.
	rootPID := root.p.ProgramPID()
	stateDir := filepath.Join(base, "root-state")
	state0 := dirSizes(stateDir)
	files0 := scrapeMetric(root.metrics, "zsend_bytes_sent_total")
	io0 := procIO(rootPID)
	switch payload {
	case relayBig:
		if err := os.Rename(filepath.Join(s.src, "relbig.bin"), filepath.Join(src, "big.bin")); err != nil {
			return run, err
		}
	default:
		s.relRound++
		if err := rewrite(filepath.Join(src, "d000", "f00000"), int(perNode), s.relRound); err != nil {
			return run, err
		}
	}
	// zrun passes SIGHUP on to zsend.
	if err := syscall.Kill(root.p.PID(), syscall.SIGHUP); err != nil {
		return run, err
	}
	v2 := v1 + 1
	if err := root.waitUntil(time.Now().Add(timeoutFor(perNode)+time.Duration(c.RelayFiles)*time.Millisecond), "publish of version 2",
		func() bool { return root.latest >= v2 }); err != nil {
		return run, err
	}
	t0 := root.published[v2]
	deadline := time.Now().Add(timeoutFor(int64(n)*perNode) + time.Duration(n)*time.Second)
	werr := waitFleet(followers, v2, deadline)
	io1 := procIO(rootPID)
	files1 := scrapeMetric(root.metrics, "zsend_bytes_sent_total")
	if io0 >= 0 && io1 >= 0 {
		fig.RootWritten = io1 - io0 - grown(state0, dirSizes(stateDir))
	}
	if files0 >= 0 && files1 >= 0 {
		fig.RootFileBytes = files1 - files0
	}
	var times, rtimes, ltimes []float64
	for _, f := range followers {
		if t, ok := f.switchTime(v2); ok {
			d := t.Sub(t0).Seconds()
			times = append(times, d)
			if f.serve != "" {
				rtimes = append(rtimes, d)
			} else {
				ltimes = append(ltimes, d)
			}
		}
	}
	if len(rtimes) > 0 {
		fig.RelayFirst, fig.RelayLast, fig.LeafP50 = slices.Min(rtimes), slices.Max(rtimes), percentile(ltimes, 0.5)
	}
	fig.All, fig.P50, fig.P99 = math.NaN(), percentile(times, 0.5), percentile(times, 0.99)
	if len(times) > 0 {
		fig.All = slices.Max(times)
	}
	run.Bytes, run.Wall = int64(n)*perNode, fig.All

	// Stop the leaves, then the relays, then the root.
	lst, lerr := stopNodes(leaves)
	rst, rerr := stopNodes(relays)
	sst, serr := stopNodes([]*fnode{root})
	run.Procs = append(append(sst, rst...), lst...)
	if err := errors.Join(werr, lerr, rerr, serr); err != nil {
		return run, err
	}
	want, _, err := TreeDigest(src)
	if err != nil {
		return run, err
	}
	return run, verifyNodes(followers, tree, want)
}

// ---------------------------------------------------------------------
// Propagation (issue 10): zsend --watch, followers, changes one by one.

func (s *Suite) propagationRun(ctx context.Context) (Run, error) {
	c := s.cfg
	fig := &FleetFigures{Nodes: c.PropN, RootWritten: -1, RootFileBytes: -1}
	run := Run{Fleet: fig}
	tree, src := "proptree", filepath.Join(s.src, "proptree")
	if err := checkSpace(s.cfg.Work, int64(c.PropN+1)*3*(s.propTreeBytes+int64(c.PropFiles)*4096)); err != nil {
		return run, err
	}
	base, err := s.outDir("fleet")
	if err != nil {
		return run, err
	}
	state := filepath.Join(base, "root-state")
	maxSess := strconv.Itoa(max(256, 2*c.PropN+64))
	root, err := s.startRoot(src, state, "--watch", "--max-sessions", maxSess)
	if err != nil {
		return run, err
	}
	fl := &fleet{}
	defer fl.kill()
	fl.add(root)
	var followers []*fnode
	for i := 0; i < c.PropN; i++ {
		out := filepath.Join(base, fmt.Sprintf("node%03d", i))
		if err := os.Mkdir(out, 0o755); err != nil {
			return run, err
		}
		f, err := s.startFollower(fmt.Sprintf("receiver %d", i+1), fmt.Sprintf("node%03d", i+1), out, root.ep, tree, "")
		if err != nil {
			return run, err
		}
		fl.add(f)
		followers = append(followers, f)
	}
	if err := waitFleet(followers, root.latest, time.Now().Add(initialBound(c.PropN, c.PropFiles, s.propTreeBytes))); err != nil {
		return run, fmt.Errorf("first sync: %w", err)
	}
	s.logf("[propagation] %d followers on version %d", len(followers), root.latest)

	// change writes the files of one change, then measures until every
	// follower has switched to the version published after the writes.
	change := func(ph *PhaseFigures, files []string) error {
		s.propRound++
		tw := time.Now()
		for _, f := range files {
			if err := rewrite(filepath.Join(src, f), 1024, s.propRound); err != nil {
				return err
			}
		}
		tend := time.Now()
		var seq uint64
		if err := root.waitUntil(tend.Add(time.Minute), "publish after the change", func() bool {
			for q, t := range root.published {
				if t.After(tend) && (seq == 0 || q < seq) {
					seq = q
				}
			}
			return seq != 0
		}); err != nil {
			return err
		}
		if err := waitFleet(followers, seq, time.Now().Add(time.Minute+time.Duration(len(files))*100*time.Millisecond)); err != nil {
			return err
		}
		var first, last time.Time
		for _, f := range followers {
			t, ok := f.switchTime(seq)
			if !ok {
				return fmt.Errorf("%s: reached version %d without a switch event", f.role, seq)
			}
			ph.Node = append(ph.Node, t.Sub(tw).Seconds())
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if t.After(last) {
				last = t
			}
		}
		ph.Last = append(ph.Last, last.Sub(tw).Seconds())
		ph.Spread = append(ph.Spread, last.Sub(first).Seconds())
		ph.Changes++
		return nil
	}
	series := func(name string, n, each int) error {
		ph := PhaseFigures{Name: name}
		pid := root.p.ProgramPID()
		cpu0 := procCPU(pid)
		for i := 0; i < n; i++ {
			var files []string
			for j := 0; j < each; j++ {
				k := (i*each + j*7919) % c.PropFiles
				files = append(files, filepath.Join(fmt.Sprintf("d%03d", k%c.TreeDirsOf(c.PropFiles)), fmt.Sprintf("f%05d", k)))
			}
			if err := change(&ph, files); err != nil {
				return fmt.Errorf("%s, change %d: %w", name, i+1, err)
			}
			s.logf("[propagation] %s: change %d: last follower %.3fs after the write, spread %.3fs", name, i+1, ph.Last[i], ph.Spread[i])
			// Let the followers' reports settle before the next change.
			time.Sleep(200 * time.Millisecond)
		}
		ph.RootCPU = procCPU(pid) - cpu0
		fig.Phases = append(fig.Phases, ph)
		s.logf("[propagation] %s: write to last switch p50 %.3fs p99 %.3fs; spread p50 %.3fs; zsend CPU %.2fs",
			name, percentile(ph.Last, 0.5), percentile(ph.Last, 0.99), percentile(ph.Spread, 0.5), ph.RootCPU)
		return nil
	}
	if err := series(fmt.Sprintf("%d one-file changes, one by one", c.PropChanges), c.PropChanges, 1); err != nil {
		return run, err
	}
	if err := series(fmt.Sprintf("%d files changed at once", c.PropBulk), 1, c.PropBulk); err != nil {
		return run, err
	}
	var procs []ProcStat
	if c.PropBarrier {
		// The same fleet, the root restarted with --barrier on the same
		// endpoint and state: the followers reconnect on their own.
		sst, serr := stopNodes([]*fnode{root})
		procs = append(procs, sst...)
		if serr != nil {
			return run, serr
		}
		restart := time.Now()
		b, err := s.startRootAt(src, state, root.ep, "--watch", "--barrier", "--max-sessions", maxSess)
		if err != nil {
			return run, err
		}
		b.role = "sender (--barrier)"
		fl.add(b)
		root = b
		if err := waitReconnected(followers, restart, time.Now().Add(2*time.Minute)); err != nil {
			return run, err
		}
		if err := series(fmt.Sprintf("%d one-file changes with --barrier", c.PropChanges), c.PropChanges, 1); err != nil {
			return run, err
		}
	}
	run.Wall = percentile(fig.Phases[0].Last, 0.5)
	run.Bytes = 1024 * int64(c.PropN)
	fst, ferr := stopNodes(followers)
	sst, serr := stopNodes([]*fnode{root})
	run.Procs = append(append(procs, sst...), fst...)
	if err := errors.Join(ferr, serr); err != nil {
		return run, err
	}
	want, _, err := TreeDigest(src)
	if err != nil {
		return run, err
	}
	return run, verifyNodes(followers, tree, want)
}

// TreeDirsOf is the number of directories a generated tree of n files is
// spread over (one per ten files, as the tree scenarios do).
func (c Config) TreeDirsOf(n int) int { return max(1, n/10) }

// startRootAt starts a root on a given endpoint (a restart).
func (s *Suite) startRootAt(dir, state, ep string, extra ...string) (*fnode, error) {
	args := append([]string{"--log-format", "json", "-b", ep, "--state-dir", state,
		"--metrics", "127.0.0.1:0", "--peer-timeout", fleetPeerTimeout}, extra...)
	var last error
	for try := 0; try < 20; try++ { // the port may take a moment to be free again
		p, err := Start("sender", nil, s.bin("zsend"), append(args, dir)...)
		if err != nil {
			return nil, err
		}
		// A restart publishes nothing new when the tree is unchanged.
		n := &fnode{role: "sender", p: p}
		last = n.waitUntil(time.Now().Add(startTimeout), "serving line", func() bool { return n.ep != "" })
		if last == nil {
			return n, nil
		}
		p.Kill()
		if p.Running() {
			return nil, last // alive but silent: no point in retrying
		}
		p.Wait(5 * time.Second)
		time.Sleep(250 * time.Millisecond)
	}
	return nil, last
}

// waitReconnected waits until every follower has logged a connection
// made after since.
func waitReconnected(nodes []*fnode, since time.Time, deadline time.Time) error {
	for {
		left := 0
		for _, n := range nodes {
			n.scan()
			if n.conn.Before(since) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d followers did not reconnect to the restarted root", left, len(nodes))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------
// Data, scenarios, report.

func (s *Suite) generateFleets() error {
	c := s.cfg
	if s.want("relay") {
		t0 := time.Now()
		dir := filepath.Join(s.src, "relbig")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "README"), []byte("version 1: this file alone\n"), 0o644); err != nil {
			return err
		}
		if _, err := GenFile(filepath.Join(s.src, "relbig.bin"), c.RelayMB, 41); err != nil {
			return err
		}
		if len(c.RelayPayloads) == 0 || slices.Contains(c.RelayPayloads, relayTree) {
			n, err := GenTree(filepath.Join(s.src, "reltree"), c.RelayFiles, c.TreeDirsOf(c.RelayFiles), c.RelayFileMax, 42)
			if err != nil {
				return err
			}
			s.relTreeBytes = n
		}
		s.logf("generated the relay payloads (%s; tree of %d files, %s, if run) in %.1fs", FormatSize(c.RelayMB), c.RelayFiles, FormatSize(s.relTreeBytes), time.Since(t0).Seconds())
	}
	if s.want("propagation") {
		n, err := GenTree(filepath.Join(s.src, "proptree"), c.PropFiles, c.TreeDirsOf(c.PropFiles), c.PropFileMax, 43)
		if err != nil {
			return err
		}
		s.propTreeBytes = n
		s.logf("generated the propagation tree (%d files, %s)", c.PropFiles, FormatSize(n))
	}
	return nil
}

func (s *Suite) relayTopologies() []string {
	if len(s.cfg.RelayTopologies) == 0 {
		return []string{"star", "tree"}
	}
	return s.cfg.RelayTopologies
}

func (s *Suite) buildFleets() {
	c := s.cfg
	if s.want("relay") {
		topos := s.relayTopologies()
		if slices.Contains(topos, "tree") && !helpHas(s.bin("zrecv"), "--serve") {
			fmt.Fprintln(c.Log, "relay: skipped, zrecv has no --serve")
		} else {
			r := c.relayRelays()
			var sources []string
			if len(c.RelayPayloads) == 0 || slices.Contains(c.RelayPayloads, relayBig) {
				sources = append(sources, "relbig.bin")
			}
			if len(c.RelayPayloads) == 0 || slices.Contains(c.RelayPayloads, relayTree) {
				sources = append(sources, "reltree")
			}
			var pd []string
			if len(c.RelayPayloads) == 0 || slices.Contains(c.RelayPayloads, relayBig) {
				pd = append(pd, fmt.Sprintf("a %s version (one new file)", FormatSize(c.RelayMB)))
			}
			if len(c.RelayPayloads) == 0 || slices.Contains(c.RelayPayloads, relayTree) {
				pd = append(pd, fmt.Sprintf("one %s file changed in a tree of %d files of 0-%s", FormatSize(1024), c.RelayFiles, FormatSize(c.RelayFileMax)))
			}
			payloadDesc := "Payload: " + strings.Join(pd, "; and ") + ". "
			sc := &Scenario{Key: "relay", Sources: sources, Rounds: 1,
				Bytes: int64(c.RelayN)*(c.RelayMB+s.relTreeBytes) + int64(c.RelayN*c.RelayFiles)*20000,
				Title: "Relays: star versus tree",
				Desc: fmt.Sprintf("%d receiving nodes, each a separate `zrecv --follow` process on loopback, every server (the root zsend and each relay) "+
					"limited with `--rate-limit %s` (where the binaries have the flag: see the rate column). Star: the root serves all %d. Tree: the root serves %d relays (`zrecv --follow --serve`), "+
					"each relay serves about %d leaves; each leaf has a failover list (its relay, then the next one) where zrecv takes one (see the notes under the table). The relays count among the %d nodes. "+
					"%s"+
					"Each run starts a fresh fleet, waits until every node holds version 1 (untimed), changes the source and sends SIGHUP to the root. "+
					"Times run from the root's `published` log record to each node's `switched` record (their JSON timestamps; the harness polls nothing). "+
					"Root egress, two ways, both read just before the SIGHUP and after the last switch: \"root wrote\" is the increase of the root "+
					"process's wchar (/proc/PID/io: its socket writes, the protocol's framing included, and its few log lines) less the bytes its "+
					"publish added to its state directory (the copy of the new files and the manifest); \"root files sent\" is the increase of its "+
					"`zsend_bytes_sent_total` metric (the size of each file and manifest sent completely). "+
					"\"rate bound\" is what the rate limit alone allows for the big version: star N x size / rate, tree (relays + the most leaves "+
					"of one relay) x size / rate, i.e. no time for verification, writing, fsync or the switch, and no CPU contention: all the "+
					"processes share this machine's cores. "+
					"The issue asks for 200 nodes: `RELAY_N=200 ONLY=relay scripts/bench.sh`; on 2 cores, `RELAY_RATE=20M` keeps the rate limit the bottleneck at that N.",
					c.RelayN, c.RelayRate, c.RelayN, r, int(math.Round(float64(c.RelayN-r)/float64(r))), c.RelayN,
					payloadDesc)}
			payloads := s.cfg.RelayPayloads
			if len(payloads) == 0 {
				payloads = []string{relayBig, relayTree}
			}
			for _, pl := range payloads {
				if pl != relayBig && pl != relayTree {
					fmt.Fprintf(c.Log, "relay: unknown payload %q (want big or tree)\n", pl)
					continue
				}
				for _, topo := range topos {
					name := fmt.Sprintf("%s, %s", topo, map[string]string{relayBig: FormatSize(c.RelayMB) + " version", relayTree: "one file of " + strconv.Itoa(c.RelayFiles)}[pl])
					sc.Contenders = append(sc.Contenders, Contender{Name: name,
						run: func(ctx context.Context) (Run, error) { return s.relayRun(ctx, topo, pl) }})
				}
			}
			s.Scenarios = append(s.Scenarios, sc)
		}
	}
	if s.want("propagation") {
		sc := &Scenario{Key: "propagation", Sources: []string{"proptree"}, Rounds: 1,
			Bytes: int64(c.PropN)*s.propTreeBytes + int64(c.PropN*c.PropFiles)*20000 + int64(2*c.PropChanges+c.PropBulk)*int64(c.PropN)*10_000_000,
			Title: fmt.Sprintf("Propagation: %d followers, one change at a time", c.PropN),
			Desc: fmt.Sprintf("%d `zrecv --follow` processes on loopback follow a tree of %d files of 0-%s served by `zsend --watch`. "+
				"Once all hold version 1, the harness rewrites one file (1 KiB) at the source, %d times one after another (each once every follower "+
				"has switched to the change), then %d files at once. Times run from the harness's write (the time just before the first write) to "+
				"each follower's switch (the `switched_at` of its `switched` log record: the rename over the stable path), the watcher's debounce included; \"last\" is the last follower of a change, "+
				"\"spread\" the time between its first and last follower's switch.", c.PropN, c.PropFiles, FormatSize(c.PropFileMax), c.PropChanges, c.PropBulk)}
		if c.PropBarrier {
			sc.Desc += fmt.Sprintf(" Then the root is restarted with `--barrier` on the same endpoint and state, the followers reconnect, and %d more one-file changes are made.", c.PropChanges)
		}
		sc.Contenders = []Contender{{Name: fmt.Sprintf("%d followers", c.PropN),
			run: func(ctx context.Context) (Run, error) { return s.propagationRun(ctx) }}}
		s.Scenarios = append(s.Scenarios, sc)
	}
}

func fmtBytes(b int64) string {
	if b < 0 {
		return "-"
	}
	return FormatSize(b)
}

func fmtS(v float64) string { return fmtF(v, 3) }

// roleRSS is the largest peak RSS (MiB) of a run's processes of a role.
func roleRSS(run Run, role string) float64 {
	m := math.NaN()
	for _, p := range run.Procs {
		if canonRole(p.Role) == role {
			m = math.Max(nanZero(m), MiB(p.MaxRSS))
		}
	}
	return m
}

func nanZero(v float64) float64 {
	if math.IsNaN(v) {
		return 0
	}
	return v
}

// fleetRun is the successful run of a contender (nil if none).
func fleetRun(sc *Scenario, name string) *Run {
	if sc == nil {
		return nil
	}
	for i := range sc.Runs {
		if r := &sc.Runs[i]; r.Contender == name && r.Err == "" && r.Fleet != nil {
			return r
		}
	}
	return nil
}

// relayPair returns the star and tree runs of a payload ("version" or
// "one file").
func relayPair(sc *Scenario, what string) (star, tree *Run) {
	if sc == nil {
		return nil, nil
	}
	for _, c := range sc.Contenders {
		if !strings.Contains(c.Name, what) {
			continue
		}
		if r := fleetRun(sc, c.Name); r != nil {
			if strings.HasPrefix(c.Name, "star") {
				star = r
			} else {
				tree = r
			}
		}
	}
	return star, tree
}

func (r *Results) writeFleet(p func(string, ...any), sc *Scenario) {
	switch sc.Key {
	case "relay":
		p("| topology | payload | nodes | relays | rate limit | all switched s | rate bound s | p50 s | p99 s | root wrote | root files sent | peak RSS MiB: root | relays (max) | leaves (max) |\n")
		p("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range sc.Contenders {
			run := fleetRun(sc, c.Name)
			if run == nil {
				p("| %s | failed or not run | | | | | | | | | | | | |\n", c.Name)
				continue
			}
			f := run.Fleet
			bound := "-"
			if f.Bound > 0 {
				bound = fmtS(f.Bound)
			}
			p("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f.Topology, strings.TrimPrefix(f.Payload, "a "), f.Nodes, f.Relays, f.Rate,
				fmtS(f.All), bound, fmtS(f.P50), fmtS(f.P99), fmtBytes(f.RootWritten), fmtBytes(f.RootFileBytes),
				fmtF(roleRSS(*run, "sender"), 1), fmtF(roleRSS(*run, "relay"), 1), fmtF(roleRSS(*run, "receiver"), 1))
		}
		p("\n")
		for _, c := range sc.Contenders {
			if run := fleetRun(sc, c.Name); run != nil {
				if f := run.Fleet; f.Relays > 0 {
					p("- *%s*: relays switched %s-%s s after the publish, leaves' p50 %s s\n", c.Name, fmtS(f.RelayFirst), fmtS(f.RelayLast), fmtS(f.LeafP50))
				}
				if f := run.Fleet; f.Bound > 0 && f.All > 0 {
					p("- *%s*: the nodes received %s in all in %s s, %.0f MB/s together; the rate bound would take %.0f MB/s together "+
						"(every copy verified, written and fsynced, by processes sharing %d cores)\n",
						c.Name, FormatSize(run.Bytes), fmtS(f.All), MBps(run.Bytes, f.All), MBps(run.Bytes, f.Bound), runtime.NumCPU())
				}
				for _, n := range run.Fleet.Notes {
					p("- *%s*: %s\n", c.Name, n)
				}
			}
		}
		p("\nWhen the rate bound asks more of all the nodes together than this machine can verify, write and fsync (the \"together\" figures above), " +
			"the tree's time measures the machine's cores and disk, not the topology or the rate limit; a lower `RELAY_RATE` with a smaller `RELAY_MB` " +
			"keeps the rate limit the bottleneck, as a network card would be.\n")
		p("\nRatios star / tree:\n\n")
		for _, what := range []string{"version", "one file"} {
			star, tree := relayPair(sc, what)
			if star == nil && tree == nil {
				continue
			}
			if star == nil || tree == nil {
				p("- %s: not measured (both topologies needed)\n", what)
				continue
			}
			p("- %s: time until every node switched **%.2fx** (p50 %.2fx, p99 %.2fx)", strings.TrimPrefix(star.Fleet.Payload, "a "), star.Fleet.All/tree.Fleet.All,
				star.Fleet.P50/tree.Fleet.P50, star.Fleet.P99/tree.Fleet.P99)
			if star.Fleet.RootWritten > 0 && tree.Fleet.RootWritten > 0 {
				p("; root egress tree / star **%.3f** (%s vs %s)", float64(tree.Fleet.RootWritten)/float64(star.Fleet.RootWritten),
					FormatSize(tree.Fleet.RootWritten), FormatSize(star.Fleet.RootWritten))
			}
			if what == "version" {
				p(" (goals: time >= 5x, egress <= 0.1)")
			}
			p("\n")
		}
	case "propagation":
		for _, c := range sc.Contenders {
			run := fleetRun(sc, c.Name)
			if run == nil {
				continue
			}
			p("| series | changes | write to last switch p50 s | p99 s | max s | per follower p50 s | p99 s | spread first-last p50 s | max s | zsend CPU s |\n")
			p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
			for _, ph := range run.Fleet.Phases {
				p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %.2f |\n", ph.Name, ph.Changes,
					fmtS(percentile(ph.Last, 0.5)), fmtS(percentile(ph.Last, 0.99)), fmtS(maxOf(ph.Last)),
					fmtS(percentile(ph.Node, 0.5)), fmtS(percentile(ph.Node, 0.99)),
					fmtS(percentile(ph.Spread, 0.5)), fmtS(maxOf(ph.Spread)), ph.RootCPU)
			}
			var cpu, rss float64
			for _, pr := range run.Procs {
				if strings.HasPrefix(pr.Role, "sender") {
					cpu += pr.CPU()
					rss = math.Max(rss, MiB(pr.MaxRSS))
				}
			}
			p("\nzsend over the whole run (first sync of every follower included): %.2f s CPU, peak RSS %.1f MiB; followers' peak RSS at most %s MiB.\n",
				cpu, rss, fmtF(roleRSS(*run, "receiver"), 1))
			var fcpu, fsys float64
			nf := 0
			for _, pr := range run.Procs {
				if canonRole(pr.Role) == "receiver" {
					fcpu += pr.CPU()
					fsys += pr.Sys
					nf++
				}
			}
			versions := 1
			for _, ph := range run.Fleet.Phases {
				versions += ph.Changes
			}
			if nf > 0 {
				per := fcpu / float64(nf) / float64(versions)
				p("\nThe followers spent %.0f s of CPU in all (%.0f s of it system time) over %d versions (the first sync included): %.2f s per follower "+
					"and version on average. At that rate, %d followers sharing %d cores need about %.1f s per version: on this machine the followers' "+
					"own work, not the network or zsend (%.0f s of CPU in all), bounds the time until the last one has switched.\n",
					fcpu, fsys, versions, per, nf, runtime.NumCPU(), per*float64(nf)/float64(runtime.NumCPU()), cpu)
			}
		}
	}
}

// fleetTargets are issue 12's and issue 10's goals.
func fleetTargets(scs []*Scenario) []Target {
	var ts []Target
	relay := find(scs, "relay")
	star, tree := relayPair(relay, "version")
	t1 := Target{Scenario: "relay", What: "big version: star time / tree time (all nodes switched)", Goal: ">= 5x"}
	t2 := Target{Scenario: "relay", What: "big version: root egress, tree / star", Goal: "<= 0.1"}
	if star != nil && tree != nil {
		what := fmt.Sprintf("%s, %d nodes, %s", strings.TrimPrefix(tree.Fleet.Payload, "a "), tree.Fleet.Nodes, strings.Fields(tree.Fleet.Rate)[0])
		t1.What = what + ": star time / tree time (all nodes switched)"
		t2.What = what + ": root egress, tree / star"
		t1.Value = star.Fleet.All / tree.Fleet.All
		t1.Measured, t1.Pass = fmt.Sprintf("%.2fx (%d nodes, %d relays)", t1.Value, tree.Fleet.Nodes, tree.Fleet.Relays), t1.Value >= 5
		if star.Fleet.RootWritten > 0 && tree.Fleet.RootWritten > 0 {
			t2.Value = float64(tree.Fleet.RootWritten) / float64(star.Fleet.RootWritten)
			t2.Measured, t2.Pass = fmt.Sprintf("%.3f", t2.Value), t2.Value <= 0.1
		} else {
			t2.Missing, t2.Measured = true, "not measured"
		}
	} else {
		t1.Missing, t1.Measured = true, "not measured"
		t2.Missing, t2.Measured = true, "not measured"
	}
	ts = append(ts, t1, t2)
	prop := find(scs, "propagation")
	var phases []PhaseFigures
	if prop != nil && len(prop.Contenders) > 0 {
		if r := fleetRun(prop, prop.Contenders[0].Name); r != nil {
			phases = r.Fleet.Phases
		}
	}
	var ph *PhaseFigures
	if len(phases) > 0 {
		ph = &phases[0]
	}
	for _, q := range []float64{0.5, 0.99} {
		t := Target{Scenario: "propagation", What: fmt.Sprintf("one-file change: write to last follower's switch, p%.0f", q*100), Goal: "<= 1 s"}
		if ph == nil {
			t.Missing, t.Measured = true, "not measured"
		} else {
			t.Value = percentile(ph.Last, q)
			t.Measured, t.Pass = fmt.Sprintf("%.3f s", t.Value), t.Value <= 1
		}
		ts = append(ts, t)
	}
	// The barrier's series (issue 10: at most 50 ms between the first and
	// the last follower's switch, every change).
	bt := Target{Scenario: "propagation", What: "with --barrier: first to last follower's switch, max", Goal: "<= 50 ms"}
	bt.Missing, bt.Measured = true, "not measured"
	for _, p := range phases {
		if strings.Contains(p.Name, "--barrier") && len(p.Spread) > 0 {
			bt.Missing, bt.Value = false, slices.Max(p.Spread)*1000
			bt.Measured = fmt.Sprintf("%.0f ms (p50 %.0f ms)", bt.Value, percentile(p.Spread, 0.5)*1000)
			bt.Pass = bt.Value <= 50
		}
	}
	return append(ts, bt)
}
