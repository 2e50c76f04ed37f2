package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/sender"
)

// Raw ZSND/2 clients against a publishing zsend: LIST, MGET and VGET,
// checked the way PROTOCOL.md says a client MUST (END hashes against the
// announced id, the manifest and the bytes received).

// v2 is a raw client in a session at version 2.
type v2 struct {
	*zpeer
	chunk   uint32
	version uint8 // the session's version; 0 is 2
}

func helloV2(t *testing.T, ep string) *v2 {
	t.Helper()
	return helloAt(t, ep, protocol.Version2, "raw-v2")
}

// helloAt opens a raw session offering versions 1..version, expects the
// server to choose version, and grants it ample credit.
func helloAt(t *testing.T, ep string, version uint8, peer string) *v2 {
	t.Helper()
	p := dialZ(t, ep, true)
	p.send(t, &protocol.Hello{MinVersion: 1, MaxVersion: version, MaxChunk: protocol.MinChunkSize, PeerID: peer})
	w, ok := p.expect(t, 3*time.Second).(*protocol.Welcome)
	if !ok || w.Version != version {
		t.Fatalf("WELCOME %+v", w)
	}
	c := &v2{zpeer: p, chunk: w.ChunkSize, version: version}
	c.sendV2(t, &protocol.Credit{Limit: 1 << 40})
	return c
}

func (c *v2) sendV2(t *testing.T, m protocol.Message) {
	t.Helper()
	v := c.version
	if v == 0 {
		v = protocol.Version2
	}
	c.sendFrames(t, protocol.Encode(v, m)...)
}

func (c *v2) next(t *testing.T) protocol.Message {
	t.Helper()
	frames := c.recv(5 * time.Second)
	if frames == nil {
		t.Fatal("no message within 5s")
	}
	m, v, err := protocol.Decode(frames)
	if err != nil {
		t.Fatalf("undecodable: %v", err)
	}
	want := c.version
	if want == 0 {
		want = protocol.Version2
	}
	if v != want {
		t.Fatalf("%v at version %d in a version %d session", m.Command(), v, want)
	}
	if _, ok := m.(*protocol.Ping); ok {
		return c.next(t)
	}
	return m
}

func (c *v2) list(t *testing.T, req uint32, tree string) []*protocol.Tree {
	t.Helper()
	c.sendV2(t, &protocol.List{Request: req, Tree: tree})
	var trees []*protocol.Tree
	for {
		switch m := c.next(t).(type) {
		case *protocol.Tree:
			if m.Request != req {
				t.Fatalf("TREE for request %d", m.Request)
			}
			trees = append(trees, m)
		case *protocol.End:
			if m.Request != req || m.Size != uint64(len(trees)) || m.Hash != (protocol.Hash{}) {
				t.Fatalf("END of LIST %+v after %d TREEs", m, len(trees))
			}
			return trees
		default:
			t.Fatalf("LIST answered with %T %+v", m, m)
		}
	}
}

// get sends an MGET or VGET and collects the reply: the bytes (every
// CHUNK's hash checked) and END, or an ERROR.
func (c *v2) get(t *testing.T, m protocol.Message, req uint32) (*protocol.File, []byte, *protocol.End, *protocol.Error) {
	t.Helper()
	c.sendV2(t, m)
	var file *protocol.File
	var data []byte
	for {
		switch m := c.next(t).(type) {
		case *protocol.File:
			if m.Request != req || file != nil {
				t.Fatalf("FILE %+v", m)
			}
			file = m
		case *protocol.Chunk:
			if file == nil || m.Request != req || m.Offset != file.Offset+uint64(len(data)) {
				t.Fatalf("CHUNK at %d out of place", m.Offset)
			}
			if protocol.Hash(blake3.Sum256(m.Data)) != m.Hash {
				t.Fatalf("CHUNK at %d: hash mismatch", m.Offset)
			}
			data = append(data, m.Data...)
		case *protocol.End:
			if file == nil || m.Request != req || m.Size != file.Size || uint64(len(data)) != file.Size-file.Offset {
				t.Fatalf("END %+v after %d bytes", m, len(data))
			}
			return file, data, m, nil
		case *protocol.Error:
			if m.Request != req {
				t.Fatalf("ERROR %+v", m)
			}
			return file, nil, nil, m
		default:
			t.Fatalf("unexpected %T", m)
		}
	}
}

