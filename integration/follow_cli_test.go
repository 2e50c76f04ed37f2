package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// proc is a binary run by a test, stopped at cleanup.
type proc struct {
	cmd     *exec.Cmd
	ep      string
	metrics chan string // zsend's metrics URL, if it serves them
	done    chan error
	log     *strings.Builder
}

var fastFlags = []string{"--heartbeat", "200ms", "--peer-timeout", "2s"}

// startZsendFleet runs zsend with args (and fast heartbeats) and waits for its
// endpoint. It is SIGKILLed at cleanup if still running.
func startZsendFleet(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "zsend"), append(append([]string{}, fastFlags...), args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1), log: &strings.Builder{}, metrics: make(chan string, 1)}
	epc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`on (tcp://\S+)`)
		mre := regexp.MustCompile(`metrics on (http://\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := mre.FindStringSubmatch(sc.Text()); m != nil {
				p.metrics <- m[1]
				continue
			}
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case epc <- m[1]:
				default:
				}
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { p.kill() })
	select {
	case p.ep = <-epc:
	case <-time.After(20 * time.Second):
		t.Fatal("zsend did not report its endpoint")
	}
	return p
}

func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
}

// stop sends SIGTERM and returns the exit error.
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(20 * time.Second):
		t.Error("no exit within 20s of SIGTERM")
		return nil
	}
}

// startFollowerProc runs zrecv --follow.
func startFollowerProc(t *testing.T, ep, out, node string, extra ...string) *proc {
	t.Helper()
	args := append(append([]string{"--follow", "-o", out, "--node", node}, fastFlags...), extra...)
	args = append(args, ep, "app")
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), args...)
	p := &proc{cmd: cmd, done: make(chan error, 1), log: &strings.Builder{}}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() { p.kill() })
	return p
}

// statusWait runs zsend --status ENDPOINT --wait and returns its exit
// code and output.
func statusWait(t *testing.T, ep string, timeout time.Duration, extra ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	args := append([]string{"--status", ep, "--wait", "--timeout", timeout.String()}, extra...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// The server killed (SIGKILL) and restarted on the same endpoint and
// state directory during follow: the followers reconnect, report to the
// new process, and take the version it publishes at start.
func TestFollowServerKilledAndRestartedCLI(t *testing.T) {
	base := t.TempDir()
	src, state := filepath.Join(base, "app"), filepath.Join(base, "state")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", state, "--lost-after", "5s", src)
	var fs []*proc
	var outs []string
	for i := 0; i < 3; i++ {
		out := filepath.Join(base, fmt.Sprintf("node%d", i))
		os.Mkdir(out, 0o755)
		outs = append(outs, out)
		fs = append(fs, startFollowerProc(t, zs.ep, out, fmt.Sprintf("web%d", i)))
	}
	if code, out, errs := statusWait(t, zs.ep, 30*time.Second, "--min-nodes", "3"); code != 0 || !strings.Contains(out, "3/3 nodes on app v1") {
		t.Fatalf("--status --wait: %d\n%s\n%s", code, out, errs)
	}
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	zs.cmd.Process.Signal(syscall.SIGHUP)
	waitTree(t, zs.ep, "app", 1) // the gate is run once the publish is done
	if code, out, errs := statusWait(t, zs.ep, 30*time.Second, "--min-nodes", "3"); code != 0 || !strings.Contains(out, "3/3 nodes on app v2") {
		t.Fatalf("--status --wait after v2: %d\n%s\n%s", code, out, errs)
	}
	zs.cmd.Process.Kill()
	<-zs.done
	writeFile(t, filepath.Join(src, "app.conf"), "v3")
	time.Sleep(500 * time.Millisecond) // the followers notice and retry
	zs2 := startZsendFleet(t, "-b", zs.ep, "--state-dir", state, "--lost-after", "5s", src)
	if code, out, errs := statusWait(t, zs2.ep, 30*time.Second, "--min-nodes", "3"); code != 0 || !strings.Contains(out, "3/3 nodes on app v3") {
		t.Fatalf("--status --wait after the restart: %d\n%s\n%s", code, out, errs)
	}
	for i, out := range outs {
		if got := readStable(t, out, "app", "app.conf"); got != "v3" {
			t.Errorf("node %d shows %q", i, got)
		}
	}
	for i, f := range fs {
		if err := f.stop(t); err != nil {
			t.Errorf("follower %d after SIGTERM: %v\n%s", i, err, f.log.String())
		}
	}
	if err := zs2.stop(t); err != nil {
		t.Errorf("zsend after SIGTERM: %v", err)
	}
}

// Twenty follower processes; zsend --status --wait is the deploy gate:
// exit 0 once all run the latest version, 8 when a node's hook fails, 7
// on timeout (a tree no node follows never converges).
func TestTwentyFollowersStatusWaitCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	for i := 0; i < 50; i++ {
		writeFile(t, filepath.Join(src, "conf.d", fmt.Sprintf("%02d.conf", i)), strings.Repeat("x", i*100))
	}
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "state"), src)
	var outs []string
	for i := 0; i < 20; i++ {
		out := filepath.Join(base, fmt.Sprintf("n%02d", i))
		os.Mkdir(out, 0o755)
		outs = append(outs, out)
		startFollowerProc(t, zs.ep, out, fmt.Sprintf("web%02d", i))
	}
	if code, out, errs := statusWait(t, zs.ep, 60*time.Second, "--min-nodes", "20"); code != 0 || !strings.Contains(out, "20/20 nodes on app v1") {
		t.Fatalf("--wait v1: %d\n%s\n%s", code, out, errs)
	}
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	zs.cmd.Process.Signal(syscall.SIGHUP)
	waitTree(t, zs.ep, "app", 1)
	code, out, errs := statusWait(t, zs.ep, 60*time.Second, "--json")
	if code != 0 {
		t.Fatalf("--wait v2: %d\n%s\n%s", code, out, errs)
	}
	var js struct {
		Verdict string
		Trees   []struct {
			Tree      string
			LatestSeq uint64 `json:"latest_seq"`
			Summary   string
			Nodes     []struct {
				Node, State string
				Seq         uint64
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if js.Verdict != "converged" || len(js.Trees) != 1 || js.Trees[0].LatestSeq < 2 || len(js.Trees[0].Nodes) != 20 {
		t.Fatalf("--json: %+v", js)
	}
	for _, n := range js.Trees[0].Nodes {
		if n.State != "switched" || n.Seq != js.Trees[0].LatestSeq {
			t.Errorf("node %+v", n)
		}
	}
	for i, o := range outs {
		if got := readStable(t, o, "app", "app.conf"); got != "v2" {
			t.Errorf("node %d shows %q", i, got)
		}
	}
	// A node whose check fails on the next version: the gate says 8.
	bad := filepath.Join(base, "bad")
	os.Mkdir(bad, 0o755)
	startFollowerProc(t, zs.ep, bad, "bad", "--check", `[ "$ZSND_SEQ" -lt 3 ] || { echo refusing; exit 1; }`)
	if code, out, errs := statusWait(t, zs.ep, 60*time.Second, "--min-nodes", "21"); code != 0 {
		t.Fatalf("--wait with the new node: %d\n%s\n%s", code, out, errs)
	}
	writeFile(t, filepath.Join(src, "app.conf"), "v3")
	zs.cmd.Process.Signal(syscall.SIGHUP)
	waitTree(t, zs.ep, "app", 2)
	code, out, errs = statusWait(t, zs.ep, 60*time.Second)
	if code != 8 || !strings.Contains(out, "1 failed: bad") || !strings.Contains(out, "refusing") {
		t.Fatalf("--wait with a failed check: %d, want 8\n%s\n%s", code, out, errs)
	}
	// Timeout: a server whose tree nobody follows.
	lonely := filepath.Join(base, "lonely")
	writeFile(t, filepath.Join(lonely, "x"), "x")
	zl := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "state2"), lonely)
	if code, out, errs := statusWait(t, zl.ep, time.Second); code != 7 {
		t.Fatalf("--wait on a tree nobody follows: %d, want 7\n%s\n%s", code, out, errs)
	}
}

// A one-shot zrecv of a tree reports to the server too.
func TestOneShotTreeSyncReportsCLI(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	out := t.TempDir()
	code, _, errs := zrecv(t, "-q", "--node", "cron-box", "-o", out, ep, "app")
	if code != 0 {
		t.Fatalf("zrecv: %d %s", code, errs)
	}
	st := srv.Fleet()
	if len(st) != 1 || len(st[0].Rows) != 1 {
		t.Fatalf("fleet: %+v", st)
	}
	r := st[0].Rows[0]
	if r.Node != "cron-box" || r.State != "switched" || r.Seq != 1 || r.Version != st[0].Latest.Version {
		t.Fatalf("row: %+v", r)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// --metrics on zsend and on zrecv --follow serve Prometheus metrics.
func TestMetricsCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "state"), "--metrics", "127.0.0.1:0", src)
	var murl string
	select {
	case murl = <-zs.metrics:
	case <-time.After(10 * time.Second):
		t.Fatal("no metrics URL")
	}
	out := filepath.Join(base, "n1")
	os.Mkdir(out, 0o755)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	faddr := ln.Addr().String()
	ln.Close()
	startFollowerProc(t, zs.ep, out, "web1", "--metrics", faddr, "--exec", "exit 1")
	waitUntil(t, 20*time.Second, "the follower's report", func() (bool, string) {
		m := scrape(t, murl)
		return strings.Contains(m, `zsend_fleet_nodes{seq="1",state="failed",tree="app"} 1`), m
	})
	m := scrape(t, murl)
	for _, want := range []string{`zsend_versions_published_total{tree="app"} 1`, `zsend_tree_latest_seq{tree="app"} 1`,
		`zsend_fleet_node_lag_versions{node="web1",tree="app"} 0`, `zsend_fleet_hook_failures{tree="app"} 1`, "zsend_sessions ",
		"zsend_files_sent_total", "process_resident_memory_bytes",
		`zsend_fleet_node_lag_seconds{node="web1",tree="app"}`, `zsend_fleet_node_sync_seconds{node="web1",tree="app"}`,
		"zsend_sessions_opened_total ", "zsend_bytes_sent_total ", "zsend_reports_total"} {
		if !strings.Contains(m, want) {
			t.Errorf("zsend metrics lack %q", want)
		}
	}
	fm := scrape(t, "http://"+faddr+"/metrics")
	for _, want := range []string{`zrecv_syncs_total{result="switched",tree="app"} 1`, `zrecv_tree_seq{tree="app"} 1`,
		`zrecv_hook_failures_total{hook="exec",tree="app"} 1`, "zrecv_connected 1", `zrecv_files_fetched_total{tree="app"} 1`,
		"zrecv_sync_duration_seconds_count", `zrecv_bytes_fetched_total{tree="app"}`, "zrecv_disconnects_total"} {
		if !strings.Contains(fm, want) {
			t.Errorf("zrecv metrics lack %q:\n%s", want, fm)
		}
	}
}

// --log-format json: every stderr line of zsend and of zrecv --follow is
// a log/slog JSON record.
func TestLogFormatJSONCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	zs := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "st"),
		"--log-format", "json", src)
	zerr, _ := zs.StderrPipe()
	if err := zs.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(zerr)
	ep := ""
	var zlines []string
	for ep == "" && sc.Scan() {
		zlines = append(zlines, sc.Text())
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("zsend line is not JSON: %q", sc.Text())
		}
		if rec["msg"] == "serving" {
			ep, _ = rec["endpoint"].(string)
		}
	}
	out := filepath.Join(base, "n")
	os.Mkdir(out, 0o755)
	f := startFollowerProc(t, ep, out, "n1", "--log-format", "json")
	waitUntil(t, 20*time.Second, "switched", func() (bool, string) {
		return readStable(t, out, "app", "app.conf") == "v1", ""
	})
	if err := f.stop(t); err != nil {
		t.Fatalf("follower: %v", err)
	}
	zs.Process.Signal(syscall.SIGTERM)
	for sc.Scan() {
		zlines = append(zlines, sc.Text())
	}
	if err := zs.Wait(); err != nil {
		t.Fatalf("zsend: %v", err)
	}
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(f.log.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("zrecv line is not JSON: %q", l)
		}
		if k, ok := rec["event"].(string); ok {
			kinds = append(kinds, k)
		}
		if rec["event"] == "switched" {
			// switched_at: the rename, which the stable path's own
			// change time records, before the record itself.
			at, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["switched_at"]))
			logged, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["time"]))
			var st syscall.Stat_t
			err3 := syscall.Lstat(filepath.Join(out, "app"), &st)
			ctime := time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
			if err := errors.Join(err1, err2, err3); err != nil || at.After(logged) || at.Sub(ctime).Abs() > time.Second {
				t.Errorf("switched record: switched_at %v, logged %v, stable path changed %v (%v)", at, logged, ctime, err)
			}
		}
	}
	if !strings.Contains(strings.Join(kinds, " "), "switched") {
		t.Errorf("follower events %v", kinds)
	}
	for _, l := range zlines {
		if !json.Valid([]byte(l)) {
			t.Errorf("zsend line is not JSON: %q", l)
		}
	}
}
