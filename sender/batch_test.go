package sender

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/internal/store"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// BGET (PROTOCOL.md section 16) against a real server on loopback, driven
// by a raw DEALER that speaks ZSND by hand.

const batchChunk = 16 << 10 // the test servers' chunk size

// batchTree writes a tree with many tiny files (more than MaxPackFiles fit
// in a chunk), a few larger ones up to exactly the chunk size, one file
// over it, a directory and a symlink.
func batchTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "etc")
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 600 {
		// Unique contents: no two files share a stored copy.
		content := fmt.Sprintf("%d:%s", i, make([]byte, i%23))
		if i%50 == 0 {
			content = "" // only one empty file has its own name; all share a hash
		}
		mustWrite(t, filepath.Join(root, "sub", fmt.Sprintf("f%03d", i)), content, 0o640)
	}
	for i, n := range []int{5000, 9000, 12000, batchChunk - 1, batchChunk} {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*7 + j*13)
		}
		mustWrite(t, filepath.Join(root, fmt.Sprintf("mid%d", i)), string(b), 0o600)
	}
	mustWrite(t, filepath.Join(root, "big"), string(make([]byte, batchChunk+1)), 0o644)
	if err := os.Symlink("mid0", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	return root
}

// batchServer serves dir (or, with relay, nothing until Offer) and stops
// with the test.
func batchServer(t *testing.T, cfg Config) (*Server, *eventLog) {
	t.Helper()
	ev := &eventLog{}
	cfg.ChunkSize = batchChunk
	cfg.Events = ev.add
	return serveForTest(t, cfg), ev
}

// serveForTest listens on a free loopback port and serves cfg until the
// test ends.
func serveForTest(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Endpoint = "tcp://127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Listen(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10s")
		}
	})
	return srv
}

// latestOf is the latest version of a tree the server serves, and its
// manifest.
func latestOf(t *testing.T, srv *Server, tree string) (*version, *manifest.Manifest) {
	t.Helper()
	v := srv.pub.trees[tree].latest()
	if v == nil {
		t.Fatalf("tree %s has no version", tree)
	}
	m, err := v.manifest()
	if err != nil {
		t.Fatal(err)
	}
	return v, m
}

// smallFiles lists the indexes of the manifest's regular files of at most
// a chunk, in manifest order.
func smallFiles(m *manifest.Manifest) []uint32 {
	var idx []uint32
	for i, e := range m.Entries {
		if e.Type == manifest.TypeFile && e.Size <= batchChunk {
			idx = append(idx, uint32(i))
		}
	}
	return idx
}

func indexOf(t *testing.T, m *manifest.Manifest, path string) uint32 {
	t.Helper()
	for i, e := range m.Entries {
		if e.Path == path {
			return uint32(i)
		}
	}
	t.Fatalf("%q not in the manifest", path)
	return 0
}

// bclient is a raw DEALER in a ZSND session.
type bclient struct {
	sock    zmq4.Socket
	in      chan zmq4.Msg
	version uint8
}

func dialBatch(t *testing.T, ep string, maxVersion uint8) *bclient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := zmq4.NewDealer(ctx, zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithDialerRetry(50*time.Millisecond))
	if err := s.Dial(ep); err != nil {
		cancel()
		s.Close()
		t.Fatalf("dial %s: %v", ep, err)
	}
	c := &bclient{sock: s, in: make(chan zmq4.Msg, 4096), version: protocol.Version1}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			if m.Type == zmq4.CmdMsg {
				continue
			}
			select {
			case c.in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); s.Close(); <-done })
	c.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: maxVersion, MaxChunk: protocol.MaxChunkSize, HeartbeatMS: 1000, PeerID: "bget-test"})
	w, ok := c.expect(t).(*protocol.Welcome)
	if !ok || w.Version != maxVersion || w.ChunkSize != batchChunk {
		t.Fatalf("HELLO answered with %+v, want WELCOME version %d chunk %d", w, maxVersion, batchChunk)
	}
	c.version = w.Version
	return c
}

