package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// The interop tests run testdata/pyclient.py, a ZSND client written from
// PROTOCOL.md alone on libzmq (Debian's python3-zmq), against the Go server.
// /usr/bin/python3 on purpose: a python3 earlier on PATH may lack zmq.
const pySystemPython = "/usr/bin/python3"

var (
	pyOnce sync.Once
	pyErr  error
)

// pyNeedZMQ skips the test unless /usr/bin/python3 can import zmq.
func pyNeedZMQ(t *testing.T) {
	t.Helper()
	pyOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, pySystemPython, "-c", "import zmq").CombinedOutput()
		if err != nil {
			pyErr = fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
		}
	})
	if pyErr != nil {
		t.Skipf("interop with libzmq needs %s with pyzmq (apt-get install python3-zmq): %v", pySystemPython, pyErr)
	}
}

type pyResult struct {
	code           int
	stdout, stderr string
}

// pyclient runs testdata/pyclient.py with args, bounded by timeout.
func pyclient(t *testing.T, timeout time.Duration, args ...string) pyResult {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "pyclient.py"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, pySystemPython, append([]string{script}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	res := pyResult{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("pyclient %v: still running after %v (stderr: %s)", args, timeout, res.stderr)
	case errors.As(err, &exitErr):
		res.code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("pyclient %v: %v", args, err)
	}
	return res
}

// pyFetch fetches name with the Python client and checks that it reports
// and wrote exactly the source's content.
func pyFetch(t *testing.T, src, out, ep, name string, flags ...string) {
	t.Helper()
	res := pyclient(t, 2*time.Minute, append(flags, ep, name, out)...)
	if res.code != 0 {
		t.Fatalf("pyclient %s: exit %d\nstdout: %s\nstderr: %s", name, res.code, res.stdout, res.stderr)
	}
	want := b3(t, filepath.Join(src, name))
	size := pySize(t, filepath.Join(src, name))
	if got, exp := strings.TrimSpace(res.stdout), fmt.Sprintf("OK %s %d", want, size); got != exp {
		t.Fatalf("pyclient %s printed %q, want %q", name, got, exp)
	}
	sameFile(t, filepath.Join(src, name), filepath.Join(out, name))
}

func pySize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestPythonBlake3SelfTest(t *testing.T) {
	pyNeedZMQ(t)
	res := pyclient(t, 2*time.Minute, "--self-test")
	if res.code != 0 || !strings.Contains(res.stdout, "self-test passed") {
		t.Fatalf("pyclient --self-test: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if strings.Contains(res.stdout, "skip b3sum") {
		t.Log("b3sum not installed: BLAKE3 checked against the known vectors only")
	}
}

func TestPythonInteropSizes(t *testing.T) {
	pyNeedZMQ(t)
	sizes := []int64{0, 1, 4096, 1<<20 + 17}
	src := t.TempDir()
	var paths, names []string
	for _, n := range sizes {
		name := fmt.Sprintf("f%d.bin", n)
		paths = append(paths, writeRandom(t, src, name, n))
		names = append(names, name)
	}
	for _, kind := range endpointKinds {
		t.Run(kind, func(t *testing.T) {
			ep, _ := serve(t, sender.Config{Endpoint: endpointFor(t, kind), Paths: paths})
			for _, name := range names {
				out := t.TempDir()
				pyFetch(t, src, out, ep, name)
				if got := entries(t, out); len(got) != 1 || got[0] != name {
					t.Fatalf("output holds %v, want only %s", got, name)
				}
			}
		})
	}
}

func TestPythonInteropMissingName(t *testing.T) {
	pyNeedZMQ(t)
	src := t.TempDir()
	p := writeRandom(t, src, "here.txt", 100)
	ep, _ := serve(t, sender.Config{Endpoint: "tcp://127.0.0.1:0", Paths: []string{p}})
	out := t.TempDir()
	res := pyclient(t, time.Minute, ep, "nope.txt", out)
	if res.code != 3 {
		t.Fatalf("exit %d, want 3\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	if !strings.HasPrefix(res.stderr, "ERROR 404 ") {
		t.Fatalf("stderr %q, want ERROR 404 ...", res.stderr)
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("output holds %v after a missing name, want nothing", got)
	}
	// The server still serves the next client.
	pyFetch(t, src, out, ep, "here.txt")
}

// TestPythonInteropHeartbeat has libzmq send ZMTP PING commands (not ZSND
// messages) every 100 ms during a long transfer, through a TCP tap that
// counts them, with a small credit window so that credit is replenished
// 64 times. The server must ignore the PINGs, and stay usable.
func TestPythonInteropHeartbeat(t *testing.T) {
	pyNeedZMQ(t)
	src := t.TempDir()
	const name = "big.bin"
	p := writeRandom(t, src, name, 2<<20)
	ep, _ := serve(t, sender.Config{Endpoint: "tcp://127.0.0.1:0", Paths: []string{p}, ChunkSize: 4096})
	tapEp, tap := pyTapTCP(t, ep)

	out := t.TempDir()
	start := time.Now()
	pyFetch(t, src, out, tapEp, name, "--heartbeat-ms", "100", "--window", "65536", "--max-window", "65536")
	elapsed := time.Since(start)
	pings, pongs := tap.clientCommands.count("PING"), tap.serverCommands.count("PONG")
	t.Logf("2 MiB in 4 KiB chunks took %v; libzmq sent %d ZMTP PINGs, the server answered %d PONGs",
		elapsed.Round(time.Millisecond), pings, pongs)
	if pings == 0 {
		t.Fatalf("libzmq sent no ZMTP PING in %v with --heartbeat-ms 100: the test proves nothing", elapsed)
	}
	if got := entries(t, out); len(got) != 1 || got[0] != name {
		t.Fatalf("output holds %v, want only %s", got, name)
	}

	// A normal Go receiver still completes afterwards.
	out2 := t.TempDir()
	results, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out2}, name)
	if err != nil {
		t.Fatalf("Go receiver after the Python client: %v", err)
	}
	if results[0].Err != nil || results[0].Size != 2<<20 {
		t.Fatalf("Go receiver: %+v", results[0])
	}
	sameFile(t, p, results[0].Path)
}

// pyZMTPTap is a TCP relay that parses the ZMTP 3.x byte streams it forwards
// and counts the command frames (PING, PONG, READY, ...) each way.
type pyZMTPTap struct {
	clientCommands, serverCommands pyCommandCounts
}

type pyCommandCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *pyCommandCounts) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[name]++
}

