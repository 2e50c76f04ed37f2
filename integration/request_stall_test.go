package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// TestUnansweredRequestsAreBounded: a server that completes the handshake
// and answers every PING, but never answers LIST, STATUS, REPORT or
// ACCESS, keeps no client waiting past the stall timeout (library), nor
// past --deadline (zrecv) or --timeout (zsend --status, with and without
// --wait). README "Waits and budgets", PROTOCOL.md section 8.
func TestUnansweredRequestsAreBounded(t *testing.T) {
	ep := rawServer(t, func(protocol.Message) []protocol.Message { return nil })
	cfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: time.Second,
		StallTimeout: time.Second, PeerTimeout: 2 * time.Second, Heartbeat: 200 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, call := range map[string]func() error{
		"List":   func() error { _, err := receiver.List(ctx, cfg, "etc"); return err },
		"Status": func() error { _, err := receiver.Status(ctx, cfg, ""); return err },
		"Report": func() error {
			return receiver.Report(ctx, cfg, protocol.Report{State: protocol.StateSwitched, Node: "n1", Tree: "etc"})
		},
		"Access": func() error { _, err := receiver.Access(ctx, cfg, [32]byte{1}); return err },
	} {
		start := time.Now()
		err := call()
		took := time.Since(start)
		if err == nil || ctx.Err() != nil || took > 8*time.Second {
			t.Errorf("%s against a server that never answers: %v after %v (want an error within the 1 s stall timeout and the 1 s --timeout, plus a tick)", name, err, took)
		}
	}

	out := t.TempDir()
	for _, c := range []struct {
		name  string
		bin   string
		args  []string
		codes []int
		max   time.Duration
	}{
		// The probe LIST of a tree sync: --deadline ends it (exit 7).
		{"zrecv --deadline", "zrecv", []string{"-t", "2s", "--deadline", "3s", "-o", out, ep, "etc"}, []int{7}, 12 * time.Second},
		// --wait: exit 7 once --timeout has passed, whatever the polls do.
		{"zsend --status --wait", "zsend", []string{"--status", ep, "--wait", "--timeout", "3s"}, []int{7}, 12 * time.Second},
		// A plain --status: --timeout bounds it too (exit 4).
		{"zsend --status", "zsend", []string{"--status", ep, "--timeout", "3s"}, []int{4}, 12 * time.Second},
	} {
		code, _, stderr, took := runFor(t, 60*time.Second, c.bin, c.args...)
		ok := false
		for _, want := range c.codes {
			ok = ok || code == want
		}
		if !ok || took > c.max {
			t.Errorf("%s: exit %d after %v (want %v within %v): %s", c.name, code, took, c.codes, c.max, stderr)
		}
	}
}

// TestDeadlineBoundsTreeSync: --deadline bounds a whole tree sync (the
// manifest, then the files), not each step: against a server that sends
// 32 KiB/s, a tree whose manifest takes about 1.5 s and whose files take
// about 3.5 s ends with exit 7 at the 4 s deadline, and the stable path is
// not made.
func TestDeadlineBoundsTreeSync(t *testing.T) {
	src := filepath.Join(t.TempDir(), "conf")
	os.Mkdir(src, 0o755)
	long := strings.Repeat("x", 150) // long names: a large manifest
	for i := range 500 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("n%04d%s", i, long)), bytes.Repeat([]byte{byte(i)}, 200), 0o644)
	}
	ep, _ := zsendCurveProc(t, "--state-dir", t.TempDir(), "--rate-limit", "32K", src)
	out := t.TempDir()
	code, _, stderr, took := runFor(t, 60*time.Second, "zrecv", "-q", "--deadline", "4s", "-o", out, ep, "conf")
	if code != 7 || took > 10*time.Second {
		t.Fatalf("exit %d after %v (want 7 at about 4 s): %s", code, took, stderr)
	}
	if _, err := os.Lstat(filepath.Join(out, "conf")); !os.IsNotExist(err) {
		t.Fatalf("the stable path exists after a sync cut by --deadline: %v", err)
	}
}

// TestStatusWaitBoundedWhenServerDies: zsend --status --wait --timeout 4s
// ends within that bound (exit 7, or 4: the server is gone) when the
// server dies during the wait; each poll's reconnecting gets what is left
// of --timeout, not a fresh one.
func TestStatusWaitBoundedWhenServerDies(t *testing.T) {
	src := filepath.Join(t.TempDir(), "conf")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), "-b", "tcp://127.0.0.1:0", "--state-dir", t.TempDir(), src)
	stderr, _ := srv.StderrPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	defer srv.Process.Kill()
	epc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`on (tcp://\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				epc <- m[1]
			}
		}
	}()
	var ep string
	select {
	case ep = <-epc:
	case <-time.After(10 * time.Second):
		t.Fatal("zsend did not say its endpoint")
	}
	// No node follows the tree: --wait cannot converge.
	time.AfterFunc(1500*time.Millisecond, func() { srv.Process.Kill() })
	code, _, out, took := runFor(t, 60*time.Second, "zsend", "--status", ep, "--wait", "--timeout", "4s")
	if (code != 7 && code != 4) || took > 5500*time.Millisecond {
		t.Fatalf("exit %d after %v (want 7 or 4 within the 4 s --timeout): %s", code, took, out)
	}
}

// TestStatusOfVersion1Server: zsend --status against a server that speaks
// ZSND/1 only (no trees, no fleet) exits 3, as documented.
func TestStatusOfVersion1Server(t *testing.T) {
	ep := rawServerWith(t, rawOptions{version: 1})
	code, _, stderr, took := runFor(t, 60*time.Second, "zsend", "--status", ep, "--timeout", "5s")
	if code != 3 || took > 10*time.Second {
		t.Fatalf("exit %d after %v (want 3): %s", code, took, stderr)
	}
}
