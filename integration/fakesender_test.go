package integration

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// A fake zsend that lies to zrecv: a raw zmq4 ROUTER speaking ZSND by hand.
// Each case replaces one step of an honest server with a lie. For each, a
// receiver with small timeouts and retry budget must fail with a clear
// error within a bounded time, write nothing outside its output directory,
// leave the destination absent (or an existing one untouched), and leave no
// goroutine behind.

const (
	fakeChunk  = protocol.MinChunkSize // what the receiver offers and the fake grants
	fakeName   = "want.bin"
	fakeBound  = 5 * time.Second // Fetch must return within this
	fakeWindow = 2 * fakeChunk
)

// fakePart and fakeState are the hidden files zrecv may leave for fakeName.
var fakePart, fakeState = receiver.PartialPaths(fakeName)

// fakeSender is the lying server.
type fakeSender struct {
	t       *testing.T
	sock    zmq4.Socket
	ep      string
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	content []byte
	lie     lie

	mu       sync.Mutex // serialises sends (the loop and lie goroutines)
	sessions map[string]*fakeSession
	gets     int               // GETs received, all sessions
	hellos   int               // HELLOs received: sessions opened
	names    []string          // names asked for in GETs, all sessions
	errs     []*protocol.Error // ERRORs the receiver sent
}

// lie says what the fake does instead of the honest thing. Nil fields are
// honest.
type lie struct {
	// welcome answers HELLO; honest: WELCOME v1 with the offered chunk.
	welcome func(s *fakeSession, h *protocol.Hello)
	// get answers a GET; honest: FILE, CHUNKs within credit, END.
	get func(s *fakeSession, g *protocol.Get)
	// noPong: PINGs go unanswered.
	noPong bool
	// mode of the file in FILE (honest: 0644).
	mode uint32
}

// fakeSession is one receiver connection (one routing id).
type fakeSession struct {
	f      *fakeSender
	id     []byte
	chunk  int
	credit uint64 // largest CREDIT limit received
	sent   uint64 // chunk data sent
	queue  []*protocol.Chunk
	ended  *protocol.End // sent once the queue is empty
}

func startFake(t *testing.T, content []byte, l lie) *fakeSender {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewRouter(ctx, zmq4.WithLogger(quietLog))
	if err := sock.Listen("tcp://127.0.0.1:0"); err != nil {
		cancel()
		t.Fatal(err)
	}
	f := &fakeSender{t: t, sock: sock, ep: "tcp://" + sock.Addr().String(), ctx: ctx, cancel: cancel,
		content: content, lie: l, sessions: map[string]*fakeSession{}}
	f.wg.Add(1)
	go f.loop()
	t.Cleanup(f.close)
	return f
}

func (f *fakeSender) close() {
	f.cancel()
	f.sock.Close()
	f.wg.Wait()
}

// go runs fn (a lie that keeps talking) until the fake closes.
func (f *fakeSender) goRun(fn func(ctx context.Context)) {
	f.wg.Add(1)
	go func() { defer f.wg.Done(); fn(f.ctx) }()
}

func (f *fakeSender) loop() {
	defer f.wg.Done()
	for {
		msg, err := f.sock.Recv()
		if err != nil || f.ctx.Err() != nil {
			return
		}
		if msg.Type == zmq4.CmdMsg || len(msg.Frames) < 2 {
			continue
		}
		id := string(msg.Frames[0])
		m, _, err := protocol.Decode(msg.Frames[1:])
		if err != nil {
			continue // the receiver's ERROR reply to a lie, for example
		}
		f.mu.Lock()
		s := f.sessions[id]
		switch m := m.(type) {
		case *protocol.Error:
			f.errs = append(f.errs, m)
		case *protocol.Hello:
			f.hellos++
			s = &fakeSession{f: f, id: []byte(id), chunk: int(min(m.MaxChunk, 1<<20))}
			f.sessions[id] = s
			if f.lie.welcome != nil {
				f.lie.welcome(s, m)
			} else {
				s.send(&protocol.Welcome{Version: 1, ChunkSize: uint32(s.chunk), HeartbeatMS: 100, MaxRequests: 4, PeerID: "fake"})
			}
		case *protocol.Credit:
			if s != nil && m.Limit > s.credit {
				s.credit = m.Limit
				s.pump()
			}
		case *protocol.Get:
			if s != nil {
				f.gets++
				f.names = append(f.names, m.Name)
				if f.lie.get != nil {
					f.lie.get(s, m)
				} else {
					s.serve(m, fakeName, f.content)
				}
			}
		case *protocol.Cancel:
			if s != nil {
				s.queue, s.ended = nil, nil
			}
		case *protocol.Ping:
			if s != nil && !f.lie.noPong {
				s.send(&protocol.Pong{Token: m.Token})
			}
		}
		f.mu.Unlock()
	}
}

