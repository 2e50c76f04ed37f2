package integration

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/faultproxy"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// proxyTo puts a fault-injecting proxy in front of a tcp:// endpoint.
func proxyTo(t *testing.T, ep string) (*faultproxy.Proxy, string) {
	t.Helper()
	p, err := faultproxy.New(strings.TrimPrefix(ep, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, "tcp://" + p.Addr()
}

func freeTCPEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "tcp://" + l.Addr().String()
}

// waitFor polls cond every 2ms until it holds or the bound passes.
func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// events collects receiver events for assertions.
type events struct {
	mu  sync.Mutex
	all []receiver.Event
}

func (e *events) add(ev receiver.Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }
func (e *events) count(k receiver.EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

// partPath and statePath are where zrecv keeps the partial data and its
// description for dir/name: the one place tests spell those names.
func partPath(dir, name string) string {
	part, _ := receiver.PartialPaths(filepath.Join(dir, name))
	return part
}

func statePath(dir, name string) string {
	_, state := receiver.PartialPaths(filepath.Join(dir, name))
	return state
}

// zrecv killed with SIGKILL mid-transfer resumes from its verified data,
// re-fetching at most one chunk of it, and reports the reuse in --json.
func TestResumeAfterSIGKILL(t *testing.T) {
	const size = 48 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	out := t.TempDir()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zrecv"), "-q", "-o", out, pep, "big.bin")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	part := partPath(out, "big.bin")
	waitFor(t, 30*time.Second, "a partial file of 12 MiB", func() bool { return fileSize(part) >= 12<<20 })
	proxy.Stall(true) // freeze the wire so the kill lands mid-transfer
	cmd.Process.Kill()
	cmd.Wait()
	proxy.Stall(false)
	verified := fileSize(part)
	if verified <= 0 || verified >= size {
		t.Fatalf("partial file holds %d bytes", verified)
	}
	if _, err := os.Stat(filepath.Join(out, "big.bin")); !os.IsNotExist(err) {
		t.Fatal("destination exists after a killed transfer")
	}

	code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "big.bin")
	if code != 0 {
		t.Fatalf("resume: exit %d: %s", code, stderr)
	}
	sameFile(t, p, filepath.Join(out, "big.bin"))
	done := jsonEvent(t, stdout, "file-done")
	reused, wire := int64(done["reused_bytes"].(float64)), int64(done["wire_bytes"].(float64))
	if reused < verified-protocol.DefaultChunk {
		t.Fatalf("reused %d of %d verified bytes: re-fetched more than one chunk", reused, verified)
	}
	if reused+wire != size {
		t.Fatalf("reused %d + wire %d != size %d", reused, wire, size)
	}
	if got := entries(t, out); len(got) != 1 {
		t.Fatalf("partial state left behind: %v", got)
	}
}

func jsonEvent(t *testing.T, stdout, kind string) map[string]any {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil && ev["event"] == kind {
			return ev
		}
	}
	t.Fatalf("no %s event in %q", kind, stdout)
	return nil
}

// SIGINT keeps resumable state and exits 130; the same command resumes.
func TestSIGINTKeepsState(t *testing.T) {
	p, ep, _ := serveRandom(t, "big.bin", 32<<20, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), "-q", "-o", out, pep, "big.bin")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "partial data", func() bool { return fileSize(partPath(out, "big.bin")) >= 4<<20 })
	proxy.Stall(true)
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("zrecv did not exit within 10s of SIGINT")
	}
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit %d after SIGINT, want 130", code)
	}
	proxy.Stall(false)
	if fileSize(partPath(out, "big.bin")) <= 0 {
		t.Fatal("partial state was not kept")
	}
	if code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "big.bin"); code != 0 {
		t.Fatalf("resume: exit %d: %s", code, stderr)
	} else if reused := jsonEvent(t, stdout, "file-done")["reused_bytes"].(float64); reused == 0 {
		t.Fatal("the second run did not resume")
	}
	sameFile(t, p, filepath.Join(out, "big.bin"))
}

