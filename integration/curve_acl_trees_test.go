package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/acl"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// TestCurveAccessListTrees: the access list also decides which key may
// mirror which published tree. The manifest of a tree (MGET) needs the
// whole tree ("TREE/"); a key with no rule for the tree is refused before
// anything is written, and its old version (none here) stays in place.
func TestCurveAccessListTrees(t *testing.T) {
	server, a, b := newCert(t), newCert(t), newCert(t)
	src := t.TempDir()
	conf, pub := filepath.Join(src, "conf"), filepath.Join(src, "public")
	os.MkdirAll(filepath.Join(conf, "sub"), 0o755)
	os.MkdirAll(pub, 0o755)
	writeRandom(t, filepath.Join(conf, "sub"), "secret.key", 3000)
	writeRandom(t, pub, "readme", 300)
	list, err := acl.Parse([]byte(a.Public.String()+" conf/\n*  public/\n"), src)
	if err != nil {
		t.Fatal(err)
	}
	cs := curveServer(server, a, b)
	cs.Access = func(k [32]byte, name string) bool { return list.Allowed(k, name) }
	ep, _ := serve(t, sender.Config{Paths: []string{conf, pub}, Curve: cs, StateDir: t.TempDir()})

	sync := func(who, tree string, key *receiver.CurveClient) (mirror.Result, error, string) {
		out := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := mirror.Sync(ctx, mirror.Config{Out: out, Tree: tree,
			Receiver: receiver.Config{Endpoint: ep, Timeout: 10 * time.Second, Curve: key}})
		return res, err, out
	}
	if _, err, out := sync("a", "conf", curveClient(server, a)); err != nil {
		t.Fatalf("a mirrors conf: %v", err)
	} else if _, err := os.Stat(filepath.Join(out, "conf", "sub", "secret.key")); err != nil {
		t.Fatalf("a's mirror of conf: %v", err)
	}
	if _, err, _ := sync("b", "public", curveClient(server, b)); err != nil {
		t.Fatalf("b mirrors public: %v", err)
	}
	_, err, out := sync("b", "conf", curveClient(server, b))
	if !errors.Is(err, receiver.ErrRefused) {
		t.Fatalf("b mirrors conf: %v, want refused", err)
	}
	if _, serr := os.Lstat(filepath.Join(out, "conf")); serr == nil {
		t.Fatal("a refused tree has a stable path")
	}
	// The list, the fleet status and reports follow the same rule: b sees
	// and reports only the trees it may mirror.
	bcfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 10 * time.Second, Curve: curveClient(server, b)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	trees, err := receiver.List(ctx, bcfg, "")
	if err != nil || len(trees) != 1 || trees[0].Name != "public" {
		t.Fatalf("b's LIST of every tree: %+v, %v; want public only", trees, err)
	}
	if _, err := receiver.List(ctx, bcfg, "conf"); !errors.Is(err, receiver.ErrRefused) {
		t.Fatalf("b's LIST of conf: %v, want refused", err)
	}
	if err := receiver.Report(ctx, bcfg, protocol.Report{Request: 1, State: protocol.StateSwitched, Node: "nodeB", Tree: "conf"}); !errors.Is(err, receiver.ErrRefused) {
		t.Fatalf("b reports conf: %v, want refused", err)
	}
	if err := receiver.Report(ctx, bcfg, protocol.Report{Request: 1, State: protocol.StateSwitched, Node: "nodeB", Tree: "public"}); err != nil {
		t.Fatalf("b reports public: %v", err)
	}
	acfg := bcfg
	acfg.Curve = curveClient(server, a)
	if err := receiver.Report(ctx, acfg, protocol.Report{Request: 1, State: protocol.StateSwitched, Node: "nodeA", Tree: "conf"}); err != nil {
		t.Fatalf("a reports conf: %v", err)
	}
	st, err := receiver.Status(ctx, bcfg, "")
	if err != nil {
		t.Fatalf("b's STATUS: %v", err)
	}
	for _, tr := range st.Trees {
		if tr.Name != "public" {
			t.Errorf("b's STATUS shows tree %s", tr.Name)
		}
	}
	for _, r := range st.Rows {
		if r.Tree != "public" {
			t.Errorf("b's STATUS shows a row of %s (node %s)", r.Tree, r.Node)
		}
	}
	if _, err := receiver.Status(ctx, bcfg, "conf"); !errors.Is(err, receiver.ErrRefused) {
		t.Fatalf("b's STATUS of conf: %v, want refused", err)
	}
	if st, err := receiver.Status(ctx, acfg, "conf"); err != nil || len(st.Rows) != 1 || st.Rows[0].Node != "nodeA" {
		t.Fatalf("a's STATUS of conf: %+v, %v", st, err)
	}
	// Nothing of the tree's content reached b's disk.
	filepath.Walk(out, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && filepath.Base(p) == "secret.key" {
			t.Errorf("refused content on disk: %s", p)
		}
		return nil
	})
}
