package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The receiver's clocks and budgets (README "Waits and budgets"): Timeout
// counts from the lost server and every verified chunk restarts it, the
// reconnect delay starts small again after progress, corruption is budgeted
// per chunk and restarts per file, a FILE out of order is a violation, and
// a server that drips data or never finishes is given up on with
// ErrTooSlow.

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// zsendProcess is a zsend binary running on a known endpoint.
type zsendProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process is reaped
	stderr *syncBuffer
}

// startZsend starts the zsend binary on ep and waits until it serves.
func startZsend(ep string, args ...string) (*zsendProcess, error) {
	z := &zsendProcess{cmd: exec.Command(filepath.Join(binDir, "zsend"), append([]string{"-b", ep}, args...)...),
		exited: make(chan struct{}), stderr: &syncBuffer{}}
	z.cmd.Stderr = z.stderr
	if err := z.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { z.cmd.Wait(); close(z.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(z.stderr.String(), "serving") {
		select {
		case <-z.exited:
			return nil, fmt.Errorf("zsend exited: %s", z.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			z.cmd.Process.Kill()
			<-z.exited
			return nil, fmt.Errorf("zsend did not start serving: %s", z.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return z, nil
}

// zsendAt is startZsend for the test goroutine; the process is killed at
// cleanup if still running.
func zsendAt(t *testing.T, ep string, args ...string) *zsendProcess {
	t.Helper()
	z, err := startZsend(ep, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.cmd.Process.Kill(); <-z.exited })
	return z
}

// A transfer that takes several times Timeout survives the server being
// killed (or stopped with SIGTERM, BYE 503) mid-transfer and started again:
// the clock runs from the moment the server was lost, not from the start.
func TestServerRestartDuringLongTransfer(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			const size = 32 << 20
			p := writeRandom(t, t.TempDir(), "big.bin", size)
			ep := freeTCPEndpoint(t)
			first := zsendAt(t, ep, p)
			// A slow link: 1 MiB of credit per 100 ms round trip, so the
			// transfer takes well over Timeout.
			proxy, pep := proxyTo(t, ep)
			proxy.SetDelay(50 * time.Millisecond)

			const timeout = time.Second
			restart := make(chan struct{})
			restarted := make(chan struct{})
			go func() {
				defer close(restarted)
				<-restart
				first.cmd.Process.Signal(sig)
				<-first.exited
				time.Sleep(300 * time.Millisecond) // down for a while: reconnects fail
				second, err := startZsend(ep, p)
				if err != nil {
					t.Errorf("restarting zsend: %v", err)
					return
				}
				t.Cleanup(func() { second.cmd.Process.Kill(); <-second.exited })
			}()
			var once sync.Once
			ev := &events{}
			start := time.Now()
			var triggered atomic.Bool
			results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Timeout: timeout,
				MaxChunk: 1 << 20, Window: 1 << 20, MaxWindow: 1 << 20, Progress: func(e receiver.Event) {
					ev.add(e)
					if e.Kind == receiver.EventProgress && time.Since(start) > 3*timeout/2 {
						once.Do(func() { triggered.Store(true); close(restart) })
					}
				}}, "big.bin")
			took := time.Since(start)
			if !triggered.Load() {
				t.Fatalf("the transfer was over (%v, %v) before the server could be restarted", took, err)
			}
			select {
			case <-restarted:
			case <-time.After(15 * time.Second):
				t.Fatal("the server was never restarted")
			}
			if err != nil {
				t.Fatalf("fetch across a server restart (%v into it): %v", took, err)
			}
			if took <= timeout {
				t.Fatalf("the transfer took %v, not longer than Timeout: the test proves nothing", took)
			}
			if ev.count(receiver.EventReconnect) == 0 {
				t.Fatal("no reconnect")
			}
			r := results[0]
			if r.Wire+r.Reused != size || r.Refetched >= size/3 {
				t.Fatalf("wire %d + reused %d, refetched %d of %d: not resumed", r.Wire, r.Reused, r.Refetched, size)
			}
			sameFile(t, p, r.Path)
		})
	}
}

