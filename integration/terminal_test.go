package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
)

// Text from the peer reaches the terminal with its control characters
// escaped (README, "Use"): a server cannot clear the screen or print a
// fake "verified" line, and neither can a client on zsend's screen.

const evil = "\x1b[2J\x1b[H verified\r\n\x1b[32mOK\u202e"

func noRawControls(t *testing.T, what, out string) {
	t.Helper()
	for _, bad := range []string{"\x1b", "\r", "\u202e", "\u009b"} {
		if strings.Contains(out, bad) {
			t.Fatalf("%s: raw %q on the terminal:\n%q", what, bad, out)
		}
	}
}

func TestTerminalSafeFromServerText(t *testing.T) {
	t.Run("ERROR message", func(t *testing.T) {
		f := startFake(t, []byte("content"), lie{get: func(s *fakeSession, g *protocol.Get) {
			s.send(&protocol.Error{Request: g.Request, Code: protocol.CodeRefused, Message: evil})
		}})
		code, _, stderr := zrecv(t, "-t", "2s", "-o", t.TempDir(), f.ep, fakeName)
		if code != 3 {
			t.Fatalf("exit %d: %q", code, stderr)
		}
		noRawControls(t, "zrecv", stderr)
		if !strings.Contains(stderr, `\x1b[2J\x1b[H verified\r\n\x1b[32mOK\u202e`) {
			t.Fatalf("the server's message is not shown escaped: %q", stderr)
		}
	})
	t.Run("BYE reason", func(t *testing.T) {
		f := startFake(t, []byte("content"), lie{welcome: func(s *fakeSession, h *protocol.Hello) {
			s.send(&protocol.Bye{Code: protocol.CodeUnavailable, RetryAfterMS: 100, Reason: evil})
		}})
		code, _, stderr := zrecv(t, "-t", "1s", "-o", t.TempDir(), f.ep, fakeName)
		if code != 4 {
			t.Fatalf("exit %d: %q", code, stderr)
		}
		noRawControls(t, "zrecv", stderr)
		if !strings.Contains(stderr, `\x1b[2J`) {
			t.Fatalf("the BYE reason is not shown: %q", stderr)
		}
	})
}

// zsendJSON runs the zsend binary with --json on port 0 and returns the
// endpoint from its "listening" event, and a func that stops it (SIGTERM)
// and returns its stdout and stderr.
func zsendJSON(t *testing.T, args ...string) (string, func() (string, string)) {
	t.Helper()
	return zsendJSONOn(t, "tcp://127.0.0.1:0", args...)
}

// zsendJSONOn is zsendJSON bound to bind.
func zsendJSONOn(t *testing.T, bind string, args ...string) (string, func() (string, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), append([]string{"--json", "-b", bind, "--state-dir", t.TempDir()}, args...)...)
	var errb syncBuffer
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	epc := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.Write(append(sc.Bytes(), '\n'))
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["event"] == "listening" {
				ep, _ := ev["endpoint"].(string)
				select {
				case epc <- ep:
				default:
				}
			}
		}
	}()
	stopped := false
	stop := func() (string, string) {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGTERM)
			<-done
			if err := cmd.Wait(); err != nil {
				t.Errorf("zsend after SIGTERM: %v (stderr %q)", err, errb.String())
			}
			cancel()
		}
		return out.String(), errb.String()
	}
	t.Cleanup(func() { stop() })
	select {
	case ep := <-epc:
		if ep == "" || (strings.HasPrefix(bind, "tcp://") && strings.HasSuffix(ep, ":0")) || (!strings.HasPrefix(bind, "tcp://") && ep != bind) {
			t.Fatalf("listening event with endpoint %q", ep)
		}
		return ep, stop
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("no listening event; stderr %q", errb.String())
	}
	return "", nil
}

