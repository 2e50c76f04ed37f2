package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// helloV4 opens a raw session at version 4 (PROTOCOL.md section 17).
func helloV4(t *testing.T, ep, peer string) *v2 {
	t.Helper()
	return helloAt(t, ep, protocol.Version4, peer)
}

// barrierEvents records a server's "barrier" events.
type barrierEvents struct {
	mu sync.Mutex
	ev []sender.Event
}

func (b *barrierEvents) record(e sender.Event) {
	if e.Kind == "barrier" {
		b.mu.Lock()
		b.ev = append(b.ev, e)
		b.mu.Unlock()
	}
}

// messages joins the events' messages with sep.
func (b *barrierEvents) messages(sep string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ms []string
	for _, e := range b.ev {
		ms = append(ms, e.Message)
	}
	return strings.Join(ms, sep)
}

func (b *barrierEvents) of(t *testing.T, seq uint64) sender.Event {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.ev {
		if e.Seq == seq {
			return e
		}
	}
	t.Fatalf("no barrier event for seq %d in %+v", seq, b.ev)
	return sender.Event{}
}

// barrierServer publishes a tree "app" (app.conf = "v1") with --barrier,
// the given barrier timeout and switch delay, recording its barrier
// events; tune adjusts the config first, when set.
func barrierServer(t *testing.T, timeout, delay time.Duration, tune func(*sender.Config)) (src, ep string, srv *sender.Server, be *barrierEvents) {
	t.Helper()
	src = filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Barrier, cfg.BarrierTimeout, cfg.SwitchDelay = true, timeout, delay
	be = &barrierEvents{}
	cfg.Events = be.record
	if tune != nil {
		tune(&cfg)
	}
	ep, srv = publishingServer(t, cfg)
	return src, ep, srv, be
}

// With --barrier, followers at version 4 switch at the instant the
// server named (--switch-delay after its decision), not when their
// SWITCHAT arrives: none switches before it, however early its message
// came.
func TestBarrierSwitchesAtTheInstant(t *testing.T) {
	delay := 1500 * time.Millisecond
	src, ep, srv, be := barrierServer(t, 4*time.Second, delay, nil)
	var fs []*follower
	for i := 0; i < 3; i++ {
		fs = append(fs, startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: fmt.Sprintf("n%d", i)}))
	}
	waitUntil(t, 20*time.Second, "3 nodes on v1", converged(srv, "app", 1, 3))
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	// While they wait for the instant, each has its new symlink made
	// beside the stable path, naming the staged version (the switch is
	// then one rename). Looked at only when the instant is far enough.
	waitUntil(t, 30*time.Second, "the barrier decided", func() (bool, string) {
		be.mu.Lock()
		defer be.mu.Unlock()
		return len(be.ev) > 0 && be.ev[len(be.ev)-1].Seq == 2, "no barrier event for v2"
	})
	if at := be.of(t, 2).At; time.Until(at) > delay/2 {
		id2 := srv.Trees()[0].ID
		for i, f := range fs {
			target, err := os.Readlink(filepath.Join(f.out, ".zsnd.app.new"))
			if err != nil || !strings.Contains(target, id2.String()[:12]) {
				t.Errorf("node %d waiting for the instant: .zsnd.app.new -> %q, %v; want a link to v2 (%s)", i, target, err, id2.Short())
			}
		}
		if got := readStable(t, fs[0].out, "app", "app.conf"); got != "v1" {
			t.Errorf("before the instant the stable path shows %q", got)
		}
	} else {
		t.Logf("the instant is %v away: too close to look at the waiting nodes", time.Until(at))
	}
	waitUntil(t, 30*time.Second, "3 nodes on v2", converged(srv, "app", 2, 3))
	at := be.of(t, 2).At
	if at.IsZero() {
		t.Fatal("the barrier event names no instant")
	}
	var first, last time.Time
	for i, f := range fs {
		ts := switchTimes(f, 2)
		if len(ts) != 1 {
			t.Fatalf("node %d switched %d times to v2", i, len(ts))
		}
		st, ok := stagedAt(f, 2)
		if !ok {
			t.Fatalf("node %d never reported v2 staged", i)
		}
		// in-ms is rounded up: a node whose clock agrees (this one)
		// switches at the instant or after it, never before.
		if ts[0].Before(at) {
			t.Errorf("node %d switched at %v, %v before the instant %v", i, ts[0].Format("15:04:05.000000"), at.Sub(ts[0]), at.Format("15:04:05.000000"))
		}
		if !st.Before(at.Add(-delay / 2)) {
			t.Errorf("node %d staged at %v: the instant %v is not %v after the decision", i, st, at, delay)
		}
		if first.IsZero() || ts[0].Before(first) {
			first = ts[0]
		}
		if ts[0].After(last) {
			last = ts[0]
		}
	}
	t.Logf("3 followers switched %v to %v after the instant", first.Sub(at), last.Sub(at))
	for i, f := range fs {
		if got := readStable(t, f.out, "app", "app.conf"); got != "v2" {
			t.Errorf("node %d shows %q", i, got)
		}
	}
}