// fetchManifest does MGET and every check a client must do.
func (c *v2) fetchManifest(t *testing.T, req uint32, tr *protocol.Tree, tag protocol.Tag) *manifest.Manifest {
	t.Helper()
	file, data, end, e := c.get(t, &protocol.MGet{Request: req, Tag: tag, Name: tr.Name}, req)
	if e != nil {
		t.Fatalf("MGET: %d %s", e.Code, e.Message)
	}
	if end.Hash != tr.Version || protocol.Hash(blake3.Sum256(data)) != tr.Version {
		t.Fatalf("MGET END hash %s, TREE said %s", end.Hash, tr.Version)
	}
	if file.Name != tr.Name || file.Size != tr.ManifestSize || file.Mode != 0 || !bytes.Equal(file.Tag[:], tr.Version[:16]) {
		t.Fatalf("MGET FILE %+v for TREE %+v", file, tr)
	}
	m, err := manifest.Decode(data, manifest.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(m.Entries)) != tr.Entries {
		t.Fatalf("%d entries, TREE said %d", len(m.Entries), tr.Entries)
	}
	return m
}

func tagOfID(h protocol.Hash) (t protocol.Tag) {
	copy(t[:], h[:])
	return
}

func publishingServer(t *testing.T, cfg sender.Config) (string, *sender.Server) {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	return serve(t, cfg)
}

func TestV2ListMGetVGet(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "conf")
	big := make([]byte, 3*protocol.MinChunkSize+123) // several chunks at the 4 KiB chunk size
	for i := range big {
		big[i] = byte(i * 7)
	}
	files := map[string][]byte{"a.txt": []byte("alpha\n"), "sub/big.bin": big, "sub/empty": nil, "ü n.txt": []byte("utf8")}
	for name, body := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, body, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("a.txt", filepath.Join(root, "link"))
	other := filepath.Join(dir, "other")
	os.MkdirAll(other, 0o755)
	ep, srv := publishingServer(t, sender.Config{Paths: []string{root, other}})
	c := helloV2(t, ep)

	trees := c.list(t, 1, "")
	if len(trees) != 2 || trees[0].Name != "conf" || trees[1].Name != "other" {
		t.Fatalf("LIST all: %+v", trees)
	}
	tr := trees[0]
	info := srv.Trees()
	if tr.Seq != 1 || tr.Version != protocol.Hash(info[0].ID) || tr.Bytes != uint64(len(big)+6+4) || tr.Flags != 0 {
		t.Fatalf("TREE %+v, server says %+v", tr, info[0])
	}
	if one := c.list(t, 2, "conf/"); len(one) != 1 || *one[0] != (protocol.Tree{Request: 2, Seq: tr.Seq, Entries: tr.Entries,
		Bytes: tr.Bytes, ManifestSize: tr.ManifestSize, Version: tr.Version, Name: "conf"}) {
		t.Fatalf("LIST conf/: %+v", one)
	}
	c.sendV2(t, &protocol.List{Request: 3, Tree: "nope"})
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 3 || e.Code != protocol.CodeNotFound {
		t.Fatalf("LIST of an unknown tree: %+v", e)
	}

	// MGET by tag and of the latest (zero tag) serve the same bytes.
	m := c.fetchManifest(t, 4, tr, tagOfID(tr.Version))
	c.fetchManifest(t, 5, tr, protocol.Tag{})

	// VGET every file: END hash == manifest hash == hash of the bytes.
	req := uint32(10)
	for _, e := range m.Entries {
		if e.Type != manifest.TypeFile {
			continue
		}
		req++
		name := "conf/" + e.Path
		file, data, end, er := c.get(t, &protocol.VGet{Request: req, Tag: tagOfID(tr.Version), Name: name}, req)
		if er != nil {
			t.Fatalf("VGET %s: %d %s", name, er.Code, er.Message)
		}
		if end.Hash != protocol.Hash(e.Hash) || protocol.Hash(blake3.Sum256(data)) != end.Hash || !bytes.Equal(data, files[e.Path]) {
			t.Fatalf("VGET %s: END hash %s, manifest %x", name, end.Hash, e.Hash)
		}
		if file.Name != name || file.Mode != e.Mode || file.MtimeNS != e.MtimeNs || file.Tag != tagOfID(tr.Version) {
			t.Fatalf("VGET %s: FILE %+v, entry %+v", name, file, e)
		}
	}
	// Resume: the content of (version, path) never changes, so an offset
	// is honoured, rounded down to the chunk size.
	req++
	file, data, end, _ := c.get(t, &protocol.VGet{Request: req, Offset: uint64(c.chunk) + 10, Tag: tagOfID(tr.Version), Name: "conf/sub/big.bin"}, req)
	if file.Offset != uint64(c.chunk) || !bytes.Equal(data, big[c.chunk:]) || end.Hash != protocol.Hash(blake3.Sum256(big)) {
		t.Fatalf("resumed VGET: offset %d, %d bytes", file.Offset, len(data))
	}
	// Not regular files of the version, unknown trees, bad names.
	for i, tc := range []struct {
		name string
		code protocol.Code
	}{{"conf/link", protocol.CodeNotFound}, {"conf/sub", protocol.CodeNotFound}, {"conf/missing", protocol.CodeNotFound},
		{"nope/a.txt", protocol.CodeNotFound}, {"conf/../x", protocol.CodeRefused}, {"conf", protocol.CodeNotFound}} {
		r := uint32(100 + i)
		_, _, _, er := c.get(t, &protocol.VGet{Request: r, Tag: tagOfID(tr.Version), Name: tc.name}, r)
		if er == nil || er.Code != tc.code {
			t.Fatalf("VGET %s: %+v, want %d", tc.name, er, tc.code)
		}
	}
	// A version 2 command in a version 1 frame is an unknown command and
	// ends the session.
	f := protocol.Encode(protocol.Version2, &protocol.List{Request: 200})
	f[0] = protocol.CommandFrame(protocol.Version1, protocol.CmdList)
	c.sendFrames(t, f...)
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Code != protocol.CodeUnknownCommand {
		t.Fatalf("LIST at version 1: %+v", e)
	}
}

