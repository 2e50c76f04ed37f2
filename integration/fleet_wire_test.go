package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The replies of PROTOCOL.md 14.2 and 14.3, on the wire: END for a report
// taken, ERROR 404 for a tree not published (the session goes on), STATUS
// as TREE per tree, FLEET per row, END with the row count; STATUS of an
// unknown tree is 404; REPORT and STATUS do not exist at version 1.
func TestFleetWireReplies(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, srv := publishingServer(t, fastFleet(src))
	id := protocol.Hash(srv.Trees()[0].ID)
	c := helloV2(t, ep)
	c.sendV2(t, &protocol.Report{Request: 7, State: protocol.StateSwitched, Seq: 1, Version: id, Node: "web1", Tree: "app",
		Hook: protocol.HookResult{Name: "exec", Exit: 0, DurationMS: 5, Output: "ok"}})
	if e, ok := c.next(t).(*protocol.End); !ok || e.Request != 7 || e.Size != 0 || e.Hash != (protocol.Hash{}) {
		t.Fatalf("reply to a good REPORT: %+v", e)
	}
	c.sendV2(t, &protocol.Report{Request: 8, State: protocol.StateSwitched, Node: "web1", Tree: "nope"})
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 8 || e.Code != protocol.CodeNotFound {
		t.Fatalf("reply to a REPORT of an unknown tree: %+v", e)
	}
	c.sendV2(t, &protocol.Status{Request: 9})
	tr, ok := c.next(t).(*protocol.Tree)
	if !ok || tr.Request != 9 || tr.Name != "app" || tr.Seq != 1 || tr.Version != id {
		t.Fatalf("first reply to STATUS: %+v", tr)
	}
	fl, ok := c.next(t).(*protocol.Fleet)
	if !ok || fl.Request != 9 || fl.Node != "web1" || fl.Tree != "app" || fl.State != protocol.StateSwitched || fl.Seq != 1 ||
		fl.Behind != 0 || fl.Version != id || fl.Hook.Name != "exec" || fl.Hook.Output != "ok" || fl.AgeMS > 5000 {
		t.Fatalf("FLEET: %+v", fl)
	}
	if e, ok := c.next(t).(*protocol.End); !ok || e.Request != 9 || e.Size != 1 {
		t.Fatalf("END of STATUS: %+v", e)
	}
	c.sendV2(t, &protocol.Status{Request: 10, Tree: "nope"})
	if e, ok := c.next(t).(*protocol.Error); !ok || e.Request != 10 || e.Code != protocol.CodeNotFound {
		t.Fatalf("STATUS of an unknown tree: %+v", e)
	}
	// One session reports under at most 64 node names (web1 is one).
	for i := 2; i <= 65; i++ {
		req := uint32(100 + i)
		c.sendV2(t, &protocol.Report{Request: req, State: protocol.StateSyncing, Node: fmt.Sprintf("web%d", i), Tree: "app"})
		m := c.next(t)
		if i <= 64 {
			if e, ok := m.(*protocol.End); !ok || e.Request != req {
				t.Fatalf("report %d: %+v", i, m)
			}
		} else if e, ok := m.(*protocol.Error); !ok || e.Request != req || e.Code != protocol.CodeTooMany {
			t.Fatalf("report under a 65th name: %+v, want 429", m)
		}
	}

	root := filepath.Join(t.TempDir(), "conf")
	writeFile(t, filepath.Join(root, "x"), "x")
	ep1, _ := publishingServer(t, sender.Config{Paths: []string{root}})
	p := dialZ(t, ep1, true)
	p.hello(t, 1<<20)
	p.send(t, &protocol.Status{Request: 1})
	p.expectError(t, 0, protocol.CodeUnknownCommand, "STATUS in a version 1 session")
}

// A node not heard from within the bound is shown lost, not forgotten;
// lost nodes do not hold back the deploy gate; a node that comes back is
// live again.
func TestFleetLostNode(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Fleet.LostAfter = time.Second
	ep, srv := publishingServer(t, cfg)
	out := t.TempDir()
	startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "a"})
	b := startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "b", Out: out})
	waitUntil(t, 20*time.Second, "2 nodes on v1", converged(srv, "app", 1, 2))
	b.stop()
	writeFile(t, filepath.Join(src, "app.conf"), "v2")
	publishNow(t, srv)
	waitUntil(t, 20*time.Second, "b lost, a on v2", func() (bool, string) {
		st := srv.Fleet()[0]
		return st.OnLatest == 1 && st.Live == 1 && len(st.LostNodes) == 1 && st.LostNodes[0] == "b", st.Summary()
	})
	st := srv.Fleet()[0]
	if len(st.Rows) != 2 {
		t.Fatalf("the lost node was forgotten: %+v", st.Rows)
	}
	for _, r := range st.Rows {
		if r.Node == "b" && (r.Shown != fleet.Lost || r.Seq != 1 || r.Behind != 1) {
			t.Errorf("lost row %+v", r)
		}
	}
	if v := srv.FleetGate(); v != fleet.Converged {
		t.Errorf("gate with a lost node: %v, want Converged (every live node is on the latest)", v)
	}

	startFollower(t, mirror.FollowConfig{Receiver: fastRecv(ep), Trees: []string{"app"}, Node: "b", Out: out})
	waitUntil(t, 20*time.Second, "b back on v2", converged(srv, "app", 2, 2))

}

// With CURVE a node name belongs to the key that first reported it:
// another key reporting under that name is refused (403) and changes
// nothing.
func TestFleetNameBoundToCurveKey(t *testing.T) {
	server, a, b := newCert(t), newCert(t), newCert(t)
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	cfg := fastFleet(src)
	cfg.Curve = curveServer(server)
	ep, srv := publishingServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := protocol.Hash(srv.Trees()[0].ID)
	r := protocol.Report{Node: "web1", Tree: "app", State: protocol.StateSwitched, Seq: 1, Version: id}
	ca := fastRecv(ep)
	ca.OutputDir, ca.Curve = t.TempDir(), curveClient(server, a)
	if err := receiver.Report(ctx, ca, r); err != nil {
		t.Fatal(err)
	}
	cb := ca
	cb.Curve = curveClient(server, b)
	imp := r
	imp.State, imp.Error = protocol.StateFailed, "impostor"
	err := receiver.Report(ctx, cb, imp)
	var re *receiver.RemoteError
	if !errors.As(err, &re) || re.Code != protocol.CodeRefused {
		t.Fatalf("report under another key's name: %v, want 403", err)
	}
	if row := srv.Fleet()[0].Rows[0]; row.State != fleet.Switched || row.Error != "" {
		t.Fatalf("row changed by another key: %+v", row)
	}
}