// Connections cut every MiB: each session verifies data, so the reconnect
// delay starts small again each time and the fetch completes however long
// it takes in all; wire and reused bytes add up to the size.
func TestConnectionCutEveryMiB(t *testing.T) {
	const size = 16 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	// Reconnects cost at least 100 ms each (the least delay), and there
	// are at least 4: the whole takes longer than Timeout, while a delay
	// that kept doubling (100, 200, ...) would spend it by the third.
	const timeout = 200 * time.Millisecond
	var nextCut atomic.Int64
	nextCut.Store(1 << 20)
	ev := &events{}
	start := time.Now()
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Timeout: timeout,
		Window: 1 << 20, MaxWindow: 1 << 20, Progress: func(e receiver.Event) {
			ev.add(e)
			if e.Kind != receiver.EventProgress {
				t.Logf("%v %s done=%d wire=%d refetched=%d %s", time.Since(start), e.Kind, e.Done, e.Wire, e.Refetched, e.Message)
			}
			if e.Kind == receiver.EventProgress && e.Done >= nextCut.Load() && e.Done < size {
				nextCut.Store(e.Done + 1<<20)
				proxy.Cut()
			}
		}}, "big.bin")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("fetch through a connection cut every MiB (after %v, %d reconnects): %v", took, ev.count(receiver.EventReconnect), err)
	}
	n := ev.count(receiver.EventReconnect)
	if n < 4 {
		t.Fatalf("only %d reconnects", n)
	}
	if took <= timeout {
		t.Fatalf("the fetch took %v, not longer than Timeout: the test proves nothing", took)
	}
	ev.mu.Lock()
	for _, e := range ev.all {
		// Each session verified data: the delay is back to its least.
		if e.Kind == receiver.EventReconnect && (e.Attempt != 1 || e.Endpoint != pep || e.RetryIn > 100*time.Millisecond) {
			t.Errorf("reconnect after a session that verified data: attempt %d, endpoint %q, retry in %v: %s", e.Attempt, e.Endpoint, e.RetryIn, e.Message)
		}
	}
	ev.mu.Unlock()
	r := results[0]
	if r.Wire+r.Reused != size {
		t.Fatalf("wire %d + reused %d != size %d", r.Wire, r.Reused, size)
	}
	sameFile(t, p, r.Path)
}

// Bits flipped all along a long file, one chunk in three or so: each chunk
// has its own budget, so the fetch completes (a budget for the whole file
// would be spent after five flips).
func TestNoisyLinkCompletes(t *testing.T) {
	const size = 40 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	proxy.CorruptDownstream(3<<20+12345, 12) // a dozen flips, 3 MiB apart
	ev := &events{}
	// A small window, so little data is in flight (and discarded unseen)
	// after each damaged chunk.
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Window: 1 << 20, MaxWindow: 1 << 20,
		Progress: ev.add}, "big.bin")
	if err != nil {
		t.Fatalf("fetch over a noisy link: %v", err)
	}
	if n := ev.count(receiver.EventRestart) + ev.count(receiver.EventReconnect); n <= 5 {
		t.Fatalf("only %d chunks were damaged: the test proves nothing", n)
	}
	sameFile(t, p, results[0].Path)
}

// fakeConfig is the receiver configuration the fake-sender tests use.
func fakeConfig(ep, out string) receiver.Config {
	return receiver.Config{Endpoint: ep, OutputDir: out, PeerID: "victim",
		Timeout: time.Second, PeerTimeout: 500 * time.Millisecond, Heartbeat: 100 * time.Millisecond, StallTimeout: time.Second,
		MaxChunk: fakeChunk, Window: fakeWindow, MaxWindow: fakeWindow}
}

func fakeFetch(t *testing.T, cfg receiver.Config, names ...string) ([]receiver.Result, error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	res, err := receiver.Fetch(ctx, cfg, names...)
	if ctx.Err() != nil {
		t.Fatalf("Fetch did not return within 30s: %v", err)
	}
	return res, err, time.Since(start)
}

// fileAt sends FILE for g, resuming at the offset asked when the tag is
// the current one (as an honest server does).
func fileAt(s *fakeSession, g *protocol.Get, content []byte) []*protocol.Chunk {
	off := uint64(0)
	if g.Tag == fileTag(content) && g.Offset <= uint64(len(content)) {
		off = g.Offset / uint64(s.chunk) * uint64(s.chunk)
	}
	s.send(&protocol.File{Request: g.Request, Size: uint64(len(content)), Mode: 0o644, MtimeNS: 1, Offset: off,
		Tag: fileTag(content), Name: g.Name})
	return s.chunks(g.Request, content)[off/uint64(s.chunk):]
}

