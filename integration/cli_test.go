package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "zsend-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	// A zsend binary serving a directory publishes it into a state
	// directory; tests that do not pass --state-dir get one of this run
	// (never the machine's /var/lib/zsend, shared with other runs).
	os.Setenv("STATE_DIRECTORY", filepath.Join(dir, "state"))
	build := exec.Command("go", "build", "-o", dir, "../cmd/zsend", "../cmd/zrecv")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		panic("building binaries: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// zsendProc runs the zsend binary and returns its endpoint; it is stopped
// with SIGTERM at cleanup, and must exit 0.
func zsendProc(t *testing.T, args ...string) (string, *exec.Cmd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), append([]string{"-b", "tcp://127.0.0.1:0", "--state-dir", t.TempDir()}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	epc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`on (tcp://\S+)`)
		// Keep draining stderr to the end, whatever it prints: a pipe
		// nobody reads blocks zsend at its next write.
		for lines.Scan() {
			if m := re.FindStringSubmatch(lines.Text()); m != nil {
				select {
				case epc <- m[1]:
				default: // the endpoint was reported already
				}
			}
		}
		io.Copy(io.Discard, stderr) // after a line too long for the scanner
	}()
	stopped := false
	t.Cleanup(func() {
		defer cancel()
		if stopped {
			return
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("zsend after SIGTERM: %v", err)
		}
	})
	select {
	case ep := <-epc:
		return ep, cmd
	case <-time.After(10 * time.Second):
		stopped = true
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("zsend did not report its endpoint")
	}
	return "", nil
}

// zrecv runs the zrecv binary and returns its exit code, stdout and stderr.
func zrecv(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zrecv"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestBinariesEndToEnd(t *testing.T) {
	src := t.TempDir()
	p := writeRandom(t, src, "payload.bin", 9<<20+5)
	ep, _ := zsendProc(t, p)
	out := t.TempDir()
	code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "payload.bin")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sameFile(t, p, filepath.Join(out, "payload.bin"))
	var done map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not NDJSON: %q", line)
		}
		if ev["event"] == "file-done" {
			done = ev
		}
	}
	if done == nil {
		t.Fatalf("no file-done event in %s", stdout)
	}
	if done["blake3"] != b3(t, p) || done["name"] != "payload.bin" || done["size"].(float64) != 9<<20+5 {
		t.Fatalf("file-done %v", done)
	}
	if done["wire_bytes"].(float64) != 9<<20+5 {
		t.Fatalf("wire_bytes %v", done["wire_bytes"])
	}
}

func TestBinariesExitCodes(t *testing.T) {
	src := t.TempDir()
	p := writeRandom(t, src, "f", 1000)
	ep, _ := zsendProc(t, p)
	out := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"missing name", []string{"-q", "-o", out, ep, "missing.txt"}, 3, "missing.txt"},
		{"traversal", []string{"-q", "-o", out, ep, "../f"}, 3, "../f"},
		{"absolute", []string{"-q", "-o", out, ep, "/etc/passwd"}, 3, "absolute"},
		{"no arguments", nil, 2, "ENDPOINT"},
		{"bad flag", []string{"--frobnicate"}, 2, "frobnicate"},
		{"bad endpoint", []string{"-o", out, "http://x", "f"}, 2, "tcp://"},
		{"no port", []string{"-o", out, "tcp://127.0.0.1", "f"}, 2, "missing port"},
		{"port out of range", []string{"-o", out, "tcp://127.0.0.1:99999", "f"}, 2, "port 99999 out of range"},
		{"port 0", []string{"-o", out, "tcp://127.0.0.1:0", "f"}, 2, "port 0"},
		{"no socket path", []string{"-o", out, "ipc://", "f"}, 2, "missing socket path"},
		{"missing output dir", []string{"-o", filepath.Join(out, "nope"), ep, "f"}, 2, "output directory"},
		{"missing output dir, server unreachable", []string{"-t", "5s", "-o", filepath.Join(out, "nope"), "tcp://127.0.0.1:1", "f"}, 4,
			"does not exist (a tree sync creates it), and tcp://127.0.0.1:1 did not answer within 2s"},
		{"unreachable", []string{"-q", "-t", "1s", "-o", out, "tcp://127.0.0.1:1", "f"}, 4, "unreachable"},
	}
	for _, tc := range cases {
		code, _, stderr := zrecv(t, tc.args...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d (stderr %q)", tc.name, code, tc.code, stderr)
		}
		if !strings.Contains(stderr, tc.msg) {
			t.Errorf("%s: stderr %q does not mention %q", tc.name, stderr, tc.msg)
		}
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("failed fetches left %v", got)
	}
}