func TestTerminalSafeFromClientText(t *testing.T) {
	src := writeRandom(t, t.TempDir(), "f", 1000)
	ep, stop := zsendJSON(t, src)
	p := dialZ(t, ep, true)
	p.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 1 << 20, PeerID: evil})
	if m := p.expect(t, 3*time.Second); m.Command() != protocol.CmdWelcome {
		t.Fatalf("HELLO: %T", m)
	}
	p.send(t, &protocol.Get{Request: 1, Name: "nope" + evil[:4]})
	p.expectError(t, 1, protocol.CodeRefused, "GET with controls")
	p.send(t, &protocol.Bye{Code: protocol.CodeOK, Reason: evil})
	time.Sleep(200 * time.Millisecond) // let zsend log the close
	stdout, stderr := stop()
	noRawControls(t, "zsend", stderr)
	if !strings.Contains(stderr, `\x1b[2J\x1b[H verified`) || !strings.Contains(stderr, "connected") {
		t.Fatalf("zsend's log does not show the client escaped: %q", stderr)
	}
	// JSON keeps the text as it is (the encoder escapes it).
	if !strings.Contains(stdout, `"peer":"\u001b[2J\u001b[H verified\r\n\u001b[32mOK`) {
		t.Fatalf("JSON lost the peer id: %s", stdout)
	}
}

// Error messages name a file once: "app/app.conf: is a directory", not
// "app/app.conf: app/app.conf: app/app.conf is a directory".
func TestErrorNamesFileOnce(t *testing.T) {
	src := t.TempDir()
	if err := os.Mkdir(filepath.Join(src, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, filepath.Join(src, "app"), "app.conf", 100)
	ep, _ := zsendProc(t, filepath.Join(src, "app"))
	out := t.TempDir()
	if err := os.MkdirAll(filepath.Join(out, "app", "app.conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), "-t", "5s", ep, "app/app.conf")
	cmd.Dir = out
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.Run()
	if got := errb.String(); got != "zrecv: app/app.conf: is a directory\n" {
		t.Fatalf("stderr %q", got)
	}
	// The same for names the server refuses or does not serve, and for
	// names zrecv refuses itself.
	code, _, stderr := zrecv(t, "-t", "5s", "-o", out, ep, "missing.txt", "../f")
	if want := "zrecv: ../f: refused: invalid file name: contains a . or .. component\n" +
		"zrecv: missing.txt: server: not served here (404 not found)\n"; code != 3 || stderr != want {
		t.Fatalf("exit %d, stderr %q, want %q", code, stderr, want)
	}
	code, stdout, stderr := zrecv(t, "--json", "-t", "5s", "-o", out, ep, "app/app.conf")
	want := filepath.Join(out, "app", "app.conf") + ": is a directory"
	if code != 1 || stderr != "zrecv: "+want+"\n" || !strings.Contains(stdout, `"error":"`+want+`"`) {
		t.Fatalf("with -o: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
}

// Every failure of zrecv --json has an error event, with its exit code,
// before the summary.
func TestJSONErrorEventForEveryFailure(t *testing.T) {
	out := t.TempDir()
	// A missing -o with a server that cannot be reached: exit 4 (the
	// name may be a tree, which would create -o; the server did not say).
	wantCode := map[string]float64{"missing output dir": 4}
	for name, args := range map[string][]string{
		"missing output dir": {"--json", "-o", filepath.Join(out, "nope"), "tcp://127.0.0.1:1", "f"},
		"bad flag":           {"--json", "--bogus", "tcp://127.0.0.1:1", "f"},
		"bad flag first":     {"--bogus", "--json", "tcp://127.0.0.1:1", "f"},
		"no port":            {"--json", "tcp://127.0.0.1", "f"},
		"port 99999":         {"--json", "tcp://127.0.0.1:99999", "f"},
		"unknown scheme":     {"--json", "udp://127.0.0.1:5555", "f"},
		"no names":           {"--json", "tcp://127.0.0.1:1"},
		"bad window":         {"--json", "--window", "x", "tcp://127.0.0.1:1", "f"},
	} {
		want, ok := wantCode[name]
		if !ok {
			want = 2
		}
		code, stdout, stderr := zrecv(t, args...)
		if float64(code) != want {
			t.Errorf("%s: exit %d, want %v (stderr %q)", name, code, want, stderr)
		}
		if strings.Contains(stderr, "reconnecting") {
			t.Errorf("%s: retried a bad endpoint: %q", name, stderr)
		}
		var events []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
			var ev map[string]any
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("%s: not NDJSON: %q", name, line)
			}
			events = append(events, ev)
		}
		if len(events) != 2 || events[0]["event"] != "error" || events[0]["error"] == "" || events[0]["exit_code"] != want ||
			events[1]["event"] != "summary" || events[1]["exit_code"] != want {
			t.Errorf("%s: events %v", name, events)
		}
	}
}