// A server restarted mid-transfer (graceful: BYE 503) and one cut off
// abruptly (connections reset) both see the receiver reconnect and finish.
func TestReconnectAfterServerRestart(t *testing.T) {
	src := t.TempDir()
	const size = 40 << 20
	p := writeRandom(t, src, "big.bin", size)
	ep := freeTCPEndpoint(t)
	cfg := sender.Config{Endpoint: ep, Paths: []string{p}, ShutdownRetry: 50 * time.Millisecond}
	ctxA, stopA := context.WithCancel(context.Background())
	srvA, err := sender.Listen(ctxA, cfg)
	if err != nil {
		t.Fatal(err)
	}
	doneA := make(chan error, 1)
	go func() { doneA <- srvA.Serve(ctxA) }()

	var restarted atomic.Bool
	ev := &events{}
	out := t.TempDir()
	rcfg := receiver.Config{Endpoint: ep, OutputDir: out, Timeout: 10 * time.Second, Progress: func(e receiver.Event) {
		ev.add(e)
		if e.Kind == receiver.EventProgress && e.Done > size/3 && restarted.CompareAndSwap(false, true) {
			stopA()
			<-doneA
			serve(t, cfg) // same endpoint, new process state
		}
	}}
	results, err := fetch(t, rcfg, "big.bin")
	if err != nil {
		t.Fatalf("fetch across a restart: %v", err)
	}
	if !restarted.Load() || ev.count(receiver.EventReconnect) == 0 {
		t.Fatal("the server was not restarted during the transfer")
	}
	// Resumed, not started over: what was verified before the restart is
	// kept, so little or nothing came twice, and each byte is counted once.
	r := results[0]
	if r.Refetched >= size/3 || r.Wire+r.Reused != size {
		t.Fatalf("wire %d + reused %d (refetched %d) for %d bytes: the transfer started over instead of resuming", r.Wire, r.Reused, r.Refetched, size)
	}
	sameFile(t, p, results[0].Path)
}

func TestReconnectAfterConnectionsCut(t *testing.T) {
	const size = 40 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	var cut atomic.Int32
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Progress: func(e receiver.Event) {
		ev.add(e)
		if e.Kind == receiver.EventProgress && e.Done > int64(cut.Load()+1)*size/4 && cut.Load() < 2 {
			cut.Add(1)
			proxy.Cut()
		}
	}}, "big.bin")
	if err != nil {
		t.Fatalf("fetch across cut connections: %v", err)
	}
	if cut.Load() == 0 || ev.count(receiver.EventReconnect) == 0 {
		t.Fatalf("no reconnect happened (cuts %d)", cut.Load())
	}
	sameFile(t, p, results[0].Path)
}

// A server that stays away longer than Timeout: a clear error, partial
// state kept, destination absent.
func TestServerGoneLongerThanTimeout(t *testing.T) {
	src := t.TempDir()
	const size = 32 << 20
	p := writeRandom(t, src, "big.bin", size)
	ep := freeTCPEndpoint(t)
	ctx, stop := context.WithCancel(context.Background())
	srv, err := sender.Listen(ctx, sender.Config{Endpoint: ep, Paths: []string{p}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	out := t.TempDir()
	var once sync.Once
	start := time.Now()
	_, err = fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Timeout: time.Second, Progress: func(e receiver.Event) {
		if e.Kind == receiver.EventProgress && e.Done > size/4 {
			once.Do(func() { stop(); <-done })
		}
	}}, "big.bin")
	if !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("gave up after %v", el)
	}
	if fileSize(partPath(out, "big.bin")) <= 0 {
		t.Fatal("partial state not kept for a later resume")
	}
	if _, err := os.Stat(filepath.Join(out, "big.bin")); !os.IsNotExist(err) {
		t.Fatal("destination exists")
	}
}

// A sender that goes silent with the connection open is noticed within the
// peer timeout, not waited for forever.
func TestSilentSenderDetected(t *testing.T) {
	const size = 32 << 20
	_, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	var once sync.Once
	start := time.Now()
	out := t.TempDir()
	_, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: out, PeerTimeout: 500 * time.Millisecond,
		Heartbeat: 100 * time.Millisecond, Timeout: 1500 * time.Millisecond, Progress: func(e receiver.Event) {
			if e.Kind == receiver.EventProgress && e.Done > size/4 {
				once.Do(func() { proxy.Stall(true) })
			}
		}}, "big.bin")
	if !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("took %v to notice a silent sender", el)
	}
	if !strings.Contains(err.Error(), "silent") && !strings.Contains(err.Error(), "WELCOME") {
		t.Fatalf("error %q does not say the server went silent", err)
	}
	proxy.Stall(false)
}

// A receiver that stops talking is dropped by the sender, with everything
// it held (session, open file) released.
func TestSilentReceiverDropped(t *testing.T) {
	_, _, srv := serveRandom(t, "big.bin", 16<<20, sender.Config{PeerTimeout: 500 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	d := rawDealer(t, srv.Endpoint())
	d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MaxChunkSize})
	d.send(t, &protocol.Credit{Limit: 2 << 20})
	d.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
	waitFor(t, 5*time.Second, "the session to open a file", func() bool { return srv.Stats().OpenFiles == 1 })
	// Now silence: no PING, no CREDIT.
	waitFor(t, 10*time.Second, "the silent session to be dropped", func() bool {
		st := srv.Stats()
		return st.Sessions == 0 && st.OpenFiles == 0
	})
}

