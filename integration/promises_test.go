package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Tests for promises of README.md and PROTOCOL.md that each fail when the
// check keeping the promise is removed (see docs/MUTATIONS.md).

// hiddenFiles lists the regular files below dir other than the named
// destinations, with their content: the partial and state files, whatever
// they are called.
func hiddenFiles(t *testing.T, dir string, dests ...string) map[string][]byte {
	t.Helper()
	found := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if !d.Type().IsRegular() || slices.Contains(dests, rel) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		found[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// The receiver checks names itself (README: "zrecv never writes outside
// its output directory"): a traversal or absolute name is refused before
// any GET, even by a server that would answer it.
func TestReceiverRefusesTraversalNamesItself(t *testing.T) {
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	if err := os.Mkdir(filepath.Join(parent, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := make([]byte, 10000)
	rand.Read(content)
	// A server that serves whatever is asked, under the name asked.
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) { s.serve(g, g.Name, content) }})
	names := []string{"../escaped.bin", "a/../../escaped.bin", "/" + filepath.Join(parent, "abs.bin"), "..", "./x", "a//b", `..\escaped.bin`}
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), fakeBound)
		res, err := receiver.Fetch(ctx, receiver.Config{Endpoint: f.ep, OutputDir: out, Timeout: time.Second,
			PeerTimeout: 500 * time.Millisecond, Heartbeat: 100 * time.Millisecond, MaxChunk: fakeChunk}, name)
		cancel()
		if !errors.Is(err, receiver.ErrRefused) || len(res) != 1 || !errors.Is(res[0].Err, receiver.ErrRefused) {
			t.Errorf("%q: error %v, want ErrRefused", name, err)
		}
	}
	// The control: the fake does answer a valid name, so a name that got
	// through would have been written.
	if _, err := receiver.Fetch(context.Background(), receiver.Config{Endpoint: f.ep, OutputDir: out, Timeout: fakeBound,
		MaxChunk: fakeChunk}, "ok.bin"); err != nil {
		t.Fatalf("control fetch from the echoing fake: %v", err)
	}
	if asked := f.askedNames(); !slices.Equal(asked, []string{"ok.bin"}) {
		t.Errorf("the receiver sent GETs for %q; invalid names must never be requested", asked)
	}
	if got := entries(t, parent); !slices.Equal(got, []string{"out"}) {
		t.Errorf("written beside the output directory: %v", got)
	}
	if got := entries(t, out); !slices.Equal(got, []string{"ok.bin"}) {
		t.Errorf("output directory holds %v, want only ok.bin", got)
	}
}

// "A chunk that fails its BLAKE3 check is never written": a server sends a
// good chunk, then a corrupted one; the fetch is interrupted when the
// receiver asks again, and the partial file holds the good chunk and none
// of the corrupted bytes.
func TestCorruptChunkNeverWritten(t *testing.T) {
	const chunks = 4
	content := make([]byte, chunks*fakeChunk)
	rand.Read(content)
	corrupt := bytes.Clone(content[fakeChunk : 2*fakeChunk])
	for i := range corrupt {
		corrupt[i] ^= 0x5a
	}
	asked := make(chan struct{})
	var once sync.Once
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		if s.f.gets > 1 {
			once.Do(func() { close(asked) }) // asked again: the corruption was noticed
			return
		}
		s.file(g, fakeName, uint64(len(content)))
		cs := s.chunks(g.Request, content)
		s.send(cs[0])
		bad := *cs[1]
		bad.Data = corrupt // the hash stays that of the real data
		s.send(&bad)
	}})
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-asked:
		case <-time.After(3 * time.Second): // a receiver that took the chunk asks nothing
		}
		cancel()
	}()
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: f.ep, OutputDir: out, Timeout: fakeBound,
		PeerTimeout: fakeBound, Heartbeat: 100 * time.Millisecond, MaxChunk: fakeChunk, Window: 8 * fakeChunk, MaxWindow: 8 * fakeChunk}, fakeName)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("fetch: %v, want it interrupted", err)
	}
	files := hiddenFiles(t, out, fakeName)
	if _, err := os.Lstat(filepath.Join(out, fakeName)); err == nil {
		t.Fatal("the destination exists after an interrupted fetch")
	}
	holdsGood := false
	for name, b := range files {
		if bytes.Contains(b, corrupt[:512]) {
			t.Errorf("%s holds bytes of the chunk that failed its BLAKE3 check", name)
		}
		holdsGood = holdsGood || bytes.HasPrefix(b, content[:fakeChunk])
	}
	if !holdsGood {
		t.Fatalf("no partial file holds the verified first chunk (files %v): the check above proves nothing", slices.Sorted(mapsKeys(files)))
	}
	select {
	case <-asked:
	default:
		t.Error("the receiver did not ask again after a corrupted chunk")
	}
}