func randomContent(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// One chunk that always arrives damaged: exactly Retries+1 attempts (5 by
// default, as README says), then ErrVerify; the damaged chunk is never
// written, the verified chunks before it are kept, and a second run against
// an honest server resumes from them.
func TestChunkBudgetKeepsVerifiedData(t *testing.T) {
	content := randomContent(10 * fakeChunk)
	const bad = 6 * fakeChunk
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		cs := fileAt(s, g, content)
		for i, c := range cs {
			if c.Offset == bad {
				c.Hash = badHash(c.Hash)
				s.queue = cs[:i+1]
				break
			}
		}
		s.pump()
	}})
	out := t.TempDir()
	_, err, _ := fakeFetch(t, fakeConfig(f.ep, out), fakeName)
	if !errors.Is(err, receiver.ErrVerify) {
		t.Fatalf("error %v, want ErrVerify", err)
	}
	if n := f.getCount(); n != 5 {
		t.Fatalf("%d attempts at the damaged chunk, README promises 5", n)
	}
	part, rerr := os.ReadFile(partPath(out, fakeName))
	if rerr != nil || !bytes.Equal(part, content[:bad]) {
		t.Fatalf("partial file holds %d bytes (%v), want exactly the %d verified before the damaged chunk", len(part), rerr, bad)
	}
	f.close()

	honest := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		s.queue = fileAt(s, g, content)
		s.ended = &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)}
		s.pump()
	}})
	res, err, _ := fakeFetch(t, fakeConfig(honest.ep, out), fakeName)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if res[0].Reused != bad || res[0].Wire != int64(len(content))-bad {
		t.Fatalf("second run reused %d, wire %d: want %d reused", res[0].Reused, res[0].Wire, bad)
	}
	if b, _ := os.ReadFile(filepath.Join(out, fakeName)); !bytes.Equal(b, content) {
		t.Fatal("wrong content")
	}
}

// Damage at a different chunk each time does not add up: ten chunks each
// damaged once (more than the 5 attempts of one chunk) complete.
func TestChunkBudgetIsPerChunk(t *testing.T) {
	content := randomContent(12 * fakeChunk)
	damaged := map[uint64]bool{}
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		cs := fileAt(s, g, content)
		for i, c := range cs {
			if c.Offset > 0 && !damaged[c.Offset] && len(damaged) < 10 {
				damaged[c.Offset] = true
				c.Hash = badHash(c.Hash)
				cs = cs[:i+1]
				break
			}
		}
		s.queue = cs
		s.ended = &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)}
		if len(cs) > 0 && cs[len(cs)-1].Hash != blake3.Sum256(cs[len(cs)-1].Data) {
			s.ended = nil
		}
		s.pump()
	}})
	out := t.TempDir()
	res, err, _ := fakeFetch(t, fakeConfig(f.ep, out), fakeName)
	if err != nil {
		t.Fatalf("ten chunks damaged once each: %v", err)
	}
	if len(damaged) != 10 {
		t.Fatalf("%d chunks damaged", len(damaged))
	}
	if res[0].Wire != int64(len(content)) || res[0].Refetched != 10*fakeChunk {
		t.Fatalf("wire %d, refetched %d", res[0].Wire, res[0].Refetched)
	}
}

// A server that starts the file over again and again, with ERROR 409 or a
// new version tag each time, is given up on after Restarts (5) restarts,
// with ErrChanged.
func TestRestartBudget(t *testing.T) {
	content := randomContent(4 * fakeChunk)
	// GETs: the first, one per restart allowed, and for a new tag the one
	// whose FILE brought the version too many.
	gets := map[string]int{"error-409": 6, "new-tag-each-session": 7}
	cases := map[string]lie{
		"error-409": {get: func(s *fakeSession, g *protocol.Get) {
			s.file(g, fakeName, uint64(len(content)))
			s.send(s.chunks(g.Request, content)[0])
			s.send(&protocol.Error{Request: g.Request, Code: protocol.CodeChanged, Message: "changed"})
		}},
		"new-tag-each-session": {get: func(s *fakeSession, g *protocol.Get) {
			// A new version each time, one chunk of it, then the server
			// goes away (BYE 503): every session verifies data.
			tag := protocol.Tag{}
			rand.Read(tag[:])
			s.send(&protocol.File{Request: g.Request, Size: uint64(len(content)), Mode: 0o644, Tag: tag, Name: fakeName})
			s.send(s.chunks(g.Request, content)[0])
			s.send(&protocol.Bye{Code: protocol.CodeUnavailable, Reason: "restarting"})
		}},
	}
	for name, l := range cases {
		t.Run(name, func(t *testing.T) {
			f := startFake(t, content, l)
			out := t.TempDir()
			_, err, took := fakeFetch(t, fakeConfig(f.ep, out), fakeName)
			if !errors.Is(err, receiver.ErrChanged) {
				t.Fatalf("error %v (after %v), want ErrChanged", err, took)
			}
			if n := f.getCount(); n != gets[name] {
				t.Fatalf("%d GETs, want %d: the first and 5 restarts", n, gets[name])
			}
			if _, err := os.Stat(filepath.Join(out, fakeName)); err == nil {
				t.Fatal("destination created")
			}
		})
	}
}