// On the wire: a node at version 4 gets SWITCHAT naming the instant, a
// node at version 2 gets SWITCH, both from one barrier; a node that
// reports the version staged after the instant gets SWITCHAT with in-ms
// 0 (switch at once).
func TestSwitchAtOnTheWire(t *testing.T) {
	delay := 800 * time.Millisecond
	src, ep, srv, be := barrierServer(t, 400*time.Millisecond, delay, func(c *sender.Config) {
		c.PeerTimeout, c.Fleet.LostAfter = 30*time.Second, 30*time.Second
	})
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := protocol.Hash(srv.Trees()[0].ID)

	n4 := helloV4(t, ep, "raw-v4")
	subscribe(t, n4, 1, "app")
	n2 := helloV2(t, ep)
	subscribe(t, n2, 1, "app")
	for _, n := range []struct {
		c    *v2
		node string
	}{{n4, "n4"}, {n2, "n2"}} {
		n.c.sendV2(t, &protocol.Report{Request: 2, State: protocol.StateStaged, Seq: 2, Version: id2, Node: n.node, Tree: "app"})
		expectEnd(t, n.c, 2, "REPORT staged")
	}
	sa, ok := nextNonPing(t, n4, 10*time.Second).(*protocol.SwitchAt)
	got := time.Now()
	if !ok || sa.Request != 1 || sa.Seq != 2 || sa.Version != id2 || sa.Tree != "app" {
		t.Fatalf("version 4 node: want SWITCHAT, got %+v", sa)
	}
	if sw, ok := nextNonPing(t, n2, 5*time.Second).(*protocol.Switch); !ok || sw.Request != 1 || sw.Version != id2 {
		t.Fatalf("version 2 node: want SWITCH, got %+v", sw)
	}
	at := be.of(t, 2).At
	if sa.AtNS != at.UnixNano() {
		t.Errorf("SWITCHAT at-ns %d, the barrier's instant %d", sa.AtNS, at.UnixNano())
	}
	if in := time.Duration(sa.InMS) * time.Millisecond; in > delay || got.Add(in).Before(at) {
		t.Errorf("in-ms %d: over the delay %v, or short of the instant (read %v before it)", sa.InMS, delay, at.Sub(got))
	}
	// Late: staged after the instant, told at once, in-ms 0.
	time.Sleep(time.Until(at) + 10*time.Millisecond)
	late := helloV4(t, ep, "raw-v4-late")
	subscribe(t, late, 3, "app")
	late.sendV2(t, &protocol.Report{Request: 4, State: protocol.StateStaged, Seq: 2, Version: id2, Node: "late", Tree: "app"})
	expectEnd(t, late, 4, "late REPORT staged")
	if sa, ok := nextNonPing(t, late, 5*time.Second).(*protocol.SwitchAt); !ok || sa.Request != 3 || sa.InMS != 0 || sa.AtNS != at.UnixNano() {
		t.Fatalf("late node: want SWITCHAT in-ms 0 at the instant, got %+v", sa)
	}
}

