// Package integration tests zsend/zrecv as a black box over real sockets
// and real files: the sender and receiver libraries in-process, and the
// built binaries as subprocesses. Every destination is compared with an
// independent BLAKE3 of its source.
package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// endpointKinds are the transports every transfer test runs over (and
// the Python interop tests: libzmq cannot reach a Go process's inproc).
var endpointKinds = []string{"tcp", "ipc"}

// localKinds adds inproc://, for the tests of the Go library alone.
var localKinds = []string{"tcp", "ipc", "inproc"}

var inprocSeq atomic.Int64

func endpointFor(t testing.TB, kind string) string {
	switch kind {
	case "tcp":
		return "tcp://127.0.0.1:0"
	case "ipc":
		// Unix socket paths are limited to ~100 bytes: keep it short.
		dir, err := os.MkdirTemp("", "zs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return "ipc://" + filepath.Join(dir, "s")
	case "inproc":
		return fmt.Sprintf("inproc://zsend-test-%d", inprocSeq.Add(1))
	}
	t.Fatalf("unknown endpoint kind %q", kind)
	return ""
}

// serve starts a sender on cfg (Endpoint defaults to tcp loopback) and
// stops it when the test ends. It returns the bound endpoint.
func serve(t testing.TB, cfg sender.Config) (string, *sender.Server) {
	t.Helper()
	if cfg.Endpoint == "" {
		cfg.Endpoint = "tcp://127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := sender.Listen(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop within 10s")
		}
	})
	return srv.Endpoint(), srv
}

// fetch runs the receiver with a bounded context.
func fetch(t testing.TB, cfg receiver.Config, names ...string) ([]receiver.Result, error) {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return receiver.Fetch(ctx, cfg, names...)
}

// serveRandom serves one new file of n random bytes and returns its path,
// the endpoint and the server. cfg's Paths is filled in.
func serveRandom(t testing.TB, name string, n int64, cfg sender.Config) (string, string, *sender.Server) {
	t.Helper()
	p := writeRandom(t, t.TempDir(), name, n)
	cfg.Paths = []string{p}
	ep, srv := serve(t, cfg)
	return p, ep, srv
}

// writeRandom creates dir/name with n random bytes.
func writeRandom(t testing.TB, dir, name string, n int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// b3 is an independent BLAKE3-256 of a file, as b3sum prints it.
func b3(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := blake3.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// entries lists dir, hidden files included.
func entries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// b3sum runs the b3sum tool, when installed (CI installs it), as a second
// independent implementation.
func b3sum(t testing.TB, path string) (string, bool) {
	t.Helper()
	if _, err := exec.LookPath("b3sum"); err != nil {
		return "", false
	}
	out, err := exec.Command("b3sum", "--no-names", path).Output()
	if err != nil {
		t.Fatalf("b3sum %s: %v", path, err)
	}
	return strings.TrimSpace(string(out)), true
}

func sameFile(t testing.TB, src, dst string) {
	t.Helper()
	if a, b := b3(t, src), b3(t, dst); a != b {
		t.Fatalf("%s: BLAKE3 %s, source %s has %s", dst, b, src, a)
	}
}