// A FILE out of order is a protocol violation: the receiver answers ERROR
// 400, drops the session, and counts it; past the budget the fetch fails
// with ErrProtocol.
func TestFileOutOfOrder(t *testing.T) {
	content := randomContent(4 * fakeChunk)
	cases := map[string]lie{
		// Only the first name's GET is answered, unless the case says so,
		// so that each case breaks one rule only.
		"second-file-same-request": {get: func(s *fakeSession, g *protocol.Get) {
			if g.Name != fakeName {
				return
			}
			s.file(g, fakeName, uint64(len(content)))
			s.send(s.chunks(g.Request, content)[0])
			s.file(g, fakeName, uint64(len(content)))
		}},
		"file-for-unknown-request": {get: func(s *fakeSession, g *protocol.Get) {
			if g.Name != fakeName {
				return
			}
			g.Request += 1000
			s.file(g, fakeName, uint64(len(content)))
		}},
		"file-for-later-request-first": {get: func(s *fakeSession, g *protocol.Get) {
			// Two GETs pipelined; the second is answered first.
			if g.Name == "other.bin" {
				s.serve(g, g.Name, content)
			}
		}},
		"file-for-next-request-mid-transfer": {get: func(s *fakeSession, g *protocol.Get) {
			s.file(g, g.Name, uint64(len(content)))
			if g.Name == fakeName {
				s.send(s.chunks(g.Request, content)[0])
			}
		}},
	}
	for name, l := range cases {
		t.Run(name, func(t *testing.T) {
			f := startFake(t, content, l)
			cfg := fakeConfig(f.ep, t.TempDir())
			cfg.Retries = 2
			_, err, took := fakeFetch(t, cfg, fakeName, "other.bin")
			if !errors.Is(err, receiver.ErrProtocol) {
				t.Fatalf("error %v (after %v), want ErrProtocol", err, took)
			}
			badRequests := func() (n int) {
				f.mu.Lock()
				defer f.mu.Unlock()
				for _, e := range f.errs {
					if e.Request == protocol.NoRequest && e.Code == protocol.CodeBadRequest {
						n++
					}
				}
				return n
			}
			// The last ERROR may still be on its way when Fetch returns.
			waitFor(t, 2*time.Second, "an ERROR 400 for each of the 3 violations", func() bool { return badRequests() >= 3 })
			f.close()
			if n := badRequests(); n != 3 {
				t.Errorf("%d ERROR 400 from the receiver, want one per violation (3)", n)
			}
			if f.hellos != 3 {
				t.Errorf("%d sessions: want 3 (each violation drops one; the third exceeds a budget of 2)", f.hellos)
			}
		})
	}
}

// drip serves FILE, then one chunk every interval, forever (the file is
// far larger than what is sent), answering PINGs: alive, never stalled
// long enough for StallTimeout, never done.
func drip(content []byte, interval time.Duration) lie {
	return lie{get: func(s *fakeSession, g *protocol.Get) {
		cs := fileAt(s, g, content)
		s.f.goRun(func(ctx context.Context) {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for len(cs) > 0 {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				s.f.mu.Lock()
				if s.sent+uint64(len(cs[0].Data)) <= s.credit {
					s.sent += uint64(len(cs[0].Data))
					s.send(cs[0])
					cs = cs[1:]
				}
				s.f.mu.Unlock()
			}
		})
	}}
}