func (c *bclient) send(t *testing.T, m protocol.Message) {
	t.Helper()
	if err := c.sock.Send(zmq4.NewMsgFrom(protocol.Encode(c.version, m)...)); err != nil {
		t.Fatalf("send %v: %v", m.Command(), err)
	}
}

// next returns the next message other than a PING, or nil after d.
func (c *bclient) next(t *testing.T, d time.Duration) protocol.Message {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case raw := <-c.in:
			m, _, err := protocol.Decode(raw.Frames)
			if err != nil {
				t.Fatalf("the server sent an undecodable message: %v", err)
			}
			if _, ping := m.(*protocol.Ping); ping {
				continue
			}
			return m
		case <-deadline:
			return nil
		}
	}
}

func (c *bclient) expect(t *testing.T) protocol.Message {
	t.Helper()
	m := c.next(t, 5*time.Second)
	if m == nil {
		t.Fatal("no message from the server within 5s")
	}
	return m
}

func (c *bclient) expectError(t *testing.T, req uint32, code protocol.Code, what string) {
	t.Helper()
	m := c.expect(t)
	if e, ok := m.(*protocol.Error); !ok || e.Request != req || e.Code != code {
		t.Fatalf("%s: got %T %+v, want ERROR request %d code %d", what, m, m, req, code)
	}
}

// silent checks that nothing but PINGs arrives for d.
func (c *bclient) silent(t *testing.T, d time.Duration, what string) {
	t.Helper()
	if m := c.next(t, d); m != nil {
		t.Fatalf("%s: unexpected %T %+v", what, m, m)
	}
}

// packChecker checks PACKs against the manifest and the BGET they answer.
type packChecker struct {
	m     *manifest.Manifest
	req   uint32
	want  []uint32 // the BGET's indexes
	got   int      // files received so far
	data  uint64   // data octets received so far
	packs int
}

func (p *packChecker) done() bool { return p.got == len(p.want) }

func (p *packChecker) check(t *testing.T, msg protocol.Message) {
	t.Helper()
	pk, ok := msg.(*protocol.Pack)
	if !ok {
		t.Fatalf("after %d of %d files: got %T %+v, want PACK", p.got, len(p.want), msg, msg)
	}
	p.packs++
	if pk.Request != p.req || len(pk.Files) < 1 || len(pk.Files) > protocol.MaxPackFiles || len(pk.Data) > batchChunk {
		t.Fatalf("PACK for request %d with %d files, %d data octets", pk.Request, len(pk.Files), len(pk.Data))
	}
	off := 0
	for _, f := range pk.Files {
		if p.got >= len(p.want) {
			t.Fatalf("PACK carries more files than the BGET asked for")
		}
		if f.Index != p.want[p.got] {
			t.Fatalf("file %d of the BGET: index %d, want %d", p.got, f.Index, p.want[p.got])
		}
		e := &p.m.Entries[f.Index]
		if uint64(f.Size) != e.Size || f.Mode != e.Mode || f.MtimeNS != e.MtimeNs {
			t.Fatalf("%s: PACK says size %d mode %o mtime %d, manifest %d %o %d", e.Path, f.Size, f.Mode, f.MtimeNS, e.Size, e.Mode, e.MtimeNs)
		}
		if off+int(f.Size) > len(pk.Data) {
			t.Fatalf("%s: data frame too short", e.Path)
		}
		if blake3.Sum256(pk.Data[off:off+int(f.Size)]) != e.Hash {
			t.Fatalf("%s: content does not have the manifest's hash", e.Path)
		}
		off += int(f.Size)
		p.got++
	}
	if off != len(pk.Data) {
		t.Fatalf("PACK has %d data octets beyond its files", len(pk.Data)-off)
	}
	p.data += uint64(len(pk.Data))
}