func TestBinariesHelpAndVersion(t *testing.T) {
	for _, bin := range []string{"zsend", "zrecv"} {
		// Help asked for goes to stdout (so it can be paged), exit 0.
		for _, flag := range []string{"--help", "-h"} {
			cmd := exec.Command(filepath.Join(binDir, bin), flag)
			var outb, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &outb, &errb
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s %s: %v", bin, flag, err)
			}
			for _, want := range []string{"Usage:", "Examples", "Exit codes:", "--json"} {
				if !strings.Contains(outb.String(), want) {
					t.Errorf("%s %s: stdout lacks %q", bin, flag, want)
				}
			}
			if errb.Len() != 0 {
				t.Errorf("%s %s wrote to stderr: %q", bin, flag, errb.String())
			}
		}
		// A usage error goes to stderr, exit 2, and stdout stays empty.
		cmd := exec.Command(filepath.Join(binDir, bin), "--frobnicate")
		var outb, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &outb, &errb
		if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 || outb.Len() != 0 || !strings.Contains(errb.String(), "frobnicate") {
			t.Errorf("%s --frobnicate: %v, stdout %q, stderr %q", bin, err, outb.String(), errb.String())
		}
		v, err := exec.Command(filepath.Join(binDir, bin), "--version").Output()
		// The versions it speaks, as the negotiation offers them.
		if err != nil || !strings.Contains(string(v), fmt.Sprintf("ZSND/1, versions %d..%d", protocol.MinVersion, protocol.MaxVersion)) {
			t.Errorf("%s --version: %q %v", bin, v, err)
		}
	}
	cmd := exec.Command(filepath.Join(binDir, "zsend"))
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Errorf("zsend without paths: %v", err)
	}
	cmd = exec.Command(filepath.Join(binDir, "zsend"), "/nonexistent/file")
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 {
		t.Errorf("zsend with a missing path: %v", err)
	}
	// --switch-delay is bounded as SWITCHAT's in-ms is (0 to 10 s).
	for _, d := range []string{"-1ms", "10001ms"} {
		cmd = exec.Command(filepath.Join(binDir, "zsend"), "--barrier", "--switch-delay", d, "/etc/hosts")
		if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--switch-delay") {
			t.Errorf("zsend --switch-delay %s: exit %d, %q", d, cmd.ProcessState.ExitCode(), out)
		}
	}
	// With --json, a failure to start is an error event with its code.
	cmd = exec.Command(filepath.Join(binDir, "zsend"), "--json", "-b", "tcp://127.0.0.1", "/etc/hosts")
	if out, _ := cmd.Output(); cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), `"event":"error"`) ||
		!strings.Contains(string(out), `"exit_code":2`) || !strings.Contains(string(out), "missing port") {
		t.Errorf("zsend --json with a bad endpoint: exit %d, stdout %q", cmd.ProcessState.ExitCode(), out)
	}
	// A bad endpoint is a usage error at once, with a message that names
	// it and no internal name.
	for ep, want := range map[string]string{
		"tcp://127.0.0.1":       "missing port",
		"tcp://127.0.0.1:99999": "port 99999 out of range",
		"udp://127.0.0.1:5555":  `unknown scheme "udp"`,
		"guard-tcp://1.2.3.4:5": `unknown scheme "guard-tcp"`,
	} {
		cmd := exec.Command(filepath.Join(binDir, "zsend"), "-b", ep, "/etc/hosts")
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(errb.String(), want) || !strings.Contains(errb.String(), ep) {
			t.Errorf("zsend -b %s: %v, stderr %q", ep, err, errb.String())
		}
	}
}