// A server dripping data just fast enough to look alive ends in ErrTooSlow
// (below MinRate), and an overall Deadline ends any fetch.
func TestDripEndsTooSlow(t *testing.T) {
	content := randomContent(4 << 20)
	t.Run("min-rate", func(t *testing.T) {
		f := startFake(t, content, drip(content, 200*time.Millisecond)) // 20 KiB/s
		out := t.TempDir()
		cfg := fakeConfig(f.ep, out)
		cfg.MinRate, cfg.RateWindow, cfg.Timeout, cfg.PeerTimeout = 100<<10, time.Second, time.Second, 2*time.Second
		_, err, took := fakeFetch(t, cfg, fakeName)
		if !errors.Is(err, receiver.ErrTooSlow) || errors.Is(err, receiver.ErrUnreachable) {
			t.Fatalf("error %v (after %v), want ErrTooSlow", err, took)
		}
		if fileSize(partPath(out, fakeName)) <= 0 {
			t.Fatal("the verified partial data was not kept")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		f := startFake(t, content, drip(content, 50*time.Millisecond))
		cfg := fakeConfig(f.ep, t.TempDir())
		cfg.MinRate, cfg.Deadline = -1, time.Second
		_, err, took := fakeFetch(t, cfg, fakeName)
		if !errors.Is(err, receiver.ErrTooSlow) || !strings.Contains(err.Error(), "deadline") {
			t.Fatalf("error %v (after %v), want ErrTooSlow naming the deadline", err, took)
		}
	})
	// zrecv offers 4 MiB chunks, so the fake sends 1 MiB ones: 5 MiB/s.
	big := randomContent(32 << 20)
	for name, args := range map[string][]string{
		"zrecv-min-rate": {"--min-rate", "10M", "--rate-window", "1s", "-t", "1s"},
		"zrecv-deadline": {"--min-rate", "0", "--deadline", "1s"},
	} {
		t.Run(name, func(t *testing.T) {
			f := startFake(t, big, drip(big, 200*time.Millisecond))
			code, _, stderr := zrecv(t, append(append([]string{"-q", "-o", t.TempDir(), "--peer-timeout", "2s", "--heartbeat", "100ms"},
				args...), f.ep, fakeName)...)
			if code != 7 || !strings.Contains(stderr, "too slow") {
				t.Fatalf("exit %d, want 7: %s", code, stderr)
			}
		})
	}
}

// A server that serves a little and then restarts (BYE 503), every
// session, is reachable and making progress: the fetch completes, however
// many times Timeout it takes in all.
func TestRestartingServerMakingProgress(t *testing.T) {
	content := randomContent(24 * fakeChunk)
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		cs := fileAt(s, g, content)
		s.send(cs[0])
		if len(cs) == 1 {
			s.send(&protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)})
			return
		}
		s.send(&protocol.Bye{Code: protocol.CodeUnavailable, RetryAfterMS: 60, Reason: "restarting"})
	}})
	cfg := fakeConfig(f.ep, t.TempDir())
	cfg.Timeout = 200 * time.Millisecond
	var retryIn []time.Duration
	cfg.Progress = func(e receiver.Event) {
		if e.Kind == receiver.EventReconnect {
			retryIn = append(retryIn, e.RetryIn)
		}
	}
	res, err, took := fakeFetch(t, cfg, fakeName)
	if err != nil {
		t.Fatalf("a restarting server making progress (after %v): %v", took, err)
	}
	// The delay is the BYE's retry-after (or less, if Timeout is nearer).
	got60 := false
	for _, d := range retryIn {
		if d > 60*time.Millisecond {
			t.Fatalf("reconnect delays %v: BYE 503 asked for 60ms", retryIn)
		}
		got60 = got60 || d == 60*time.Millisecond
	}
	if !got60 {
		t.Fatalf("reconnect delays %v: BYE 503 asked for 60ms", retryIn)
	}
	if took < 2*cfg.Timeout {
		t.Fatalf("took %v, not longer than Timeout: the test proves nothing", took)
	}
	if res[0].Wire != int64(len(content)) || res[0].Reused != 0 {
		t.Fatalf("wire %d, reused %d", res[0].Wire, res[0].Reused)
	}
}