// A relay's server passes its parent's instant down: Switch(tree, id, at)
// sends a child at version 4 SWITCHAT naming at (by the relay's clock),
// with in-ms what is left of it.
func TestRelayPassesTheInstantDown(t *testing.T) {
	src, ep, srv, _ := barrierServer(t, time.Second, 0, func(c *sender.Config) {
		c.PeerTimeout, c.Fleet.LostAfter = 30*time.Second, 30*time.Second
		c.Barrier, c.ExternalBarrier = false, true
	})
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	id2 := srv.Trees()[0].ID

	child := helloV4(t, ep, "raw-v4-child")
	subscribe(t, child, 1, "app")
	child.sendV2(t, &protocol.Report{Request: 2, State: protocol.StateStaged, Seq: 2, Version: protocol.Hash(id2), Node: "c1", Tree: "app"})
	expectEnd(t, child, 2, "REPORT staged")
	at := time.Now().Add(700 * time.Millisecond)
	srv.Switch("app", id2, at)
	sa, ok := nextNonPing(t, child, 5*time.Second).(*protocol.SwitchAt)
	if !ok || sa.Request != 1 || sa.Seq != 2 || sa.Version != protocol.Hash(id2) {
		t.Fatalf("want SWITCHAT passed down, got %+v", sa)
	}
	if sa.AtNS != at.UnixNano() || sa.InMS > 700 || sa.InMS == 0 {
		t.Errorf("SWITCHAT at-ns %d in-ms %d, want at-ns %d and in-ms in (0, 700]", sa.AtNS, sa.InMS, at.UnixNano())
	}
}

// A node's wait on SWITCHAT is bounded by in-ms whatever at-ns says: a
// server (or a node clock) an hour off makes the node switch at once or
// within in-ms, never an hour later; with clocks that agree it waits
// until at-ns. What Control reports (ControlEvent.At) is checked against
// the time the event arrived. A SWITCHAT for a request the node never
// made ends the session (ErrProtocol).
func TestSwitchAtWaitBoundedByInMS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hour := int64(time.Hour)
	for _, c := range []struct {
		name string
		skew int64 // at-ns = the server's now + skew
		inMS uint32
	}{
		{"at-ns an hour ahead", hour, 300},
		{"at-ns an hour behind", -hour, 300},
		{"clocks agree", int64(400 * time.Millisecond), 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			var atNS atomic.Int64
			ep := rawServerWith(t, rawOptions{version: 4, reply: func(m protocol.Message) []protocol.Message {
				l, ok := m.(*protocol.List)
				if !ok {
					return nil
				}
				atNS.Store(time.Now().UnixNano() + c.skew)
				return []protocol.Message{&protocol.Tree{Request: l.Request, Seq: 1, Name: "app"}, &protocol.End{Request: l.Request, Size: 1},
					&protocol.SwitchAt{Request: l.Request, Seq: 1, AtNS: atNS.Load(), InMS: c.inMS, Tree: "app"}}
			}})
			cctx, stop := context.WithCancel(ctx)
			defer stop()
			type got struct{ at, arrived time.Time }
			ch := make(chan got, 1)
			go receiver.Control(cctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second},
				receiver.ControlConfig{Trees: []string{"app"}, Events: func(e receiver.ControlEvent) {
					if e.Kind == receiver.ControlSwitch {
						select {
						case ch <- got{e.At, time.Now()}:
						default:
						}
					}
				}})
			var g got
			select {
			case g = <-ch:
			case <-ctx.Done():
				t.Fatal("no switch event")
			}
			wait := g.at.Sub(g.arrived)
			switch {
			case wait > time.Duration(c.inMS)*time.Millisecond:
				t.Errorf("the node would wait %v, over in-ms %d", wait, c.inMS)
			case c.skew < 0 && wait > 0:
				t.Errorf("at-ns passed: the node would still wait %v", wait)
			case c.skew == int64(400*time.Millisecond) && g.arrived.UnixNano() < atNS.Load() && g.at.UnixNano() != atNS.Load():
				t.Errorf("clocks agree: the node would switch at %d, at-ns is %d", g.at.UnixNano(), atNS.Load())
			}
		})
	}
	ep := rawServerWith(t, rawOptions{version: 4, reply: func(m protocol.Message) []protocol.Message {
		if l, ok := m.(*protocol.List); ok {
			return []protocol.Message{&protocol.End{Request: l.Request}, &protocol.SwitchAt{Request: 99, Seq: 2, Tree: "app"}}
		}
		return nil
	}})
	err := receiver.Control(ctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second},
		receiver.ControlConfig{Trees: []string{"app"}})
	if !errors.Is(err, receiver.ErrProtocol) {
		t.Errorf("SWITCHAT for another request: %v, want ErrProtocol", err)
	}
}