func (c *pyCommandCounts) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

// pyTapTCP relays a new loopback endpoint to the tcp:// endpoint ep.
func pyTapTCP(t *testing.T, ep string) (string, *pyZMTPTap) {
	t.Helper()
	target, ok := strings.CutPrefix(ep, "tcp://")
	if !ok {
		t.Fatalf("tap needs a tcp endpoint, got %s", ep)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &pyZMTPTap{}
	var (
		mu     sync.Mutex
		conns  []net.Conn
		wg     sync.WaitGroup
		closed atomic.Bool
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if closed.Load() {
			c.Close()
			return false
		}
		conns = append(conns, c)
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(c) {
				return
			}
			s, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !track(s) {
				c.Close()
				return
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(s, io.TeeReader(c, &pyZMTPScanner{greeting: 64, counts: &tap.clientCommands}))
				s.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer wg.Done()
				io.Copy(c, io.TeeReader(s, &pyZMTPScanner{greeting: 64, counts: &tap.serverCommands}))
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		closed.Store(true)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "tcp://" + ln.Addr().String(), tap
}

// pyZMTPScanner follows a ZMTP 3.x stream written to it byte by byte, so the
// relay never holds data back: the 64-octet greeting, then frames of a
// flags octet (0x02 long, 0x04 command), a 1- or 8-octet size and a body.
// A command body starts with its name's length and the name.
type pyZMTPScanner struct {
	greeting int
	hdr      []byte
	need     uint64
	command  bool
	body     []byte // the first octets of a command body
	counts   *pyCommandCounts
}

func (z *pyZMTPScanner) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		switch {
		case z.greeting > 0:
			k := min(z.greeting, len(p))
			z.greeting -= k
			p = p[k:]
		case z.need > 0:
			k := int(min(z.need, uint64(len(p))))
			if z.command && len(z.body) < 256 {
				z.body = append(z.body, p[:min(k, 256-len(z.body))]...)
			}
			z.need -= uint64(k)
			p = p[k:]
			if z.need == 0 {
				z.frameDone()
			}
		default:
			z.hdr = append(z.hdr, p[0])
			p = p[1:]
			want := 2
			if z.hdr[0]&0x02 != 0 {
				want = 9
			}
			if len(z.hdr) < want {
				continue
			}
			if want == 2 {
				z.need = uint64(z.hdr[1])
			} else {
				z.need = binary.BigEndian.Uint64(z.hdr[1:9])
			}
			z.command = z.hdr[0]&0x04 != 0
			z.hdr, z.body = z.hdr[:0], z.body[:0]
			if z.need == 0 {
				z.frameDone()
			}
		}
	}
	return n, nil
}

func (z *pyZMTPScanner) frameDone() {
	if !z.command {
		return
	}
	name := "?"
	if len(z.body) > 0 && len(z.body) > int(z.body[0]) {
		name = string(z.body[1 : 1+int(z.body[0])])
	}
	z.counts.add(name)
	z.command = false
}

// testdata/pytree.py, a version 3 tree client written from PROTOCOL.md
// (sections 13 and 16) on libzmq, mirrors the regular files of a published
// tree: LIST, MGET, then BGET for the small files and VGET for the large
// one, checking every PACK against the manifest as section 16.4 says; it
// also checks the two refusals of section 16 (a BGET of a directory gets
// ERROR 400 and the session goes on; BGET at version 2 gets ERROR 501).
// Every file it wrote has the source's bytes and mode.
func TestPythonV3TreeClient(t *testing.T) {
	pyNeedZMQ(t)
	src := t.TempDir()
	root := filepath.Join(src, "conf")
	var files []string
	for d := range 7 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", d), "sub")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range 200 {
			files = append(files, writeRandom(t, dir, fmt.Sprintf("f%03d", i), int64((i*37+d*11)%3000)))
		}
	}
	files = append(files, writeRandom(t, root, "big.bin", 2<<20+5)) // more than the chunk: VGET
	if err := os.Chmod(files[3], 0o600); err != nil {
		t.Fatal(err)
	}
	ep, _ := publishingServer(t, sender.Config{Paths: []string{root}})
	out := t.TempDir()
	script, err := filepath.Abs(filepath.Join("testdata", "pytree.py"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pySystemPython, script, ep, "conf", out)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pytree: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	t.Logf("pytree: %s", bytes.TrimSpace(stdout.Bytes()))
	var n, packs, bgets, vgets int
	if _, err := fmt.Sscanf(stdout.String(), "files %d packs %d bgets %d vgets %d", &n, &packs, &bgets, &vgets); err != nil {
		t.Fatalf("pytree printed %q: %v", stdout.String(), err)
	}
	// 1,400 small files: two BGETs (1,000 at most each), at least six
	// PACKs (256 files at most each), far fewer than the files.
	if n != len(files) || bgets != 2 || vgets != 1 || packs < 6 || packs > 100 {
		t.Errorf("pytree: %d files, %d PACKs, %d BGETs, %d VGETs; want %d files, 2 BGETs, 1 VGET, 6-100 PACKs",
			n, packs, bgets, vgets, len(files))
	}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(out, rel))
		if err != nil || blake3.Sum256(got) != blake3.Sum256(want) {
			t.Fatalf("%s: differs from the source (%v)", rel, err)
		}
		fi, _ := os.Stat(f)
		gi, _ := os.Stat(filepath.Join(out, rel))
		if fi.Mode().Perm() != gi.Mode().Perm() {
			t.Errorf("%s: mode %v, source %v", rel, gi.Mode().Perm(), fi.Mode().Perm())
		}
	}
}