func mapsKeys(m map[string][]byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// README: a file that fits in one chunk "is written as an unnamed file
// (O_TMPFILE) and linked into place once verified: an interrupted fetch
// leaves no trace of it".
func TestInterruptedOneChunkFileLeavesNoTrace(t *testing.T) {
	content := make([]byte, 3000) // below the fake's chunk
	rand.Read(content)
	f := startFake(t, content, lie{get: func(s *fakeSession, g *protocol.Get) {
		s.file(g, fakeName, uint64(len(content))) // and then nothing
	}})
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := false
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: f.ep, OutputDir: out, Timeout: fakeBound, PeerTimeout: fakeBound,
		Heartbeat: 100 * time.Millisecond, MaxChunk: fakeChunk, Progress: func(e receiver.Event) {
			if e.Kind == receiver.EventStart { // FILE handled: the file is open
				started = true
				cancel()
			}
		}}, fakeName)
	if !errors.Is(err, context.Canceled) || !started {
		t.Fatalf("fetch: %v (started %v), want it interrupted after FILE", err, started)
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("an interrupted one-chunk fetch left %v", got)
	}
}

// The sender never sends chunk data beyond the credit granted (PROTOCOL.md
// section 5.3), for a large file sent chunk by chunk and for a small file
// sent whole.
func TestSenderNeverExceedsCredit(t *testing.T) {
	src := t.TempDir()
	const bigSize = 40 * protocol.MinChunkSize
	big := writeRandom(t, src, "big.bin", bigSize)
	small := writeRandom(t, src, "small.bin", 10000)
	_, srv := serve(t, sender.Config{Paths: []string{big, small}})

	// collect reads messages for d until it has stopAt bytes of chunk data
	// of request req, or END, or bound has passed; it returns the chunk
	// bytes received and whether END came.
	collect := func(d *dealer, req uint32, stopAt int, bound time.Duration) (int, bool) {
		t.Helper()
		n := 0
		deadline := time.Now().Add(bound)
		for n < stopAt {
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			m, err := d.recvWithin(left)
			if err != nil {
				break
			}
			switch m := m.(type) {
			case *protocol.Chunk:
				if m.Request != req {
					t.Fatalf("CHUNK for request %d", m.Request)
				}
				n += len(m.Data)
			case *protocol.End:
				return n, true
			case *protocol.Error:
				t.Fatalf("ERROR %d: %s", m.Code, m.Message)
			case *protocol.Ping:
				d.send(t, &protocol.Pong{Token: m.Token})
			}
		}
		return n, false
	}
	hello := func(d *dealer, chunk uint32) {
		t.Helper()
		d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: chunk, PeerID: "credit"})
		if w, ok := d.recv(t).(*protocol.Welcome); !ok || w.ChunkSize != chunk {
			t.Fatalf("HELLO answered with %+v", w)
		}
	}
	expectFile := func(d *dealer, req uint32) {
		t.Helper()
		if f, ok := d.recv(t).(*protocol.File); !ok || f.Request != req {
			t.Fatalf("GET answered with %T %+v, want FILE", f, f)
		}
	}
	const quiet = 300 * time.Millisecond // how long "nothing more arrives" is watched

	t.Run("chunked", func(t *testing.T) {
		const chunk = protocol.MinChunkSize
		d := rawDealer(t, srv.Endpoint())
		hello(d, chunk)
		d.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
		expectFile(d, 1)
		if n, _ := collect(d, 1, 1, quiet); n != 0 {
			t.Fatalf("%d bytes of chunk data sent without any credit", n)
		}
		got := 0
		limit := uint64(0)
		for _, grant := range []uint64{3*chunk + 100, 5 * chunk, 1} {
			limit += grant
			d.send(t, &protocol.Credit{Limit: limit})
			want := int(limit / chunk * chunk) // whole chunks only
			n, _ := collect(d, 1, want-got, 5*time.Second)
			more, _ := collect(d, 1, 1, quiet) // and nothing beyond
			got += n + more
			if uint64(got) > limit {
				t.Fatalf("%d bytes of chunk data received with a credit of %d", got, limit)
			}
			if got != want {
				t.Fatalf("%d bytes received with a credit of %d, want %d (the sender stalls)", got, limit, want)
			}
		}
		d.send(t, &protocol.Credit{Limit: 1 << 40})
		n, end := collect(d, 1, bigSize-got, 10*time.Second)
		if got += n; got != bigSize {
			t.Fatalf("after full credit: %d of %d bytes", got, bigSize)
		}
		if !end {
			if _, end = collect(d, 1, 1<<30, 5*time.Second); !end {
				t.Fatal("no END after all data")
			}
		}
	})

	t.Run("whole-small-file", func(t *testing.T) {
		// A file that fits in one chunk is sent in one piece: only once
		// the credit covers all of it.
		const chunk = 64 << 10
		d := rawDealer(t, srv.Endpoint())
		hello(d, chunk)
		d.send(t, &protocol.Credit{Limit: 9999})
		d.send(t, &protocol.Get{Request: 7, Name: "small.bin"})
		expectFile(d, 7)
		if n, end := collect(d, 7, 1, quiet); n != 0 || end {
			t.Fatalf("%d bytes (END %v) of a 10000-byte file sent with a credit of 9999", n, end)
		}
		d.send(t, &protocol.Credit{Limit: 10000})
		if n, end := collect(d, 7, 1<<30, 5*time.Second); n != 10000 || !end {
			t.Fatalf("%d bytes, END %v once the credit covers the file", n, end)
		}
	})
}