// In a version 1 session the version 2 commands do not exist.
func TestV2CommandsRefusedInV1Session(t *testing.T) {
	root := filepath.Join(t.TempDir(), "conf")
	os.MkdirAll(root, 0o755)
	ep, _ := publishingServer(t, sender.Config{Paths: []string{root}})
	p := dialZ(t, ep, true)
	p.hello(t, 1<<20)                     // offers 1..1
	p.send(t, &protocol.List{Request: 1}) // encoded at version 1: unknown there
	p.expectError(t, 0, protocol.CodeUnknownCommand, "LIST in a version 1 session")
	p.hello(t, 1<<20)
	p.sendFrames(t, protocol.Encode(protocol.Version2, &protocol.List{Request: 1})...)
	p.expectError(t, 0, protocol.CodeVersion, "a version 2 frame in a version 1 session")
}

// A file edited while it is served: the old version's VGET still returns
// exactly the published bytes (from the store), --watch publishes the new
// version, and a version no longer kept is 410 gone.
func TestV2EditDuringServingWatchAndGone(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "conf")
	os.MkdirAll(filepath.Join(root, "d"), 0o755)
	path := filepath.Join(root, "d", "app.conf")
	if err := os.WriteFile(path, []byte("version one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ep, srv := publishingServer(t, sender.Config{Paths: []string{root}, Watch: true, KeepVersions: 2})
	c := helloV2(t, ep)
	v1 := c.list(t, 1, "conf")[0]

	// Edit in place (same inode), then check the old version is intact.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("version two, longer\n")
	f.Close()
	_, data, end, er := c.get(t, &protocol.VGet{Request: 2, Tag: tagOfID(v1.Version), Name: "conf/d/app.conf"}, 2)
	if er != nil || string(data) != "version one\n" || end.Hash != protocol.Hash(blake3.Sum256([]byte("version one\n"))) {
		t.Fatalf("old version after an edit: %q %v", data, er)
	}
	// v1 GET still serves the live file.
	_, data, _, _ = c.get(t, &protocol.Get{Request: 3, Name: "conf/d/app.conf"}, 3)
	if string(data) != "version two, longer\n" {
		t.Fatalf("GET of the live file: %q", data)
	}

	v2 := waitVersion(t, srv, "conf", 2, 10*time.Second)
	tr := c.list(t, 4, "conf")[0]
	if tr.Seq != 2 || tr.Version != protocol.Hash(v2.ID) {
		t.Fatalf("LIST after --watch: %+v", tr)
	}
	_, data, _, er = c.get(t, &protocol.VGet{Request: 5, Tag: tagOfID(tr.Version), Name: "conf/d/app.conf"}, 5)
	if er != nil || string(data) != "version two, longer\n" {
		t.Fatalf("new version: %q %v", data, er)
	}
	// A new directory is watched too (publish 3), then version 1 is gone.
	if err := os.MkdirAll(filepath.Join(root, "d", "new"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, srv, "conf", 3, 10*time.Second)
	if err := os.WriteFile(filepath.Join(root, "d", "new", "x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, srv, "conf", 4, 10*time.Second)
	for i, m := range []protocol.Message{
		&protocol.VGet{Request: 6, Tag: tagOfID(v1.Version), Name: "conf/d/app.conf"},
		&protocol.MGet{Request: 7, Tag: tagOfID(v1.Version), Name: "conf"},
	} {
		_, _, _, er := c.get(t, m, uint32(6+i))
		if er == nil || er.Code != protocol.CodeGone {
			t.Fatalf("%v of a dropped version: %+v", m.Command(), er)
		}
	}
	// The session goes on after 410.
	if got := c.list(t, 8, ""); len(got) != 1 || got[0].Seq != 4 {
		t.Fatalf("LIST after 410: %+v", got)
	}
}

// waitVersion polls Trees until tree has version seq (or later).
func waitVersion(t *testing.T, srv *sender.Server, tree string, seq uint64, bound time.Duration) sender.TreeInfo {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		for _, ti := range srv.Trees() {
			if ti.Name == tree && ti.Seq >= seq {
				return ti
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree %s did not reach version %d within %v: %+v", tree, seq, bound, srv.Trees())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Publish (what SIGHUP calls) publishes a change at once; an unchanged
// tree gets no new version.
func TestPublishOnDemand(t *testing.T) {
	root := filepath.Join(t.TempDir(), "conf")
	os.MkdirAll(root, 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("1"), 0o644)
	var published []sender.Event
	events := make(chan sender.Event, 100)
	_, srv := publishingServer(t, sender.Config{Paths: []string{root}, Events: func(e sender.Event) {
		if e.Kind == "published" {
			events <- e
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "f"), []byte("2"), 0o644)
	if err := srv.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	close(events)
	for e := range events {
		published = append(published, e)
	}
	if len(published) != 2 || published[0].Seq != 1 || published[1].Seq != 2 || !strings.HasPrefix(published[1].Version, "") {
		t.Fatalf("published events %+v", published)
	}
	if ti := srv.Trees(); len(ti) != 1 || ti[0].Seq != 2 || ti[0].ID.String() != published[1].Version || ti[0].Files != 1 || ti[0].Bytes != 1 {
		t.Fatalf("Trees %+v", ti)
	}
}

// The manifest example of PROTOCOL.md section 13.5 is what the encoder
// produces, and its id is the one the document states.
func TestProtocolDocManifestExample(t *testing.T) {
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Path: "", Type: manifest.TypeDir, Mode: 0o755, MtimeNs: 1700000000000000000},
		{Path: "a.conf", Type: manifest.TypeFile, Mode: 0o644, MtimeNs: 1700000000000000000, Size: 3, Hash: blake3.Sum256([]byte("hi\n"))},
		{Path: "cur", Type: manifest.TypeSymlink, Mode: 0o777, MtimeNs: 1700000000000000000, Target: "a.conf"},
	}}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- manifest-example -->")
	if !ok {
		t.Fatal("PROTOCOL.md lost its manifest example")
	}
	_, block, _ := strings.Cut(rest, "```\n")
	block, _, _ = strings.Cut(block, "```")
	got := strings.Join(strings.Fields(block), "")
	if want := hex.EncodeToString(m.Encode()); got != want {
		t.Fatalf("PROTOCOL.md manifest example\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(rest[:600], m.ID().String()) {
		t.Fatalf("PROTOCOL.md does not state the example's id %s", m.ID())
	}
	if !strings.Contains(string(doc), "manifest-size=202") || len(m.Encode()) != 202 {
		t.Fatalf("PROTOCOL.md sync example: manifest of %d octets", len(m.Encode()))
	}
}

// The version 2 examples of PROTOCOL.md section 13.6 are the golden files.
func TestProtocolDocV2Examples(t *testing.T) {
	doc, err := os.ReadFile("../PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(doc), "### 13.6 Examples")
	flat := strings.Join(strings.Fields(sec), "")
	for _, name := range []string{"list", "mget", "vget", "tree", "error_gone"} {
		g, err := os.ReadFile(filepath.Join("..", "protocol", "testdata", "golden", name+".hex"))
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Join(strings.Fields(string(g)), ""); !strings.Contains(flat, want) {
			t.Errorf("PROTOCOL.md 13.6 lacks the golden %s: %s", name, want)
		}
	}
}

// A ZSND/1-only client (the Python one, offering 1..1) still fetches files
// below a published directory from a version 2 server, with --watch on.
func TestPythonV1ClientAgainstPublishingServer(t *testing.T) {
	pyNeedZMQ(t)
	src := t.TempDir()
	root := filepath.Join(src, "conf")
	os.MkdirAll(filepath.Join(root, "sub"), 0o755)
	writeRandom(t, filepath.Join(root, "sub"), "f.bin", 1<<20+17)
	ep, srv := publishingServer(t, sender.Config{Paths: []string{root}, Watch: true})
	if ti := srv.Trees(); len(ti) != 1 || ti[0].Seq != 1 {
		t.Fatalf("Trees %+v", ti)
	}
	out := t.TempDir()
	pyFetch(t, src, out, ep, "conf/sub/f.bin")
}

// The zsend binary: --json "published" events at start, on SIGHUP and
// with --watch; the sequence number continues across a restart on the
// same --state-dir.
func TestZsendCLIPublishes(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "myapp")
	os.MkdirAll(root, 0o755)
	os.WriteFile(filepath.Join(root, "app.conf"), []byte("a=1\n"), 0o644)
	syscall.Mkfifo(filepath.Join(root, "pipe"), 0o644)
	state := filepath.Join(dir, "state")

	type ev struct {
		Event, Tree, Version, Name, Message string
		Seq, Entries, Files, Bytes          int64
	}
	start := func(args ...string) (*exec.Cmd, chan ev) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"),
			append([]string{"-b", "tcp://127.0.0.1:0", "--json", "--state-dir", state}, args...)...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		t.Cleanup(func() { t.Logf("zsend stderr: %s", errb.String()) })
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		events := make(chan ev, 100)
		go func() {
			defer close(events)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var e ev
				if json.Unmarshal(sc.Bytes(), &e) == nil {
					events <- e
				}
			}
		}()
		t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait(); cancel() })
		return cmd, events
	}
	var cmd *exec.Cmd
	var events chan ev
	next := func(events chan ev, kind string) ev {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case e, ok := <-events:
				if !ok {
					t.Fatalf("zsend exited before a %q event: %v", kind, cmd.Wait())
				}
				if e.Event == kind {
					return e
				}
			case <-timeout:
				t.Fatalf("no %q event within 10s", kind)
			}
		}
	}
	cmd, events = start(root)
	if e := next(events, "skipped"); e.Name != "myapp/pipe" || !strings.Contains(e.Message, "FIFO") {
		t.Fatalf("skipped event %+v", e)
	}
	e1 := next(events, "published")
	if e1.Tree != "myapp" || e1.Seq != 1 || e1.Entries != 2 || e1.Files != 1 || e1.Bytes != 4 || len(e1.Version) != 64 {
		t.Fatalf("first published event %+v", e1)
	}
	os.WriteFile(filepath.Join(root, "app.conf"), []byte("a=2\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	if e := next(events, "published"); e.Seq != 2 || e.Version == e1.Version {
		t.Fatalf("published after SIGHUP %+v", e)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("zsend after SIGTERM: %v", err)
	}

	// Restart with --watch: nothing new at start, then a change is seq 3.
	_, events = start("--watch", root)
	time.Sleep(300 * time.Millisecond) // the watch is set up before Listen returns; give the start a moment
	os.WriteFile(filepath.Join(root, "new.conf"), []byte("b=1\n"), 0o644)
	if e := next(events, "published"); e.Seq != 3 || e.Files != 2 {
		t.Fatalf("published after a change with --watch %+v", e)
	}
}

// LIST with SUBSCRIBE: after its END, each new version is pushed as a TREE
// with the LIST's request id; CANCEL of that id ends it.
func TestV2ListSubscribe(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.MkdirAll(a, 0o755)
	os.MkdirAll(b, 0o755)
	_, srv := publishingServer(t, sender.Config{Paths: []string{a, b}})
	ep := srv.Endpoint()
	c := helloV2(t, ep)
	c.sendV2(t, &protocol.List{Request: 7, Flags: protocol.ListSubscribe, Tree: "a"})
	if tr, ok := c.next(t).(*protocol.Tree); !ok || tr.Name != "a" || tr.Seq != 1 {
		t.Fatalf("first TREE %+v", tr)
	}
	if e, ok := c.next(t).(*protocol.End); !ok || e.Request != 7 || e.Size != 1 {
		t.Fatalf("END %+v", e)
	}
	all := helloV2(t, ep) // a second session subscribes to every tree
	all.sendV2(t, &protocol.List{Request: 1, Flags: protocol.ListSubscribe})
	if got := len(all.collectUntilEnd(t, 1)); got != 2 {
		t.Fatalf("%d TREEs for all trees", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	os.WriteFile(filepath.Join(b, "f"), []byte("b changed"), 0o644)
	srv.Publish(ctx)
	os.WriteFile(filepath.Join(a, "f"), []byte("a changed"), 0o644)
	srv.Publish(ctx)
	// Session c hears only of tree a; session all of both.
	if tr, ok := c.next(t).(*protocol.Tree); !ok || tr.Request != 7 || tr.Name != "a" || tr.Seq != 2 {
		t.Fatalf("pushed TREE %+v", tr)
	}
	seen := map[string]uint64{}
	for len(seen) < 2 {
		tr, ok := all.next(t).(*protocol.Tree)
		if !ok || tr.Request != 1 {
			t.Fatalf("pushed %+v", tr)
		}
		seen[tr.Name] = tr.Seq
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Fatalf("pushed versions %v", seen)
	}
	// CANCEL ends the subscription: the next version is not pushed.
	c.sendV2(t, &protocol.Cancel{Request: 7})
	// The server handles a session's messages in order: once the PONG is
	// back, the CANCEL has been applied (a publish racing the CANCEL in
	// flight would be pushed, rightly).
	c.sendV2(t, &protocol.Ping{Token: 77})
	if m, ok := c.next(t).(*protocol.Pong); !ok || m.Token != 77 {
		t.Fatalf("after CANCEL and PING: %+v", m)
	}
	os.WriteFile(filepath.Join(a, "f"), []byte("a changed again"), 0o644)
	srv.Publish(ctx)
	if tr, ok := all.next(t).(*protocol.Tree); !ok || tr.Name != "a" || tr.Seq != 3 {
		t.Fatalf("pushed %+v", tr)
	}
	c.silent(t, 300*time.Millisecond, "after CANCEL of the subscription")
}

func (c *v2) collectUntilEnd(t *testing.T, req uint32) []*protocol.Tree {
	t.Helper()
	var trees []*protocol.Tree
	for {
		switch m := c.next(t).(type) {
		case *protocol.Tree:
			trees = append(trees, m)
		case *protocol.End:
			if m.Request != req {
				t.Fatalf("END %+v", m)
			}
			return trees
		default:
			t.Fatalf("unexpected %T", m)
		}
	}
}

// Without a state directory nothing is published: LIST finds no trees and
// MGET is 404, while GET serves the files as before.
func TestV2WithoutStateDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "conf")
	os.MkdirAll(root, 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("plain"), 0o644)
	ep, srv := serve(t, sender.Config{Paths: []string{root}})
	if ti := srv.Trees(); len(ti) != 0 {
		t.Fatalf("Trees %+v", ti)
	}
	c := helloV2(t, ep)
	if trees := c.list(t, 1, ""); len(trees) != 0 {
		t.Fatalf("LIST %+v", trees)
	}
	if _, _, _, er := c.get(t, &protocol.MGet{Request: 2, Name: "conf"}, 2); er == nil || er.Code != protocol.CodeNotFound {
		t.Fatalf("MGET without publishing: %+v", er)
	}
	if _, data, _, er := c.get(t, &protocol.Get{Request: 3, Name: "conf/f"}, 3); er != nil || string(data) != "plain" {
		t.Fatalf("GET: %q %+v", data, er)
	}
}

// While a writer keeps rewriting the tree (in place, by rename, and by
// adding and removing files) and --watch keeps publishing, a client that
// fetches version after version gets, for every file, exactly the bytes
// its version's manifest lists, or 410 for a version already dropped.
func TestV2ExactlyPublishedWhileEdited(t *testing.T) {
	root := filepath.Join(t.TempDir(), "conf")
	os.MkdirAll(filepath.Join(root, "sub"), 0o755)
	write := func(name string, i int) {
		body := []byte(strings.Repeat(fmt.Sprintf("%s generation %d\n", name, i), 1+i%50))
		p := filepath.Join(root, name)
		switch i % 3 {
		case 0: // in place
			os.WriteFile(p, body, 0o644)
		default: // atomic replace
			os.WriteFile(p+".tmp", body, 0o644)
			os.Rename(p+".tmp", p)
		}
	}
	names := []string{"a.conf", "b.conf", "sub/c.conf", "sub/d.conf"}
	for _, n := range names {
		write(n, 0)
	}
	ep, srv := publishingServer(t, sender.Config{Paths: []string{root}, Watch: true, KeepVersions: 2, Debounce: 5 * time.Millisecond})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			write(names[i%len(names)], i)
			if i%7 == 0 {
				os.Remove(filepath.Join(root, "sub", "extra"))
			} else if i%5 == 0 {
				os.WriteFile(filepath.Join(root, "sub", "extra"), []byte(fmt.Sprint(i)), 0o600)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	c := helloV2(t, ep)
	req := uint32(0)
	checked, gone := 0, 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		req++
		tr := c.list(t, req, "conf")[0]
		req++
		file, data, end, er := c.get(t, &protocol.MGet{Request: req, Tag: tagOfID(tr.Version), Name: "conf"}, req)
		if er != nil {
			if er.Code != protocol.CodeGone {
				t.Fatalf("MGET: %d %s", er.Code, er.Message)
			}
			gone++
			continue
		}
		if end.Hash != tr.Version || protocol.Hash(blake3.Sum256(data)) != tr.Version || file.Size != uint64(len(data)) {
			t.Fatal("manifest bytes do not match the announced version")
		}
		m, err := manifest.Decode(data, manifest.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range m.Entries {
			if e.Type != manifest.TypeFile {
				continue
			}
			req++
			_, body, end, er := c.get(t, &protocol.VGet{Request: req, Tag: tagOfID(tr.Version), Name: "conf/" + e.Path}, req)
			if er != nil {
				if er.Code != protocol.CodeGone {
					t.Fatalf("VGET %s: %d %s", e.Path, er.Code, er.Message)
				}
				gone++
				break
			}
			if end.Hash != protocol.Hash(e.Hash) || blake3.Sum256(body) != e.Hash || uint64(len(body)) != e.Size {
				t.Fatalf("%s of version %d: bytes do not match the manifest", e.Path, tr.Seq)
			}
			checked++
		}
	}
	close(stop)
	<-done
	last := srv.Trees()[0].Seq
	t.Logf("%d files checked across %d versions, %d requests found their version gone", checked, last, gone)
	if checked == 0 || last < 2 {
		t.Fatalf("too little happened: %d files checked, %d versions", checked, last)
	}
}

// A session holds at most 64 subscriptions (ERROR 429 beyond); a LIST
// reusing a subscription's request id replaces it, even at the limit,
// and a new version is then pushed once per subscription (PROTOCOL.md
// 13.4).
func TestV2SubscriptionLimitAndReplace(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	os.MkdirAll(a, 0o755)
	_, srv := publishingServer(t, sender.Config{Paths: []string{a}})
	c := helloV2(t, srv.Endpoint())
	for req := uint32(1); req <= 64; req++ {
		c.sendV2(t, &protocol.List{Request: req, Flags: protocol.ListSubscribe, Tree: "a"})
		if got := len(c.collectUntilEnd(t, req)); got != 1 {
			t.Fatalf("subscription %d: %d TREEs", req, got)
		}
	}
	c.sendV2(t, &protocol.List{Request: 5, Flags: protocol.ListSubscribe, Tree: "a"})
	if got := len(c.collectUntilEnd(t, 5)); got != 1 {
		t.Fatalf("replacing subscription 5 at the limit: %d TREEs", got)
	}
	c.sendV2(t, &protocol.List{Request: 65, Flags: protocol.ListSubscribe, Tree: "a"})
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 65 || e.Code != protocol.CodeTooMany {
		t.Fatalf("a 65th subscription: %+v, want ERROR 429", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	os.WriteFile(filepath.Join(a, "f"), []byte("changed"), 0o644)
	if err := srv.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	pushed := map[uint32]int{}
	for range 64 {
		tr, ok := c.next(t).(*protocol.Tree)
		if !ok || tr.Name != "a" || tr.Seq != 2 {
			t.Fatalf("pushed %+v", tr)
		}
		pushed[tr.Request]++
	}
	for req := uint32(1); req <= 64; req++ {
		if pushed[req] != 1 {
			t.Errorf("subscription %d got %d pushes", req, pushed[req])
		}
	}
	c.silent(t, 300*time.Millisecond, "after one push per subscription")
}

// A relay answers ACCESS by asking its parent, off its serving path; a
// session may have at most 16 such questions waiting (ERROR 429 beyond),
// other requests are served meanwhile, and an answer that fails is
// ERROR 503 for that request only (PROTOCOL.md 15.8).
func TestAccessQuestionsBounded(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	os.MkdirAll(a, 0o755)
	release := make(chan struct{})
	var asked atomic.Int32
	cfg := sender.Config{Paths: []string{a}, AccessFrom: func(ctx context.Context, key [32]byte) ([]string, error) {
		asked.Add(1)
		if key[0] == 0xfe {
			return nil, errors.New("parent unreachable")
		}
		select {
		case <-release:
			return []string{"a"}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	_, srv := publishingServer(t, cfg)
	c := helloV2(t, srv.Endpoint())
	for req := uint32(1); req <= 17; req++ {
		c.sendV2(t, &protocol.Access{Request: req, Key: [32]byte{1}})
	}
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 17 || e.Code != protocol.CodeTooMany {
		t.Fatalf("the 17th waiting ACCESS: %+v, want ERROR 429", e)
	}
	c.sendV2(t, &protocol.Ping{Token: 5})
	if m, ok := c.next(t).(*protocol.Pong); !ok || m.Token != 5 {
		t.Fatalf("PING while ACCESS waits: %+v", m)
	}
	// Each question is asked from its own goroutine: wait until all 16
	// have reached the parent; the 17th was refused before any was asked.
	waitUntil(t, 10*time.Second, "16 questions to the parent", func() (bool, string) {
		n := asked.Load()
		return n >= 16, fmt.Sprintf("%d questions to the parent", n)
	})
	if n := asked.Load(); n != 16 {
		t.Fatalf("%d questions to the parent, want 16", n)
	}
	close(release)
	answered := map[uint32]bool{}
	for len(answered) < 16 {
		switch m := c.next(t).(type) {
		case *protocol.Tree:
			if m.Name != "a" {
				t.Fatalf("TREE %+v", m)
			}
		case *protocol.End:
			if m.Size != 1 {
				t.Fatalf("END %+v", m)
			}
			answered[m.Request] = true
		default:
			t.Fatalf("unexpected %T %+v", m, m)
		}
	}
	c.sendV2(t, &protocol.Access{Request: 30, Key: [32]byte{0xfe}})
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 30 || e.Code != protocol.CodeUnavailable {
		t.Fatalf("ACCESS the parent cannot answer: %+v, want ERROR 503", e)
	}
	c.sendV2(t, &protocol.Access{Request: 31, Key: [32]byte{2}}) // the room is back
	if got := len(c.collectUntilEnd(t, 31)); got != 1 {
		t.Fatalf("ACCESS after the others were answered: %d TREEs", got)
	}
}