// A server that answers PINGs and re-sends the same first chunk each
// session makes no progress: re-verified data does not restart the clock.
func TestSameChunkEachSessionIsNoProgress(t *testing.T) {
	content := randomContent(4 * fakeChunk)
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		g.Offset = 0
		s.file(g, fakeName, uint64(len(content)))
		s.send(s.chunks(g.Request, content)[0])
		s.send(&protocol.Bye{Code: protocol.CodeUnavailable, Reason: "restarting"})
	}})
	_, err, took := fakeFetch(t, fakeConfig(f.ep, t.TempDir()), fakeName)
	if !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v (after %v), want ErrUnreachable", err, took)
	}
}

// Nothing listening: zrecv says at once, on stderr, that it is connecting
// and retrying, and when it gives up (exit 4) names the last cause; its
// JSON reconnect events carry the endpoint and the attempt number.
func TestZrecvSaysItIsConnecting(t *testing.T) {
	sockDir, err := os.MkdirTemp("", "zs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	for _, c := range []struct{ ep, cause string }{
		{freeTCPEndpoint(t), "connection refused"},
		{"ipc://" + filepath.Join(sockDir, "nobody"), "no such socket file"},
	} {
		t.Run(c.cause, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "zrecv"), "--json", "-t", "3s", "-o", t.TempDir(), c.ep, "f")
			errb, outb := &syncBuffer{}, &syncBuffer{}
			cmd.Stderr, cmd.Stdout = errb, outb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			defer func() { cmd.Process.Kill(); <-exited }()
			// Told while it is still trying, not only when it gives up.
			waitFor(t, 10*time.Second, "the connecting line", func() bool {
				select {
				case <-exited:
					t.Fatalf("zrecv exited before saying it was connecting: %q", errb.String())
				default:
				}
				return strings.Contains(errb.String(), "connecting to "+c.ep+": "+c.cause+"; retrying")
			})
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Fatal("zrecv did not give up")
			}
			if code := cmd.ProcessState.ExitCode(); code != 4 {
				t.Fatalf("exit %d, want 4", code)
			}
			stderr := errb.String()
			if n := strings.Count(stderr, "retrying"); n != 1 {
				t.Errorf("the same cause told %d times: %q", n, stderr)
			}
			if !strings.Contains(stderr, "unreachable: "+c.cause) {
				t.Errorf("giving up does not name the cause: %q", stderr)
			}
			attempts := 0
			for _, line := range strings.Split(strings.TrimSpace(outb.String()), "\n") {
				var ev map[string]any
				if json.Unmarshal([]byte(line), &ev) != nil {
					t.Fatalf("not NDJSON: %q", line)
				}
				if ev["event"] == "reconnect" {
					attempts++
					if ev["endpoint"] != c.ep || ev["attempt"] != float64(attempts) || ev["error"] != c.cause {
						t.Errorf("reconnect event %v", ev)
					}
				}
			}
			if attempts < 2 {
				t.Errorf("%d reconnect events", attempts)
			}
		})
	}
}

// Ctrl-C: exit 130, and stderr says the partial state is kept, in words.
func TestZrecvInterruptedSaysSo(t *testing.T) {
	_, ep, _ := serveRandom(t, "big.bin", 32<<20, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), "-o", out, pep, "big.bin")
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	waitFor(t, 30*time.Second, "partial data", func() bool { return fileSize(partPath(out, "big.bin")) >= 4<<20 })
	proxy.Stall(true)
	defer proxy.Stall(false)
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("zrecv did not exit within 10s of SIGINT")
	}
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit %d, want 130", code)
	}
	if s := errb.String(); !strings.Contains(s, "big.bin: interrupted; partial state kept for resume") || strings.Contains(s, "context canceled") {
		t.Fatalf("stderr %q", s)
	}
}

// The library's configuration names no type from internal/, which code
// outside this module cannot name.
func TestPublicConfigHasNoInternalTypes(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(path string, ty reflect.Type)
	walk = func(path string, ty reflect.Type) {
		if seen[ty] {
			return
		}
		seen[ty] = true
		if strings.Contains(ty.PkgPath(), "/internal/") {
			t.Errorf("%s has type %s from %s", path, ty, ty.PkgPath())
		}
		switch ty.Kind() {
		case reflect.Struct:
			for i := range ty.NumField() {
				if f := ty.Field(i); f.IsExported() {
					walk(path+"."+f.Name, f.Type)
				}
			}
		case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map, reflect.Chan:
			walk(path, ty.Elem())
		case reflect.Func:
			for i := range ty.NumIn() {
				walk(path+"()", ty.In(i))
			}
		}
	}
	walk("receiver.Config", reflect.TypeFor[receiver.Config]())
	walk("receiver.Result", reflect.TypeFor[receiver.Result]())
	walk("sender.Config", reflect.TypeFor[sender.Config]())
}