// zsend answers SIGINT and SIGTERM with BYE 503 to its clients (README:
// "it first tells clients to reconnect later, with BYE 503"), then exits 0.
func TestZsendSignalSendsBye503(t *testing.T) {
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			p := writeRandom(t, t.TempDir(), "big.bin", 4<<20)
			ep, cmd := zsendProc(t, p) // its cleanup checks exit status 0
			d := rawDealer(t, ep)
			d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MinChunkSize, PeerID: "bye"})
			if _, ok := d.recv(t).(*protocol.Welcome); !ok {
				t.Fatal("no WELCOME")
			}
			// Mid-transfer: a file open, credit used up.
			d.send(t, &protocol.Credit{Limit: 2 * protocol.MinChunkSize})
			d.send(t, &protocol.Get{Request: 1, Name: "big.bin"})
			if _, ok := d.recv(t).(*protocol.File); !ok {
				t.Fatal("no FILE")
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				m, err := d.recvWithin(time.Until(deadline))
				if err != nil {
					t.Fatalf("no BYE after %v: %v", sig, err)
				}
				if b, ok := m.(*protocol.Bye); ok {
					if b.Code != protocol.CodeUnavailable {
						t.Fatalf("BYE %d (%s) after %v, want 503", b.Code, b.Reason, sig)
					}
					return
				}
			}
		})
	}
}