// An outside version 4 follower (testdata/pybarrier.py, written in Python
// from PROTOCOL.md sections 14 and 17) subscribes, reports staged, gets
// SWITCHAT naming the barrier's instant, waits as section 17.2 says and
// reports switched: what it decoded is the server's instant, and its wait
// ended at or after it (one machine, one clock).
func TestPythonBarrierFollower(t *testing.T) {
	pyNeedZMQ(t)
	delay := 600 * time.Millisecond
	_, ep, srv, be := barrierServer(t, 2*time.Second, delay, nil)
	script, err := filepath.Abs(filepath.Join("testdata", "pybarrier.py"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pySystemPython, script, ep, "app", "py1")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pybarrier: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var seq uint64
	var atNS, waitNS, switchedNS int64
	var inMS uint32
	if _, err := fmt.Sscanf(stdout.String(), "switchat seq %d at-ns %d in-ms %d wait-ns %d switched-ns %d", &seq, &atNS, &inMS, &waitNS, &switchedNS); err != nil {
		t.Fatalf("pybarrier printed %q: %v", stdout.String(), err)
	}
	at := be.of(t, seq).At
	if atNS != at.UnixNano() {
		t.Errorf("SWITCHAT at-ns %d, the barrier's instant %d", atNS, at.UnixNano())
	}
	if time.Duration(inMS)*time.Millisecond > delay {
		t.Errorf("in-ms %d over --switch-delay %v", inMS, delay)
	}
	if switchedNS < atNS {
		t.Errorf("the outside follower's wait ended %v before the instant", time.Duration(atNS-switchedNS))
	}
	waitUntil(t, 10*time.Second, "py1 switched", converged(srv, "app", seq, 1))
	t.Logf("pybarrier: %s", bytes.TrimSpace(stdout.Bytes()))
}

// A client reporting "staged" for a version the server never published (a
// higher sequence, any id) opens no barrier: the barrier of the version
// really published stands, and the followers that stage it switch
// (PROTOCOL.md 14.4: a barrier per published version).
func TestBarrierIgnoresStagedOfUnpublishedVersion(t *testing.T) {
	src, ep, srv, _ := barrierServer(t, 3*time.Second, 0, nil)
	var fs []*follower
	for i := 0; i < 2; i++ {
		// The check hook makes staging last, so that the forged report
		// lands before the followers stage.
		fs = append(fs, startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"},
			Node: fmt.Sprintf("n%d", i), Check: "sleep 0.5"}))
	}
	waitUntil(t, 20*time.Second, "2 nodes on v1", converged(srv, "app", 1, 2))
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	forged := protocol.Report{Request: 1, State: protocol.StateStaged, Seq: 102, Version: protocol.Hash{0xee, 1, 2}, Node: "forger", Tree: "app"}
	if err := receiver.Report(ctx, fastRecv(ep), forged); err != nil {
		t.Fatalf("forged report: %v", err)
	}
	for i, f := range fs {
		waitUntil(t, 20*time.Second, fmt.Sprintf("node %d on v2", i), func() (bool, string) {
			got := readStable(t, f.out, "app", "app.conf")
			return got == "v2", got
		})
	}
}