// A receiver stalled on a slow disk keeps its session: its heartbeats go
// out from their own goroutine.
func TestSlowReceiverNotMistakenForDead(t *testing.T) {
	p, _, srv := serveRandom(t, "f.bin", 8<<20, sender.Config{PeerTimeout: 600 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	var once sync.Once
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: srv.Endpoint(), OutputDir: t.TempDir(), PeerTimeout: 600 * time.Millisecond,
		Heartbeat: 100 * time.Millisecond, Progress: func(e receiver.Event) {
			ev.add(e)
			if e.Kind == receiver.EventProgress {
				once.Do(func() { time.Sleep(2 * time.Second) }) // a disk write taking 2s
			}
		}}, "f.bin")
	if err != nil {
		t.Fatal(err)
	}
	if n := ev.count(receiver.EventReconnect); n != 0 {
		for _, e := range ev.all {
			if e.Kind == receiver.EventReconnect {
				t.Logf("reconnect: %s", e.Message)
			}
		}
		t.Fatalf("%d reconnects: a slow receiver was taken for a dead one", n)
	}
	if st := srv.Stats(); st.Opened != 1 {
		t.Fatalf("%d sessions opened, want 1", st.Opened)
	}
	sameFile(t, p, results[0].Path)
}

// Bits flipped on the wire never reach the file: the chunk is requested
// again (or the session re-established) and the result is exact.
func TestCorruptionOnTheWire(t *testing.T) {
	p, ep, _ := serveRandom(t, "big.bin", 24<<20, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	proxy.CorruptDownstream(3<<20, 4) // four flips, 3 MiB apart
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Progress: ev.add}, "big.bin")
	if err != nil {
		t.Fatalf("fetch through a corrupting proxy: %v", err)
	}
	if ev.count(receiver.EventRestart)+ev.count(receiver.EventReconnect) == 0 {
		t.Fatal("no corruption was detected: did the proxy flip anything?")
	}
	sameFile(t, p, results[0].Path)
}

// Corruption beyond the retry budget fails clearly and leaves nothing.
func TestCorruptionBeyondRetries(t *testing.T) {
	_, ep, _ := serveRandom(t, "big.bin", 8<<20, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	proxy.CorruptDownstream(64<<10, 1<<20) // a flip every 64 KiB, for ever
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "big.bin"), []byte("previous version"), 0o644)
	_, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: out, Retries: 3, Timeout: 3 * time.Second}, "big.bin")
	if !errors.Is(err, receiver.ErrVerify) && !errors.Is(err, receiver.ErrProtocol) && !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v, want a verification or protocol failure", err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "big.bin")); string(b) != "previous version" {
		t.Fatal("the existing destination was touched")
	}
}

func overwrite(t *testing.T, path string, n int64) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// In place, as an editor without atomic save would: same inode.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(b, 0)
	f.Close()
	os.Remove(tmp)
}

// A source rewritten while it is sent: the receiver restarts on the new
// version and ends with exactly it, never a mix.
func TestSourceChangesDuringTransfer(t *testing.T) {
	const size = 24 << 20
	p, ep, _ := serveRandom(t, "conf.bin", size, sender.Config{})
	var once sync.Once
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Progress: func(e receiver.Event) {
		ev.add(e)
		if e.Kind == receiver.EventProgress {
			once.Do(func() { overwrite(t, p, size) })
		}
	}}, "conf.bin")
	if err != nil {
		t.Fatal(err)
	}
	if ev.count(receiver.EventRestart) == 0 {
		t.Fatal("the change was not noticed")
	}
	sameFile(t, p, results[0].Path)
}

// A source changed between an interrupted transfer and its resume: the
// partial data is discarded, and the receiver says so.
func TestSourceChangedBeforeResume(t *testing.T) {
	const size = 24 << 20
	p, ep, _ := serveRandom(t, "conf.bin", size, sender.Config{})
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: out, Progress: func(e receiver.Event) {
		if e.Kind == receiver.EventProgress && e.Done > size/4 {
			cancel()
		}
	}}, "conf.bin")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first attempt: %v", err)
	}
	overwrite(t, p, size)
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Progress: ev.add}, "conf.bin")
	if err != nil {
		t.Fatal(err)
	}
	restarted := false
	for _, e := range ev.all {
		if e.Kind == receiver.EventRestart && strings.Contains(e.Message, "source changed") {
			restarted = true
		}
	}
	if !restarted || results[0].Reused != 0 {
		t.Fatalf("resume of a changed source: restart event %v, reused %d", restarted, results[0].Reused)
	}
	sameFile(t, p, results[0].Path)
}

