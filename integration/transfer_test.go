package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

func TestTransferSizes(t *testing.T) {
	const chunk = protocol.DefaultChunk
	sizes := []int64{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 17, 64 << 20}
	src := t.TempDir()
	var names []string
	for _, n := range sizes {
		name := fmt.Sprintf("f%d.bin", n)
		writeRandom(t, src, name, n)
		names = append(names, name)
	}
	for _, kind := range localKinds {
		t.Run(kind, func(t *testing.T) {
			var paths []string
			for _, n := range names {
				paths = append(paths, filepath.Join(src, n))
			}
			ep, _ := serve(t, sender.Config{Endpoint: endpointFor(t, kind), Paths: paths})
			out := t.TempDir()
			results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, names...)
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			for i, res := range results {
				if res.Err != nil || res.Size != sizes[i] {
					t.Fatalf("%s: %+v", names[i], res)
				}
				sameFile(t, filepath.Join(src, names[i]), res.Path)
				if got := b3(t, res.Path); got != res.Hash.String() {
					t.Fatalf("%s: reported hash %s, file has %s", names[i], res.Hash, got)
				}
				if sum, ok := b3sum(t, res.Path); ok && sum != res.Hash.String() {
					t.Fatalf("%s: b3sum says %s, zrecv reported %s", names[i], sum, res.Hash)
				}
				if res.Wire != sizes[i] {
					t.Fatalf("%s: %d bytes over the wire for %d", names[i], res.Wire, sizes[i])
				}
			}
			if got := len(entries(t, out)); got != len(names) {
				t.Fatalf("output holds %v; want exactly the %d files", entries(t, out), len(names))
			}
		})
	}
}

func TestModeAndMtimeRestored(t *testing.T) {
	src := t.TempDir()
	p := writeRandom(t, src, "script.sh", 5000)
	os.Chmod(p, 0o751)
	mtime := time.Date(2020, 2, 29, 12, 34, 56, 789000000, time.UTC)
	os.Chtimes(p, mtime, mtime)
	ep, _ := serve(t, sender.Config{Paths: []string{p}})
	out := t.TempDir()
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "script.sh"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(out, "script.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o751 {
		t.Errorf("mode %v, want 0751", fi.Mode().Perm())
	}
	if !fi.ModTime().Equal(mtime) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), mtime)
	}
}

func TestEightReceiversSameFile(t *testing.T) {
	p, ep, _ := serveRandom(t, "shared.bin", 24<<20, sender.Config{})
	var wg sync.WaitGroup
	errs := make([]error, 8)
	outs := make([]string, 8)
	for i := range 8 {
		outs[i] = t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = fetch(t, receiver.Config{Endpoint: ep, OutputDir: outs[i], PeerID: fmt.Sprint("r", i)}, "shared.bin")
		}()
	}
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil {
			t.Fatalf("receiver %d: %v", i, errs[i])
		}
		sameFile(t, p, filepath.Join(outs[i], "shared.bin"))
	}
}

func TestManySmallFilesPipelined(t *testing.T) {
	src := t.TempDir()
	dir := filepath.Join(src, "tree")
	os.Mkdir(dir, 0o755)
	var names []string
	for i := range 200 {
		writeRandom(t, dir, fmt.Sprintf("f%03d", i), 4096)
		names = append(names, fmt.Sprintf("tree/f%03d", i))
	}
	ep, _ := serve(t, sender.Config{Paths: []string{dir}})
	out := t.TempDir()
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, names...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		sameFile(t, filepath.Join(src, names[i]), r.Path)
	}
}

func TestMissingName(t *testing.T) {
	_, ep, _ := serveRandom(t, "here.txt", 100, sender.Config{})
	out := t.TempDir()
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "nope.txt", "here.txt")
	if !errors.Is(err, receiver.ErrNotFound) {
		t.Fatalf("error %v, want ErrNotFound", err)
	}
	var fe *receiver.FileError
	if !errors.As(err, &fe) || fe.Name != "nope.txt" {
		t.Fatalf("error %v does not name the file", err)
	}
	if results[1].Err != nil {
		t.Fatalf("the served file failed too: %v", results[1].Err)
	}
	if got := entries(t, out); len(got) != 1 || got[0] != "here.txt" {
		t.Fatalf("output holds %v, want only here.txt", got)
	}
}