func TestBGetSendsPacks(t *testing.T) {
	srv, ev := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version3)

	// Every small file, backwards, and one twice (sent twice).
	idx := smallFiles(m)
	for i, j := 0, len(idx)-1; i < j; i, j = i+1, j-1 {
		idx[i], idx[j] = idx[j], idx[i]
	}
	idx = append(idx, idx[3])
	if len(idx) > protocol.MaxBatch {
		t.Fatalf("%d files: more than a BGET holds", len(idx))
	}
	before := srv.Stats().FilesSent
	c.send(t, &protocol.Credit{Limit: 1 << 30})
	c.send(t, &protocol.BGet{Request: 7, Tag: v.tag(), Tree: "etc", Index: idx})
	p := &packChecker{m: m, req: 7, want: idx}
	for !p.done() {
		p.check(t, c.expect(t))
	}
	if p.packs >= len(idx)/10 {
		t.Errorf("%d files in %d PACKs: files are not packed together", len(idx), p.packs)
	}
	if got := srv.Stats().FilesSent - before; got != int64(len(idx)) {
		t.Errorf("FilesSent grew by %d, want %d", got, len(idx))
	}
	c.silent(t, 200*time.Millisecond, "after the last PACK")
	if n := len(ev.await("file-sent", len(idx))); n != len(idx) {
		t.Errorf("%d file-sent events, want %d", n, len(idx))
	}
}

// A PACK never takes the session beyond its credit: with a window smaller
// than the files, PACKs stop until the next CREDIT.
func TestBGetWaitsForCredit(t *testing.T) {
	srv, _ := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version3)
	idx := smallFiles(m)
	var total uint64
	for _, i := range idx {
		total += m.Entries[i].Size
	}
	const window = batchChunk // at least a chunk, as the protocol requires
	if total < 3*window {
		t.Fatalf("the test tree has only %d octets of small files", total)
	}
	limit := uint64(window)
	c.send(t, &protocol.Credit{Limit: limit})
	c.send(t, &protocol.BGet{Request: 9, Tag: v.tag(), Tree: "etc", Index: idx})
	p := &packChecker{m: m, req: 9, want: idx}
	grants := 0
	for !p.done() {
		msg := c.next(t, 300*time.Millisecond)
		if msg == nil {
			// Stopped: by lack of credit, not before (the next file
			// would have fitted in what is left).
			next := m.Entries[idx[p.got]].Size
			if p.data+next <= limit {
				t.Fatalf("PACKs stopped at %d of %d octets with %d credit left, next file %d octets", p.data, total, limit-p.data, next)
			}
			if grants++; grants > 100 {
				t.Fatal("no progress")
			}
			limit += window
			c.send(t, &protocol.Credit{Limit: limit})
			continue
		}
		p.check(t, msg)
		if p.data > limit {
			t.Fatalf("%d octets sent with a credit limit of %d", p.data, limit)
		}
	}
	if grants < 2 {
		t.Errorf("the BGET needed %d more CREDITs, want several (window %d, %d octets)", grants, window, total)
	}
}

