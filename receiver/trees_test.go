package receiver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

func TestListAndVersionOneServer(t *testing.T) {
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := &manifest.Manifest{Entries: []manifest.Entry{{Type: manifest.TypeDir, Mode: 0o755}}}
	v := treetest.NewVersion(5, m, nil)
	s.Publish("app", v)
	s.Publish("etc", treetest.NewVersion(1, m, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := receiver.Config{Endpoint: s.Endpoint, OutputDir: t.TempDir(), Timeout: 2 * time.Second}

	trees, err := receiver.List(ctx, cfg, "")
	if err != nil || len(trees) != 2 || trees[0].Name != "app" || trees[0].Seq != 5 || trees[0].Version != protocol.Hash(v.ID) ||
		trees[0].ManifestSize != uint64(len(v.Manifest)) || trees[0].Entries != 1 {
		t.Fatalf("List: %+v %v", trees, err)
	}
	if _, err := receiver.List(ctx, cfg, "nope"); !errors.Is(err, receiver.ErrNotFound) {
		t.Errorf("List of an unknown tree: %v", err)
	}
	// MGET: the manifest, END checked against the expected id.
	id := protocol.Hash(v.ID)
	res, err := receiver.FetchRequests(ctx, cfg, []receiver.Request{{Kind: receiver.KindMGet, Name: "app",
		Version: protocol.Tag(v.ID[:16]), Expect: &id, Size: uint64(len(v.Manifest)), CheckSize: true}})
	if err != nil || res[0].Hash != id {
		t.Fatalf("MGET: %+v %v", res, err)
	}
	// A version the server does not keep: 410, ErrGone.
	_, err = receiver.FetchRequests(ctx, cfg, []receiver.Request{{Kind: receiver.KindMGet, Name: "app", Version: protocol.Tag{1}}})
	if !errors.Is(err, receiver.ErrGone) {
		t.Errorf("MGET of a gone version: %v", err)
	}

	// A version 1 server serves no trees, and says so clearly.
	s.V1Only.Store(true)
	if _, err := receiver.List(ctx, cfg, "app"); !errors.Is(err, receiver.ErrNoTrees) {
		t.Errorf("List against a v1 server: %v", err)
	}
	_, err = receiver.FetchRequests(ctx, cfg, []receiver.Request{{Kind: receiver.KindVGet, Name: "app/x", Version: protocol.Tag{1}}})
	if !errors.Is(err, receiver.ErrNoTrees) {
		t.Errorf("VGET against a v1 server: %v", err)
	}
}