// Data of a request the receiver cancelled is no sign that the server
// serves: a server that answers the new request with nothing but keeps
// sending the cancelled one's chunks is taken as stalled (StallTimeout),
// and the next session, served honestly, completes.
func TestStaleDataIsNoSignOfLife(t *testing.T) {
	content := randomContent(4 * fakeChunk)
	var first atomic.Bool
	first.Store(true)
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		if !first.CompareAndSwap(true, false) {
			if g.Offset == 0 && s.sent == 0 { // a new session: honest
				s.queue = fileAt(s, g, content)
				s.ended = &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)}
				s.pump()
			}
			return // the re-request in the first session: ignored
		}
		cs := fileAt(s, g, content)
		bad := *cs[0]
		bad.Hash = badHash(bad.Hash)
		s.sent += uint64(len(bad.Data))
		s.send(&bad)
		// Then the cancelled request's chunks, forever, within credit.
		s.f.goRun(func(ctx context.Context) {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				s.f.mu.Lock()
				if s.sent+fakeChunk <= s.credit {
					s.sent += fakeChunk
					s.send(cs[1])
				}
				s.f.mu.Unlock()
			}
		})
	}})
	cfg := fakeConfig(f.ep, t.TempDir())
	cfg.StallTimeout = 400 * time.Millisecond // within Timeout (1s): time for a second session
	res, err, took := fakeFetch(t, cfg, fakeName)
	if err != nil {
		t.Fatalf("after %v: %v", took, err)
	}
	if f.hellos < 2 {
		t.Fatalf("%d sessions: the stalled one was not given up", f.hellos)
	}
	if b, _ := os.ReadFile(res[0].Path); !bytes.Equal(b, content) {
		t.Fatal("wrong content")
	}
}

// A loss noticed late (a silent server is noticed PeerTimeout after its
// last message, here longer than Timeout) still gets one reconnect attempt
// after a session that verified data.
func TestLateNoticedLossGetsOneAttempt(t *testing.T) {
	const size = 16 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{})
	proxy, pep := proxyTo(t, ep)
	var stalled, resumed atomic.Bool
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Timeout: 200 * time.Millisecond,
		PeerTimeout: time.Second, Heartbeat: 100 * time.Millisecond, Progress: func(e receiver.Event) {
			switch {
			case e.Kind == receiver.EventProgress && e.Done > size/4 && stalled.CompareAndSwap(false, true):
				proxy.Stall(true) // the server falls silent, connection open
			case e.Kind == receiver.EventReconnect && stalled.Load() && resumed.CompareAndSwap(false, true):
				proxy.Cut()
				proxy.Stall(false)
			}
		}}, "big.bin")
	if err != nil {
		t.Fatalf("after a loss noticed later than Timeout: %v", err)
	}
	if !resumed.Load() {
		t.Fatal("the server never fell silent")
	}
	sameFile(t, p, results[0].Path)
}

// A local error names the path once: "NAME: PATH is a directory", not the
// name and path over and over.
func TestLocalErrorNamesThePathOnce(t *testing.T) {
	for _, size := range []int64{1000, 3 << 20} { // unnamed one-chunk file, and a named partial file
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			_, ep, _ := serveRandom(t, "f.bin", size, sender.Config{})
			out := t.TempDir()
			dest := filepath.Join(out, "f.bin")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			var failure error
			_, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Progress: func(e receiver.Event) {
				if e.Kind == receiver.EventError {
					failure = e.Err
				}
			}}, "f.bin")
			if err == nil || failure == nil {
				t.Fatalf("fetch over a directory: %v", err)
			}
			if msg := err.Error(); strings.Count(msg, dest) != 1 || !strings.Contains(msg, "is a directory") {
				t.Fatalf("error %q: want the path %s named once", msg, dest)
			}
			if msg := failure.Error(); strings.Count(msg, "f.bin") != 1 {
				t.Fatalf("error event %q names the file more than once", msg)
			}
		})
	}
}