// Indexes that are not regular files of at most a chunk, unknown tags and
// trees: ERROR for that BGET, and the session goes on.
func TestBGetRefusals(t *testing.T) {
	srv, ev := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version3)
	c.send(t, &protocol.Credit{Limit: 1 << 30})
	ok := indexOf(t, m, "mid0")
	for _, tc := range []struct {
		what  string
		tree  string
		tag   protocol.Tag
		index []uint32
		code  protocol.Code
	}{
		{"index beyond the manifest", "etc", v.tag(), []uint32{ok, uint32(len(m.Entries))}, protocol.CodeBadRequest},
		{"the root directory", "etc", v.tag(), []uint32{0}, protocol.CodeBadRequest},
		{"a directory", "etc", v.tag(), []uint32{ok, indexOf(t, m, "sub")}, protocol.CodeBadRequest},
		{"a symlink", "etc", v.tag(), []uint32{indexOf(t, m, "link")}, protocol.CodeBadRequest},
		{"a file over the chunk size", "etc", v.tag(), []uint32{ok, ok, indexOf(t, m, "big")}, protocol.CodeBadRequest},
		{"a tag of no kept version", "etc", protocol.Tag{1, 2, 3}, []uint32{ok}, protocol.CodeGone},
		{"a tree not served", "nope", v.tag(), []uint32{ok}, protocol.CodeNotFound},
	} {
		c.send(t, &protocol.BGet{Request: 11, Tag: tc.tag, Tree: tc.tree, Index: tc.index})
		c.expectError(t, 11, tc.code, tc.what) // nothing sent before it
	}
	// The event may be recorded just after the ERROR is on its way.
	for deadline := time.Now().Add(5 * time.Second); len(ev.kinds("refused")) < 7 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(ev.kinds("refused")); n != 7 {
		t.Errorf("%d refused events, want 7", n)
	}
	// The session goes on: a VGET, then a BGET.
	c.send(t, &protocol.VGet{Request: 12, Tag: v.tag(), Name: "etc/mid0"})
	if f, isFile := c.expect(t).(*protocol.File); !isFile || f.Request != 12 {
		t.Fatalf("VGET after the refusals: %+v", f)
	}
	for {
		msg := c.expect(t)
		if end, isEnd := msg.(*protocol.End); isEnd {
			if end.Hash != protocol.Hash(m.Entries[ok].Hash) {
				t.Fatal("VGET: wrong hash")
			}
			break
		}
		if _, isChunk := msg.(*protocol.Chunk); !isChunk {
			t.Fatalf("VGET: got %T %+v", msg, msg)
		}
	}
	c.send(t, &protocol.BGet{Request: 13, Tag: v.tag(), Tree: "etc", Index: []uint32{ok}})
	p := &packChecker{m: m, req: 13, want: []uint32{ok}}
	p.check(t, c.expect(t))
}

// BGET in a version 2 session is an unknown command: ERROR 501, session
// dropped, as for any other.
func TestBGetAtVersion2(t *testing.T) {
	srv, _ := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version2)
	c.send(t, &protocol.BGet{Request: 3, Tag: v.tag(), Tree: "etc", Index: smallFiles(m)[:2]})
	c.expectError(t, 0, protocol.CodeUnknownCommand, "BGET at version 2")
	c.send(t, &protocol.Ping{Token: 1})
	c.expectError(t, 0, protocol.CodeBadRequest, "a PING after the session was dropped")
}

// CANCEL stops a BGET: no PACK for it after, whatever the credit.
func TestBGetCancel(t *testing.T) {
	srv, _ := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version3)
	idx := smallFiles(m)
	c.send(t, &protocol.Credit{Limit: batchChunk})
	c.send(t, &protocol.BGet{Request: 21, Tag: v.tag(), Tree: "etc", Index: idx})
	p := &packChecker{m: m, req: 21, want: idx}
	for msg := c.next(t, 300*time.Millisecond); msg != nil; msg = c.next(t, 300*time.Millisecond) {
		p.check(t, msg)
	}
	if p.got == 0 || p.done() {
		t.Fatalf("%d of %d files before the CANCEL: want some", p.got, len(idx))
	}
	c.send(t, &protocol.Cancel{Request: 21})
	c.send(t, &protocol.Credit{Limit: 1 << 30})
	c.silent(t, 300*time.Millisecond, "after CANCEL")
	// The request id is free again, and the session serves the next one.
	tiny := idx[len(idx)-3:] // sub/f597..f599
	c.send(t, &protocol.BGet{Request: 21, Tag: v.tag(), Tree: "etc", Index: tiny})
	p = &packChecker{m: m, req: 21, want: tiny}
	p.check(t, c.expect(t))
	if !p.done() {
		t.Fatalf("3 tiny files in more than one PACK")
	}
}