// receivedErrors returns the ERRORs the receiver sent so far.
func (f *fakeSender) receivedErrors() []*protocol.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.errs)
}

// askedNames returns the names of every GET received so far.
func (f *fakeSender) askedNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.names)
}

func (f *fakeSender) getCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets
}

// sendFrames sends raw ZSND frames to the session's peer.
func (s *fakeSession) sendFrames(frames ...[]byte) {
	all := append([][]byte{s.id}, frames...)
	s.f.sock.Send(zmq4.NewMsgFrom(all...))
}

func (s *fakeSession) send(m protocol.Message) {
	s.sendFrames(protocol.Encode(protocol.Version1, m)...)
}

func fileTag(content []byte) protocol.Tag {
	var tag protocol.Tag
	sum := blake3.Sum256(content)
	copy(tag[:], sum[:])
	return tag
}

func (s *fakeSession) file(g *protocol.Get, name string, size uint64) {
	mode := s.f.lie.mode
	if mode == 0 {
		mode = 0o644
	}
	s.send(&protocol.File{Request: g.Request, Size: size, Mode: mode, MtimeNS: time.Now().UnixNano(),
		Tag: fileTag(s.f.content), Name: name})
}

// chunks cuts content into correct CHUNKs of request req.
func (s *fakeSession) chunks(req uint32, content []byte) []*protocol.Chunk {
	var cs []*protocol.Chunk
	for off := 0; off < len(content); off += s.chunk {
		data := content[off:min(off+s.chunk, len(content))]
		cs = append(cs, &protocol.Chunk{Request: req, Offset: uint64(off), Hash: blake3.Sum256(data), Data: data})
	}
	return cs
}

// serve answers g honestly (except for the name in FILE, if told): FILE,
// then CHUNKs as the credit allows, then END.
func (s *fakeSession) serve(g *protocol.Get, name string, content []byte) {
	s.file(g, name, uint64(len(content)))
	s.queue = s.chunks(g.Request, content)
	s.ended = &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)}
	s.pump()
}

// serveWithEnd is serve with a given END.
func (s *fakeSession) serveWithEnd(g *protocol.Get, content []byte, end *protocol.End) {
	s.file(g, fakeName, uint64(len(content)))
	s.queue = s.chunks(g.Request, content)
	s.ended = end
	s.pump()
}

// keepPinging PINGs the peer every 100ms until the fake closes.
func (s *fakeSession) keepPinging() {
	s.f.goRun(func(ctx context.Context) {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				s.f.mu.Lock()
				s.send(&protocol.Ping{Token: 1})
				s.f.mu.Unlock()
			}
		}
	})
}

// pump sends queued chunks within the credit, then END.
func (s *fakeSession) pump() {
	for len(s.queue) > 0 && s.sent+uint64(len(s.queue[0].Data)) <= s.credit {
		c := s.queue[0]
		s.queue = s.queue[1:]
		s.sent += uint64(len(c.Data))
		s.send(c)
	}
	if len(s.queue) == 0 && s.ended != nil {
		s.send(s.ended)
		s.ended = nil
	}
}

// ---------------------------------------------------------------------

type fakeCase struct {
	name    string
	lie     func(f **fakeSender, content []byte, parent string) lie
	content int     // bytes of the file; default 10000
	want    []error // Fetch's error must match one of these; nil: must succeed
	check   func(t *testing.T, f *fakeSender, parent, out string)
	// both runs the case with and without an existing destination (the
	// others alternate, to keep the table quick).
	both bool
}