// A client that sends a command only servers send (TREE, SWITCH, FLEET,
// PACK, SWITCHAT) in a version 4 session gets ERROR 400 (request 0) and
// loses its session (PROTOCOL.md 5.2).
func TestServerOnlyCommandsFromClientV4(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	os.MkdirAll(a, 0o755)
	_, srv := publishingServer(t, sender.Config{Paths: []string{a}})
	for _, m := range []protocol.Message{
		&protocol.Tree{Request: 1, Seq: 1, Entries: 1, Name: "a"},
		&protocol.Switch{Request: 1, Seq: 1, Tree: "a"},
		&protocol.Fleet{Request: 1, State: protocol.StateSwitched, Seq: 1, Node: "n", Tree: "a"},
		&protocol.Pack{Request: 1, Files: []protocol.PackFile{{Index: 1, Size: 1}}, Data: []byte("x")},
		&protocol.SwitchAt{Request: 1, Seq: 1, AtNS: 1, InMS: 1, Tree: "a"},
	} {
		c := helloV4(t, srv.Endpoint(), "raw-v4")
		c.sendV2(t, m)
		e, ok := c.next(t).(*protocol.Error)
		if !ok || e.Request != 0 || e.Code != protocol.CodeBadRequest {
			t.Fatalf("%v from a client: %+v, want ERROR 400 (request 0)", m.Command(), e)
		}
		waitUntil(t, 5*time.Second, "session dropped", func() (bool, string) {
			st := srv.Stats()
			return st.Sessions == 0, fmt.Sprintf("%+v", st)
		})
		c.close()
	}
}

// Version negotiation (PROTOCOL.md section 4): the server picks the
// highest version both speak, from any overlapping range; a message
// framed at another version than the session's is ERROR 505 (request 0),
// naming the server's range, and the session is dropped.
func TestVersionRanges(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a")
	os.MkdirAll(a, 0o755)
	_, srv := publishingServer(t, sender.Config{Paths: []string{a}})
	for _, c := range []struct{ min, max, want uint8 }{{1, 9, protocol.MaxVersion}, {3, 200, protocol.MaxVersion}, {2, 2, 2}, {1, 1, 1}} {
		p := dialZ(t, srv.Endpoint(), true)
		p.send(t, &protocol.Hello{MinVersion: c.min, MaxVersion: c.max, MaxChunk: protocol.MinChunkSize, PeerID: "range"})
		w, ok := p.expect(t, 3*time.Second).(*protocol.Welcome)
		if !ok || w.Version != c.want {
			t.Fatalf("HELLO %d..%d: %+v, want WELCOME %d", c.min, c.max, w, c.want)
		}
		p.close()
	}
	c := helloV4(t, srv.Endpoint(), "mixed")
	c.sendFrames(t, protocol.Encode(protocol.Version1, &protocol.Get{Request: 3, Name: "a/x"})...)
	frames := c.recv(5 * time.Second)
	m, _, err := protocol.Decode(frames)
	e, ok := m.(*protocol.Error)
	if err != nil || !ok || e.Request != 0 || e.Code != protocol.CodeVersion || !strings.Contains(e.Message, fmt.Sprintf("1..%d", protocol.MaxVersion)) {
		t.Fatalf("a version 1 GET in a version 4 session: %+v, %v; want ERROR 505 naming 1..%d", m, err, protocol.MaxVersion)
	}
	waitUntil(t, 5*time.Second, "session dropped", func() (bool, string) {
		st := srv.Stats()
		return st.Sessions == 0, fmt.Sprintf("%+v", st)
	})
}