// A stored copy that no longer has its published content, or is gone:
// ERROR 500 for the BGET instead of the PACK that would carry it; no file
// after it is sent.
func TestBGetStoredCopyMismatch(t *testing.T) {
	srv, ev := batchServer(t, Config{Paths: []string{batchTree(t)}, StateDir: t.TempDir()})
	v, m := latestOf(t, srv, "etc")
	c := dialBatch(t, srv.Endpoint(), protocol.Version3)
	c.send(t, &protocol.Credit{Limit: 1 << 30})
	for _, tc := range []struct {
		what   string
		path   string
		damage func(blob string) error
	}{
		{"tampered", "sub/f101", func(blob string) error {
			os.Chmod(blob, 0o644)
			b, err := os.ReadFile(blob)
			if err != nil {
				return err
			}
			b[0] ^= 0xff // same size, other content
			return os.WriteFile(blob, b, 0o644)
		}},
		{"missing", "sub/f102", os.Remove},
	} {
		bad := indexOf(t, m, tc.path)
		blob := srv.pub.st.Path(store.Hash(m.Entries[bad].Hash))
		if err := tc.damage(blob); err != nil {
			t.Fatal(err)
		}
		want := []uint32{indexOf(t, m, "sub/f001"), indexOf(t, m, "mid0"), bad, indexOf(t, m, "sub/f003")}
		c.send(t, &protocol.BGet{Request: 31, Tag: v.tag(), Tree: "etc", Index: want})
		p := &packChecker{m: m, req: 31, want: want}
		for {
			msg := c.expect(t)
			if e, isErr := msg.(*protocol.Error); isErr {
				if e.Request != 31 || e.Code != protocol.CodeInternal {
					t.Fatalf("%s: ERROR %+v, want request 31 code 500", tc.what, e)
				}
				break
			}
			p.check(t, msg)
			if p.got > 2 {
				t.Fatalf("%s: the damaged file, or one after it, was sent", tc.what)
			}
		}
		c.silent(t, 200*time.Millisecond, tc.what+": after the ERROR")
	}
	if n := len(ev.await("error", 2)); n != 2 {
		t.Errorf("%d error events, want 2", n)
	}
}

// A relay serves BGET from its copy of the tree, checking each file
// against the root's manifest first.
func TestBGetRelay(t *testing.T) {
	dir := batchTree(t)
	root, _ := batchServer(t, Config{Paths: []string{dir}, StateDir: t.TempDir()})
	rv, m := latestOf(t, root, "etc")

	relay, _ := batchServer(t, Config{Relay: []string{"etc"}})
	if err := relay.Offer("etc", rv.seq, rv.id, false, rv.file, dir); err != nil {
		t.Fatal(err)
	}
	v, _ := latestOf(t, relay, "etc")
	c := dialBatch(t, relay.Endpoint(), protocol.Version3)
	c.send(t, &protocol.Credit{Limit: 1 << 30})
	idx := smallFiles(m)
	c.send(t, &protocol.BGet{Request: 41, Tag: v.tag(), Tree: "etc", Index: idx})
	p := &packChecker{m: m, req: 41, want: idx}
	for !p.done() {
		p.check(t, c.expect(t))
	}
	c.send(t, &protocol.BGet{Request: 42, Tag: v.tag(), Tree: "etc", Index: []uint32{indexOf(t, m, "big")}})
	c.expectError(t, 42, protocol.CodeBadRequest, "relay: a file over the chunk size")

	// The relay's copy edited: not served.
	mustWrite(t, filepath.Join(dir, "mid1"), string(make([]byte, 9000)), 0o600)
	want := []uint32{indexOf(t, m, "mid0"), indexOf(t, m, "mid1")}
	c.send(t, &protocol.BGet{Request: 43, Tag: v.tag(), Tree: "etc", Index: want})
	p = &packChecker{m: m, req: 43, want: want}
	for {
		msg := c.expect(t)
		if e, isErr := msg.(*protocol.Error); isErr {
			if e.Request != 43 || e.Code != protocol.CodeInternal {
				t.Fatalf("relay drift: ERROR %+v, want request 43 code 500", e)
			}
			break
		}
		p.check(t, msg)
		if p.got > 1 {
			t.Fatal("relay drift: the edited file was sent")
		}
	}
}
