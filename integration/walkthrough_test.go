package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeBlock returns the first ```bash block of README.md after heading.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), heading)
	_, after, ok2 := strings.Cut(after, "```bash\n")
	block, _, ok3 := strings.Cut(after, "\n```")
	if !ok || !ok2 || !ok3 {
		t.Fatalf("README has no bash block under %q", heading)
	}
	return block
}

// runScript runs script with bash -e in dir, the binaries of this build
// first on PATH and a state directory of its own for zsend; the
// processes it left in the background are stopped when it ends.
func runScript(dir, script string, bound time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"+script+"\n")
	cmd.Env = append(os.Environ(), "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"STATE_DIRECTORY="+filepath.Join(dir, "state"))
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

// README's "Configuration distribution in five minutes" block, run as
// written by bash with the binaries of this build on PATH. Only what
// would collide with other tests is changed: /tmp/cfg and /tmp/webN
// become directories of this test, port 5555 a free one, and each
// "sleep 1" (the wait for --watch to publish before the gate) is 5 s, so
// that a loaded machine cannot make the gate pass on the old version.
// The script runs with set -e: every command must succeed, each
// --status --wait gate included.
func TestReadmeFiveMinuteWalkthrough(t *testing.T) {
	block := readmeBlock(t, "### Configuration distribution in five minutes")
	base := t.TempDir()
	ep := freeTCPEndpoint(t)
	port := ep[strings.LastIndex(ep, ":")+1:]
	script := strings.NewReplacer("/tmp/cfg", filepath.Join(base, "cfg"), "/tmp/web", filepath.Join(base, "web"),
		"5555", port, "sleep 1", "sleep 5").Replace(block)
	if !strings.Contains(block, "/tmp/cfg") || !strings.Contains(block, "/tmp/web") || !strings.Contains(block, "5555") || !strings.Contains(block, "sleep 1") {
		t.Fatalf("the walkthrough changed shape; adapt this test:\n%s", block)
	}
	out, err := runScript(base, script, 4*time.Minute)
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\n%s", err, out)
	}
	for _, want := range []string{"3/3 nodes on myapp v1", "3/3 nodes on myapp v2", "3/3 nodes on myapp v3", "exec ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the walkthrough's output lacks %q", want)
		}
	}
	for n := 1; n <= 3; n++ {
		if got := readStable(t, filepath.Join(base, "web"+string(rune('0'+n))), "myapp", "app.conf"); got != "listen 8080\n" {
			t.Errorf("web%d shows %q, want the rolled-back content", n, got)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// README's relay example, run as written (paths and ports changed): the
// root publishes, the relay follows and serves, the leaf fed by the relay
// ends with the root's content.
func TestReadmeRelayExample(t *testing.T) {
	block := readmeBlock(t, "### Relays: from one server to hundreds of nodes")
	for _, s := range []string{"/tmp/cfg", "/tmp/relay1", "/tmp/leaf1", "5555", "6001"} {
		if !strings.Contains(block, s) {
			t.Fatalf("the relay example changed shape (no %s); adapt this test:\n%s", s, block)
		}
	}
	base := t.TempDir()
	root, relay := freeTCPEndpoint(t), freeTCPEndpoint(t)
	port := func(ep string) string { return ep[strings.LastIndex(ep, ":")+1:] }
	src := filepath.Join(base, "cfg", "myapp")
	writeFile(t, filepath.Join(src, "app.conf"), "listen 8080\n")
	leaf := filepath.Join(base, "leaf1")
	script := strings.NewReplacer("/tmp/", base+"/", "5555", port(root), "6001", port(relay)).Replace(block)
	script = "mkdir -p " + filepath.Join(base, "relay1") + " " + leaf + "\n" + script +
		"\nfor i in $(seq 300); do [ -f " + leaf + "/myapp/app.conf ] && break; sleep 0.1; done\n" +
		"for i in $(seq 150); do zsend --status tcp://127.0.0.1:" + port(root) + " | grep -q '2/2 nodes' && break; sleep 0.2; done\n" +
		"zsend --status tcp://127.0.0.1:" + port(root) + " --wait --timeout 1m"
	out, err := runScript(base, script, 3*time.Minute)
	if err != nil {
		t.Fatalf("the relay example failed: %v\n%s", err, out)
	}
	if got := readStable(t, leaf, "myapp", "app.conf"); got != "listen 8080\n" {
		t.Fatalf("the leaf shows %q\n%s", got, out)
	}
	if !strings.Contains(string(out), "2/2 nodes on myapp v1") {
		t.Fatalf("the root's status does not count the relay and its leaf:\n%s", out)
	}
}

// A one-shot sync whose report the server refuses (its fleet table is
// full: --max-nodes 1, the one node not lost) still exits 0 with the tree
// in place; the refusal is a warning on stderr (README, "Reports").
func TestOneShotReportRefusedIsAWarningCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "st"), "--max-nodes", "1", src)
	sync := func(node string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out := filepath.Join(base, node)
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zrecv"), "-q", "-o", out, "--node", node, zs.ep, "app")
		b, err := cmd.CombinedOutput()
		if got := readStable(t, out, "app", "app.conf"); got != "v1" {
			t.Errorf("node %s shows %q", node, got)
		}
		return string(b), err
	}
	if out, err := sync("a"); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("first node: %v\n%s", err, out)
	}
	out, err := sync("b")
	if err != nil {
		t.Fatalf("a refused report made the sync fail: %v\n%s", err, out)
	}
	if !strings.Contains(out, "zrecv: warning: reporting to the server") {
		t.Fatalf("no warning for the refused report:\n%s", out)
	}
}

// --min-nodes N: the gate also waits for N live nodes on the latest
// version (a node that has not reported yet is not in the table), and is
// a usage error without --wait.
func TestStatusWaitMinNodesCLI(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	zs := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(base, "st"), src)
	out := filepath.Join(base, "n1")
	os.Mkdir(out, 0o755)
	startFollowerProc(t, zs.ep, out, "n1")
	if code, o, e := statusWait(t, zs.ep, 30*time.Second, "--min-nodes", "1"); code != 0 || !strings.Contains(o, "1/1 nodes on app v1") {
		t.Fatalf("--min-nodes 1 with one node: %d\n%s\n%s", code, o, e)
	}
	if code, o, e := statusWait(t, zs.ep, time.Second, "--min-nodes", "2"); code != 7 || !strings.Contains(e, "not converged") {
		t.Fatalf("--min-nodes 2 with one node: %d, want 7 (timeout)\n%s\n%s", code, o, e)
	}
	cmd := exec.Command(filepath.Join(binDir, "zsend"), "--status", zs.ep, "--min-nodes", "2")
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("--min-nodes without --wait: %v, want exit 2", err)
	}
}