// The sender tells a source change with ERROR 409 (PROTOCOL.md section 6),
// whichever part of the version changed: size, mtime, mode, or the inode
// (replaced by a rename).
func TestSourceChangeAnswered409(t *testing.T) {
	changes := map[string]func(t *testing.T, path string){
		"size": func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("x"))
			f.Close()
		},
		"mtime": func(t *testing.T, path string) {
			old := time.Now().Add(-time.Hour)
			if err := os.Chtimes(path, old, old); err != nil {
				t.Fatal(err)
			}
		},
		"mode": func(t *testing.T, path string) {
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"renamed-over": func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tmp := path + ".new"
			if err := os.WriteFile(tmp, b, 0o644); err != nil { // same content, new inode
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		},
	}
	for _, kind := range slices.Sorted(func(yield func(string) bool) {
		for k := range changes {
			if !yield(k) {
				return
			}
		}
	}) {
		t.Run(kind, func(t *testing.T) {
			const chunk = protocol.MinChunkSize
			p, ep, _ := serveRandom(t, "f.bin", 64*chunk, sender.Config{})
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
			d := rawDealer(t, ep)
			d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: chunk, PeerID: "409"})
			if _, ok := d.recv(t).(*protocol.Welcome); !ok {
				t.Fatal("no WELCOME")
			}
			d.send(t, &protocol.Credit{Limit: 2 * chunk})
			d.send(t, &protocol.Get{Request: 1, Name: "f.bin"})
			if _, ok := d.recv(t).(*protocol.File); !ok {
				t.Fatal("no FILE")
			}
			for i := 0; i < 2; i++ {
				if _, ok := d.recv(t).(*protocol.Chunk); !ok {
					t.Fatal("no CHUNK")
				}
			}
			// The credit covered two chunks, both sent: every chunk read
			// from now on is read after the change, and PROTOCOL.md
			// (section 6) has the version checked after every chunk read.
			changes[kind](t, p)
			d.send(t, &protocol.Credit{Limit: 1 << 40})
			for {
				m := d.recv(t)
				switch m := m.(type) {
				case *protocol.Error:
					if m.Request != 1 || m.Code != protocol.CodeChanged {
						t.Fatalf("ERROR %+v, want request 1 code 409", m)
					}
					// The request id names the file; the client prints its
					// name once (TestErrorNamesFileOnce), so the text need not.
					if m.Message == "" {
						t.Errorf("ERROR 409 without a message")
					}
					return
				case *protocol.Chunk:
					t.Fatalf("CHUNK at %d sent after the source's %s changed, before ERROR 409", m.Offset, kind)
				case *protocol.End:
					t.Fatalf("a source whose %s changed was sent to its END", kind)
				}
			}
		})
	}
}

// A silent receiver gets BYE 408 before its session is dropped (PROTOCOL.md
// section 7).
func TestSilentReceiverGetsBye408(t *testing.T) {
	_, _, srv := serveRandom(t, "big.bin", 1<<20, sender.Config{PeerTimeout: 500 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	d := rawDealer(t, srv.Endpoint())
	d.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: protocol.MinChunkSize})
	d.send(t, &protocol.Get{Request: 1, Name: "big.bin"}) // no credit: nothing to send
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := d.recvWithin(time.Until(deadline))
		if err != nil {
			t.Fatalf("no BYE to a silent receiver: %v", err)
		}
		if b, ok := m.(*protocol.Bye); ok {
			if b.Code != protocol.CodeTimeout {
				t.Fatalf("BYE %d (%s), want 408", b.Code, b.Reason)
			}
			break
		}
	}
	waitFor(t, 5*time.Second, "the silent session to be dropped", func() bool {
		st := srv.Stats()
		return st.Sessions == 0 && st.OpenFiles == 0
	})
}

// zrecv's exit codes 5 (verification failed) and 6 (protocol error), from
// the real binary against a lying server.
func TestBinaryExitCodesVerifyAndProtocol(t *testing.T) {
	content := make([]byte, 3<<20+17)
	rand.Read(content)
	cases := []struct {
		name string
		lie  lie
		code int
		msg  string
	}{
		{"chunk-hash-always-wrong", lie{get: func(s *fakeSession, g *protocol.Get) {
			s.file(g, fakeName, uint64(len(content)))
			c := s.chunks(g.Request, content)[0]
			c.Hash = badHash(c.Hash)
			s.send(c)
		}}, 5, "BLAKE3"},
		{"end-hash-wrong", lie{get: func(s *fakeSession, g *protocol.Get) {
			s.serveWithEnd(g, content, &protocol.End{Request: g.Request, Size: uint64(len(content)), Hash: badHash(blake3.Sum256(content))})
		}}, 5, "verif"},
		{"welcome-version-9", lie{welcome: func(s *fakeSession, h *protocol.Hello) {
			w := honestWelcome(s)
			w.Version = 9
			s.send(w)
		}}, 6, "version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, content, c.lie)
			out := t.TempDir()
			code, _, stderr := zrecv(t, "-q", "-t", "5s", "--peer-timeout", "2s", "-o", out, f.ep, fakeName)
			if code != c.code {
				t.Fatalf("exit %d, want %d: %s", code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.msg) {
				t.Errorf("stderr %q does not mention %q", stderr, c.msg)
			}
			if _, err := os.Lstat(filepath.Join(out, fakeName)); err == nil {
				t.Error("the destination was created")
			}
		})
	}
}