// A full disk: a clear error naming the path, the existing destination
// untouched. Needs root to mount a small tmpfs; skipped otherwise.
func TestDiskFull(t *testing.T) {
	mnt := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).Run(); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v): full-disk test needs root", err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	p, ep, _ := serveRandom(t, "big.bin", 8<<20, sender.Config{})
	os.WriteFile(filepath.Join(mnt, "big.bin"), []byte("previous version"), 0o644)
	code, _, stderr := zrecv(t, "-q", "-o", mnt, ep, "big.bin")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	if !strings.Contains(stderr, "no space left") || !strings.Contains(stderr, mnt) {
		t.Fatalf("error %q does not name the path and the cause", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "big.bin")); string(b) != "previous version" {
		t.Fatal("the existing destination was touched")
	}
	// The partial file is kept (README: "the partial file is kept so that
	// the same command resumes once the problem is fixed")...
	kept := int64(0)
	for _, b := range hiddenFiles(t, mnt, "big.bin") {
		kept = max(kept, int64(len(b)))
	}
	if kept < 1<<20 {
		t.Fatalf("no partial data kept after the full disk (largest hidden file %d bytes; entries %v)", kept, entries(t, mnt))
	}
	// ...and after space is freed the same command resumes from it.
	os.Remove(filepath.Join(mnt, "big.bin"))
	if err := exec.Command("mount", "-o", "remount,size=16m", mnt).Run(); err != nil {
		t.Fatalf("growing the tmpfs: %v", err)
	}
	code, stdout, stderr := zrecv(t, "--json", "-o", mnt, ep, "big.bin")
	if code != 0 {
		t.Fatalf("after freeing space: exit %d: %s", code, stderr)
	}
	done := jsonEvent(t, stdout, "file-done")
	if reused := done["reused_bytes"].(float64); reused < 1<<20 {
		t.Fatalf("the resumed fetch reused %v bytes of the %d kept", reused, kept)
	}
	sameFile(t, p, filepath.Join(mnt, "big.bin"))
	if fmt.Sprint(entries(t, mnt)) != "[big.bin]" {
		t.Fatalf("left behind: %v", entries(t, mnt))
	}
}

// --no-resume discards an earlier attempt's partial data.
func TestNoResumeStartsOver(t *testing.T) {
	const size = 24 << 20
	p, ep, _ := serveRandom(t, "f.bin", size, sender.Config{})
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: out, Progress: func(e receiver.Event) {
		if e.Kind == receiver.EventProgress && e.Done > size/3 {
			cancel()
		}
	}}, "f.bin")
	if fileSize(partPath(out, "f.bin")) <= 0 {
		t.Fatal("no partial file to discard")
	}
	code, stdout, stderr := zrecv(t, "--json", "--no-resume", "-o", out, ep, "f.bin")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	done := jsonEvent(t, stdout, "file-done")
	if done["reused_bytes"].(float64) != 0 || done["wire_bytes"].(float64) != size {
		t.Fatalf("--no-resume reused data: %v\n%s\n%s", done, stdout, stderr)
	}
	sameFile(t, p, filepath.Join(out, "f.bin"))
}

// Permission denied at the destination (an immutable directory: root
// ignores mode bits but not that): a clear error naming the path, exit 1,
// nothing changed.
func TestPermissionDenied(t *testing.T) {
	out := t.TempDir()
	if err := exec.Command("chattr", "+i", out).Run(); err != nil {
		t.Skipf("cannot make a directory immutable here: %v", err)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", out).Run() })
	_, ep, _ := serveRandom(t, "f.bin", 1<<20, sender.Config{})
	code, _, stderr := zrecv(t, "-q", "-o", out, ep, "f.bin")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	if !strings.Contains(stderr, out) || !strings.Contains(stderr, "not permitted") {
		t.Fatalf("error %q does not name the path and the cause", stderr)
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("immutable directory now holds %v", got)
	}
}

// A receiver that vanishes is forgotten when its connection closes (the
// guard reports it), not a peer timeout later: its session and open file
// are released at once.
func TestDepartedReceiverReleasedAtOnce(t *testing.T) {
	_, _, srv := serveRandom(t, "big.bin", 64<<20, sender.Config{PeerTimeout: time.Minute, Heartbeat: 10 * time.Second})
	d := rawDealer(t, srv.Endpoint())
	d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MinChunkSize})
	if _, ok := d.recv(t).(*protocol.Welcome); !ok {
		t.Fatal("no WELCOME")
	}
	// No credit: after FILE the server has nothing to send, so no failed
	// send can reveal the departure; only the connection's close can.
	d.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
	if _, ok := d.recv(t).(*protocol.File); !ok {
		t.Fatal("no FILE")
	}
	waitFor(t, 5*time.Second, "the transfer to start", func() bool { return srv.Stats().OpenFiles == 1 })
	d.sock.Close()
	start := time.Now()
	waitFor(t, 3*time.Second, "the departed session to be released", func() bool {
		st := srv.Stats()
		return st.Sessions == 0 && st.OpenFiles == 0
	})
	t.Logf("released %v after the receiver left (peer timeout 1m)", time.Since(start).Round(time.Millisecond))
}