func TestTraversalNamesRefusedLocally(t *testing.T) {
	_, ep, _ := serveRandom(t, "a.txt", 10, sender.Config{})
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	os.Mkdir(out, 0o755)
	for _, name := range []string{"../a.txt", "/etc/passwd", "a/../../a.txt", "..", "a\x00b", `..\a.txt`} {
		_, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, name)
		if !errors.Is(err, receiver.ErrRefused) {
			t.Errorf("%q: error %v, want ErrRefused", name, err)
		}
	}
	if got := entries(t, parent); len(got) != 1 {
		t.Fatalf("something was written beside the output dir: %v", got)
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("output holds %v", got)
	}
}

func TestSymlinkOutsideServedDirRefused(t *testing.T) {
	src := t.TempDir()
	secret := writeRandom(t, src, "secret", 10)
	dir := filepath.Join(src, "pub")
	os.Mkdir(dir, 0o755)
	writeRandom(t, dir, "ok", 10)
	if err := os.Symlink(secret, filepath.Join(dir, "leak")); err != nil {
		t.Fatal(err)
	}
	ep, _ := serve(t, sender.Config{Paths: []string{dir}})
	out := t.TempDir()
	_, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "pub/leak")
	if !errors.Is(err, receiver.ErrRefused) {
		t.Fatalf("error %v, want ErrRefused", err)
	}
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "pub/ok"); err != nil {
		t.Fatalf("a file inside the directory: %v", err)
	}
}

func TestExistingDestinationReplacedOnlyWhenVerified(t *testing.T) {
	const size = 24 << 20
	p, ep, _ := serveRandom(t, "conf", size, sender.Config{})
	out := t.TempDir()
	dest := filepath.Join(out, "conf")
	if err := os.WriteFile(dest, []byte("old version"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A fetch of the same name that fails with data already written
	// beside the destination (interrupted halfway) leaves it alone...
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var done atomic.Int64
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: out, Progress: func(e receiver.Event) {
		if e.Kind == receiver.EventProgress && e.Done > size/2 {
			done.Store(e.Done)
			cancel()
		}
	}}, "conf")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted fetch: %v", err)
	}
	if done.Load() == 0 {
		t.Fatal("the fetch was not interrupted halfway: the destination was never at risk")
	}
	if b, _ := os.ReadFile(dest); string(b) != "old version" {
		t.Fatal("a failed fetch touched the existing destination")
	}
	// ...and a good one replaces it.
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "conf"); err != nil {
		t.Fatal(err)
	}
	sameFile(t, p, dest)
}

func TestUnreachableServer(t *testing.T) {
	out := t.TempDir()
	start := time.Now()
	_, err := fetch(t, receiver.Config{Endpoint: "tcp://127.0.0.1:1", OutputDir: out, Timeout: 700 * time.Millisecond}, "x")
	if !errors.Is(err, receiver.ErrUnreachable) {
		t.Fatalf("error %v, want ErrUnreachable", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("took %v to give up", time.Since(start))
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("output holds %v", got)
	}
}

func TestCancelledFetchReturnsPromptly(t *testing.T) {
	_, ep, _ := serveRandom(t, "big", 16<<20, sender.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir()}, "big")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// Receivers that vanish mid-transfer must not disturb the others: in
// particular no chunk buffer may be reused while still being sent (a
// healthy receiver would see chunks failing their BLAKE3).
func TestVanishingReceiversDoNotCorruptOthers(t *testing.T) {
	const size = 32 << 20
	p, ep, srv := serveRandom(t, "f.bin", size, sender.Config{})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			receiver.Fetch(ctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Progress: func(e receiver.Event) {
				if e.Kind == receiver.EventProgress && e.Done > int64(i+1)*size/8 {
					cancel()
				}
			}}, "f.bin")
		}()
	}
	var bad sync.Map
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Progress: func(e receiver.Event) {
		if e.Kind == receiver.EventRestart || e.Kind == receiver.EventReconnect {
			bad.Store(e.Message, true)
		}
	}}, "f.bin")
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	bad.Range(func(k, _ any) bool { t.Errorf("healthy receiver saw: %v", k); return true })
	sameFile(t, p, results[0].Path)
	waitFor(t, 10*time.Second, "the vanished sessions to be released", func() bool {
		return srv.Stats().Sessions == 0 && srv.Stats().OpenFiles == 0
	})
}