func TestFakeSenderLies(t *testing.T) {
	for i, c := range fakeCases() {
		t.Run(c.name, func(t *testing.T) {
			runFakeCase(t, c, i%2 == 1)
		})
		if c.both {
			suffix := "-no-destination"
			if i%2 == 0 {
				suffix = "-existing-destination"
			}
			t.Run(c.name+suffix, func(t *testing.T) {
				runFakeCase(t, c, i%2 == 0)
			})
		}
	}
}

func runFakeCase(t *testing.T, c fakeCase, existing bool) {
	baseG := stableGoroutines(t, 5*time.Second)
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(out, fakeName)
	const previous = "previous version, must stay"
	if existing {
		if err := os.WriteFile(dest, []byte(previous), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n := c.content
	if n == 0 {
		n = 10000
	}
	content := make([]byte, n)
	rand.Read(content)
	var f *fakeSender
	f = startFake(t, content, c.lie(&f, content, parent))

	ctx, cancel := context.WithTimeout(context.Background(), fakeBound)
	defer cancel()
	start := time.Now()
	_, err := receiver.Fetch(ctx, receiver.Config{
		Endpoint: f.ep, OutputDir: out, PeerID: "victim",
		Timeout: time.Second, PeerTimeout: 500 * time.Millisecond, Heartbeat: 100 * time.Millisecond, StallTimeout: time.Second,
		Retries: 2, MaxChunk: fakeChunk, Window: fakeWindow, MaxWindow: fakeWindow,
	}, fakeName)
	took := time.Since(start)
	f.close()

	// Whatever happened, nothing may be written outside the output
	// directory, and the destination is absent or untouched.
	if got := entries(t, parent); !slices.Equal(got, []string{"out"}) {
		t.Errorf("written outside the output directory: %v", got)
	}
	for _, e := range entries(t, out) {
		switch e {
		case fakeName:
			if !existing && c.want != nil {
				t.Errorf("the destination was created by a lying server")
			}
		case filepath.Base(partPath(out, fakeName)), filepath.Base(statePath(out, fakeName)):
		default:
			t.Errorf("unexpected entry in the output directory: %q", e)
		}
	}
	if existing && c.want != nil {
		if b, err := os.ReadFile(dest); err != nil || string(b) != previous {
			t.Errorf("the existing destination was touched: %q, %v", b, err)
		}
	}
	if fi, err := os.Stat(partPath(out, fakeName)); err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Size() > int64(len(content))+fakeChunk || st.Blocks*512 > int64(len(content))+1<<20 {
			t.Errorf("partial file of %d bytes (%d allocated) for a %d-byte file", fi.Size(), st.Blocks*512, len(content))
		}
	}
	if c.check != nil {
		c.check(t, f, parent, out)
	}

	switch {
	case c.want == nil:
		if err != nil {
			t.Errorf("honest fake: %v", err)
		} else if b, _ := os.ReadFile(dest); string(b) != string(content) {
			t.Errorf("honest fake: wrong content")
		}
	case err == nil:
		t.Errorf("Fetch accepted the lie (took %v)", took)
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		t.Errorf("Fetch did not return within %v", fakeBound)
	default:
		ok := false
		for _, w := range c.want {
			ok = ok || errors.Is(err, w)
		}
		if !ok {
			t.Errorf("Fetch error %q (after %v) matches none of %v", err, took, c.want)
		}
		t.Logf("after %v: %v", took.Round(time.Millisecond), err)
	}

	// No goroutine left behind by the receiver (or the fake).
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseG+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, %d before the case\n%s", runtime.NumGoroutine(), baseG, goroutineDump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sentError400 checks PROTOCOL.md section 5.2 rule 8: a client that
// detects a protocol violation sends ERROR (request 0, code 400) before it
// closes the session.
func sentError400(t *testing.T, f *fakeSender, _, _ string) {
	t.Helper()
	errs := f.receivedErrors()
	for _, e := range errs {
		if e.Request == protocol.NoRequest && e.Code == protocol.CodeBadRequest {
			return
		}
	}
	t.Errorf("the receiver closed on a violation without ERROR 400 (request 0); it sent %d ERRORs: %+v", len(errs), errs)
}

// honestWelcome is the WELCOME an honest server sends.
func honestWelcome(s *fakeSession) *protocol.Welcome {
	return &protocol.Welcome{Version: 1, ChunkSize: uint32(s.chunk), HeartbeatMS: 100, MaxRequests: 4, PeerID: "fake"}
}

func badHash(h protocol.Hash) protocol.Hash { h[0] ^= 0xff; return h }

func fakeCases() []fakeCase {
	proto := []error{receiver.ErrProtocol}
	return []fakeCase{
		// Controls: the fake, honest, is fetched normally.
		{name: "honest-control", lie: func(**fakeSender, []byte, string) lie { return lie{} }},
		{name: "honest-setuid-mode", lie: func(**fakeSender, []byte, string) lie { return lie{mode: 0o6755} },
			check: func(t *testing.T, _ *fakeSender, _, out string) {
				// PROTOCOL.md section 6: zrecv restores the permission
				// bits 0o777 only, never setuid, setgid or sticky.
				fi, err := os.Stat(filepath.Join(out, fakeName))
				if err != nil {
					t.Fatalf("honest fetch with mode 06755: %v", err)
				}
				if fi.Mode() != 0o755 {
					t.Errorf("FILE mode 06755 from the server gave %v, want -rwxr-xr-x", fi.Mode())
				}
			}},

		{name: "file-other-name", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) { s.serve(g, "other.bin", content) }}
		}},

		{name: "file-name-traversal", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) { s.serve(g, "../../escaped.bin", content) }}
		}, check: func(t *testing.T, _ *fakeSender, parent, _ string) {
			for _, p := range []string{filepath.Join(parent, "escaped.bin"), filepath.Join(filepath.Dir(parent), "escaped.bin")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
		}},

		{name: "file-name-absolute", want: proto, lie: func(_ **fakeSender, content []byte, parent string) lie {
			abs := filepath.Join(parent, "abs.bin")
			return lie{get: func(s *fakeSession, g *protocol.Get) { s.serve(g, abs, content) }}
		}},

		{name: "file-for-another-request", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) { g.Request += 1000; s.serve(g, fakeName, content) }}
		}},

		{name: "chunk-before-file", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.send(s.chunks(g.Request, content)[0])
				s.serve(g, fakeName, content)
			}}
		}},

		{name: "chunk-beyond-credit", content: 4 << 20, want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			// All 1024 chunks at once, whatever the credit (2 chunks).
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				for _, c := range s.chunks(g.Request, content) {
					s.send(c)
				}
				s.send(&protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)})
			}}
		}},

		{name: "chunk-wrong-offset", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				s.send(s.chunks(g.Request, content)[1]) // offset 4096 first
			}}
		}},

		{name: "chunk-length-differs-from-header", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				c := s.chunks(g.Request, content)[0]
				f := protocol.Encode(1, c)
				binary.BigEndian.PutUint32(f[1][12:], uint32(len(c.Data)+100)) // header claims more
				s.sendFrames(f...)
			}}
		}},

		{name: "chunk-beyond-size", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, 100) // a 100-byte file, then a whole chunk
				s.send(s.chunks(g.Request, content)[0])
			}}
		}},

		{name: "chunk-hash-mismatch-always", want: []error{receiver.ErrVerify}, both: true, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				c := s.chunks(g.Request, content)[0]
				c.Hash = badHash(c.Hash)
				s.send(c)
			}}
		}, check: func(t *testing.T, f *fakeSender, _, _ string) {
			if n := f.getCount(); n > 10 {
				t.Errorf("%d GETs for one file with a retry budget of 2", n)
			}
		}},

		{name: "end-wrong-hash", want: []error{receiver.ErrVerify}, both: true, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.serveWithEnd(g, content, &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: badHash(blake3.Sum256(content))})
			}}
		}, check: func(t *testing.T, f *fakeSender, _, _ string) {
			if n := f.getCount(); n > 10 {
				t.Errorf("%d GETs for one file with a retry budget of 2", n)
			}
		}},

		{name: "end-before-all-data", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				s.send(s.chunks(g.Request, content)[0])
				s.send(&protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: blake3.Sum256(content)})
			}}
		}},

		{name: "end-size-differs", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.serveWithEnd(g, content, &protocol.End{Request: g.Request, Size: uint64(len(content)) + 1, Hash: blake3.Sum256(content)})
			}}
		}},

		{name: "size-2^62", want: []error{receiver.ErrProtocol, receiver.ErrUnreachable}, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, 1<<62)
				s.send(s.chunks(g.Request, content)[0])
				s.send(&protocol.End{Request: g.Request, Size: 1 << 62, Hash: blake3.Sum256(content)})
			}}
		}},

		{name: "size-above-2^62", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				f := protocol.Encode(1, &protocol.File{Request: g.Request, Size: 1, Mode: 0o644, Name: fakeName})
				binary.BigEndian.PutUint64(f[1][4:], math.MaxUint64)
				s.sendFrames(f...)
			}}
		}},

		{name: "welcome-chunk-above-offer", want: proto, lie: func(**fakeSender, []byte, string) lie {
			return lie{welcome: func(s *fakeSession, h *protocol.Hello) {
				w := honestWelcome(s)
				w.ChunkSize = 1 << 20 // the receiver offered 4096
				s.chunk = 1 << 20
				s.send(w)
			}}
		}},

		{name: "welcome-version-9", want: proto, lie: func(**fakeSender, []byte, string) lie {
			return lie{welcome: func(s *fakeSession, h *protocol.Hello) {
				w := honestWelcome(s)
				w.Version = 9
				s.send(w)
			}}
		}},

		{name: "command-frame-version-9", want: proto, lie: func(**fakeSender, []byte, string) lie {
			return lie{welcome: func(s *fakeSession, h *protocol.Hello) {
				f := protocol.Encode(1, honestWelcome(s))
				f[0] = protocol.CommandFrame(9, protocol.CmdWelcome)
				s.sendFrames(f...)
			}}
		}},

		{name: "unknown-command", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.sendFrames(protocol.CommandFrame(1, 0x7e), []byte{1, 2, 3, 4})
			}}
		}},

		{name: "client-command-from-server", want: proto, check: sentError400, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.send(&protocol.Get{Request: 1, Name: "/etc/passwd"})
			}}
		}},

		{name: "frame-above-receiver-limit", want: []error{receiver.ErrUnreachable, receiver.ErrProtocol}, lie: func(_ **fakeSender, content []byte, _ string) lie {
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				big := make([]byte, 64<<10)
				s.send(&protocol.Chunk{Request: g.Request, Hash: blake3.Sum256(big), Data: big})
			}}
		}},

		{name: "silence-after-welcome", want: []error{receiver.ErrUnreachable}, lie: func(**fakeSender, []byte, string) lie {
			return lie{noPong: true, get: func(*fakeSession, *protocol.Get) {}}
		}},

		{name: "bye-503-forever", want: []error{receiver.ErrUnreachable}, lie: func(**fakeSender, []byte, string) lie {
			return lie{welcome: func(s *fakeSession, h *protocol.Hello) {
				s.send(&protocol.Bye{Code: protocol.CodeUnavailable, RetryAfterMS: 0, Reason: "come back"})
			}}
		}},

		{name: "progress-then-garbage-each-session", want: proto, lie: func(_ **fakeSender, content []byte, _ string) lie {
			// Every session verifies one chunk (progress, so the
			// unreachable timer restarts), then breaks the protocol.
			return lie{get: func(s *fakeSession, g *protocol.Get) {
				s.file(g, fakeName, uint64(len(content)))
				cs := s.chunks(g.Request, content)
				if int(g.Offset)/fakeChunk < len(cs) {
					s.send(cs[int(g.Offset)/fakeChunk])
				}
				s.sendFrames(protocol.CommandFrame(1, 0x7e), nil)
			}}
		}},

		{name: "pings-but-never-data", want: []error{receiver.ErrUnreachable, receiver.ErrProtocol},
			lie: func(f **fakeSender, _ []byte, _ string) lie {
				// Alive as far as heartbeats go, but the GET is never answered.
				return lie{get: func(s *fakeSession, g *protocol.Get) { s.keepPinging() }}
			}},

		{name: "stall-mid-transfer-with-pings", want: []error{receiver.ErrUnreachable, receiver.ErrProtocol},
			lie: func(f **fakeSender, content []byte, _ string) lie {
				// FILE and one chunk, then only heartbeats: a server whose
				// disk hangs while its serving loop stays responsive.
				return lie{get: func(s *fakeSession, g *protocol.Get) {
					s.file(g, fakeName, uint64(len(content)))
					s.send(s.chunks(g.Request, content)[0])
					s.keepPinging()
				}}
			}},
	}
}
