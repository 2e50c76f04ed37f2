package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// CURVE (ZeroMQ RFC 26) end to end: transfers over tcp and ipc, what the
// wire shows, the refusals, the reloading allow directory, and libzmq
// (pyzmq) on either side.

func newCert(t testing.TB) *zcert.Cert {
	t.Helper()
	c, err := zcert.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// curveServer returns the sender's CURVE options for server, letting in
// the listed client keys (none listed: any key).
func curveServer(server *zcert.Cert, allowed ...*zcert.Cert) *sender.CurveServer {
	cs := &sender.CurveServer{PublicKey: server.Public, SecretKey: server.Secret}
	if len(allowed) == 0 {
		cs.AllowAny = true
		return cs
	}
	keys := map[[32]byte]bool{}
	for _, c := range allowed {
		keys[c.Public] = true
	}
	cs.Authorize = func(k [32]byte) bool { return keys[k] }
	return cs
}

func curveClient(server, client *zcert.Cert) *receiver.CurveClient {
	return &receiver.CurveClient{ServerKey: server.Public, PublicKey: client.Public, SecretKey: client.Secret}
}

func TestCurveTransfer(t *testing.T) {
	server, client := newCert(t), newCert(t)
	src := t.TempDir()
	big := writeRandom(t, src, "big.bin", 5<<20+123)
	small := writeRandom(t, src, "small.conf", 700)
	empty := writeRandom(t, src, "empty", 0)
	for _, kind := range localKinds {
		t.Run(kind, func(t *testing.T) {
			ep, _ := serve(t, sender.Config{Endpoint: endpointFor(t, kind), Paths: []string{big, small, empty},
				Curve: curveServer(server, client)})
			out := t.TempDir()
			res, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out, Curve: curveClient(server, client)},
				"big.bin", "small.conf", "empty")
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range []string{big, small, empty} {
				sameFile(t, p, res[i].Path)
			}
		})
	}
}

// recordingRelay forwards TCP connections to target and records every
// byte in both directions.
type recordingRelay struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

func startRelay(t *testing.T, target string) *recordingRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingRelay{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			go func() { io.Copy(io.MultiWriter(b, r), a); b.Close() }()
			go func() { io.Copy(io.MultiWriter(a, r), b); a.Close() }()
		}
	}()
	return r
}

func (r *recordingRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recordingRelay) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

func (r *recordingRelay) endpoint() string { return "tcp://" + r.ln.Addr().String() }

// leaks reports which of the file's 32-byte windows (one per KiB), and
// whether its name or the peer ids, appear in the capture.
func leaks(capture, content []byte, names ...string) []string {
	var found []string
	for _, n := range names {
		if bytes.Contains(capture, []byte(n)) {
			found = append(found, fmt.Sprintf("name %q", n))
		}
	}
	for off := 0; off+32 <= len(content); off += 1024 {
		if bytes.Contains(capture, content[off:off+32]) {
			found = append(found, fmt.Sprintf("content at offset %d", off))
			break
		}
	}
	return found
}

// TestCurveCapture fetches through a relay that records the wire: with
// CURVE neither the content, nor the file's name, nor the peers' names
// appear; without it (the control) they do, so the check can see them.
func TestCurveCapture(t *testing.T) {
	server, client := newCert(t), newCert(t)
	src := t.TempDir()
	const name = "db-password-7f3a.conf"
	p := writeRandom(t, src, name, 300<<10)
	content, _ := os.ReadFile(p)
	for _, curve := range []bool{false, true} {
		t.Run(fmt.Sprintf("curve=%v", curve), func(t *testing.T) {
			cfg := sender.Config{Paths: []string{p}, Name: "server-name-91c2"}
			rcfg := receiver.Config{OutputDir: t.TempDir(), PeerID: "node-name-5d1e"}
			if curve {
				cfg.Curve = curveServer(server, client)
				rcfg.Curve = curveClient(server, client)
			}
			ep, _ := serve(t, cfg)
			relay := startRelay(t, strings.TrimPrefix(ep, "tcp://"))
			rcfg.Endpoint = relay.endpoint()
			res, err := fetch(t, rcfg, name)
			if err != nil {
				t.Fatal(err)
			}
			sameFile(t, p, res[0].Path)
			capture := relay.bytes()
			found := leaks(capture, content, name, "server-name-91c2", "node-name-5d1e", "ZSND")
			t.Logf("%d bytes captured; in plaintext: %v", len(capture), found)
			switch {
			case curve && len(found) > 0:
				t.Fatalf("CURVE capture shows %v", found)
			case !curve && len(found) < 5:
				t.Fatalf("control capture shows only %v: the check is blind", found)
			}
		})
	}
}

func TestCurveRefusals(t *testing.T) {
	server, client, other := newCert(t), newCert(t), newCert(t)
	src := t.TempDir()
	p := writeRandom(t, src, "f.bin", 1000)
	var mu sync.Mutex
	var events []sender.Event
	curveEP, _ := serve(t, sender.Config{Paths: []string{p}, Curve: curveServer(server, client),
		Events: func(e sender.Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
	nullEP, _ := serve(t, sender.Config{Paths: []string{p}})

	cases := []struct {
		name string
		cfg  receiver.Config
		want error
	}{
		{"wrong server key", receiver.Config{Endpoint: curveEP, Curve: curveClient(other, client)}, receiver.ErrServerKey},
		{"unlisted client key", receiver.Config{Endpoint: curveEP, Curve: curveClient(server, other)}, receiver.ErrKeyRefused},
		{"fresh client key", receiver.Config{Endpoint: curveEP, Curve: &receiver.CurveClient{ServerKey: server.Public}}, receiver.ErrKeyRefused},
		{"NULL client, CURVE server", receiver.Config{Endpoint: curveEP}, receiver.ErrServerKey},
		{"CURVE client, NULL server", receiver.Config{Endpoint: nullEP, Curve: curveClient(server, client)}, receiver.ErrServerKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.OutputDir = t.TempDir()
			c.cfg.Timeout = 20 * time.Second
			start := time.Now()
			_, err := fetch(t, c.cfg, "f.bin")
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			// Final at once: no retrying until the timeout.
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v", d)
			}
			if got := entries(t, c.cfg.OutputDir); len(got) != 0 {
				t.Fatalf("output holds %v", got)
			}
			t.Logf("%v", err)
		})
	}
	mu.Lock()
	defer mu.Unlock()
	refused := 0
	for _, e := range events {
		if e.Kind == "curve-refused" {
			refused++
			if !strings.Contains(e.Message, other.Fingerprint()) && !strings.Contains(e.Peer, "key:") {
				t.Errorf("refusal event without a fingerprint: %+v", e)
			}
		}
		if e.Kind == "session-open" {
			t.Errorf("a refused peer got a session: %+v", e)
		}
	}
	if refused < 2 {
		t.Fatalf("%d curve-refused events, want 2", refused)
	}
}

// TestCurveAllowDirReload: a key added to the --allow directory is let in
// without a restart; one removed is refused again.
func TestCurveAllowDirReload(t *testing.T) {
	server, client := newCert(t), newCert(t)
	dir := t.TempDir()
	other := newCert(t)
	if err := other.Save(filepath.Join(dir, "other")); err != nil {
		t.Fatal(err)
	}
	store, err := zcert.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	p := writeRandom(t, src, "f.bin", 1000)
	ep, _ := serve(t, sender.Config{Paths: []string{p}, Curve: &sender.CurveServer{PublicKey: server.Public, SecretKey: server.Secret,
		Authorize: func(k [32]byte) bool { return store.Allowed(k) }}})
	cfg := receiver.Config{Endpoint: ep, Curve: curveClient(server, client), Timeout: 5 * time.Second}
	cfg.OutputDir = t.TempDir()
	if _, err := fetch(t, cfg, "f.bin"); !errors.Is(err, receiver.ErrKeyRefused) {
		t.Fatalf("before listing: %v", err)
	}
	pub := *client
	pub.Secret = zcert.Key{}
	if err := pub.Save(filepath.Join(dir, "client")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the added key is let in", func() bool {
		cfg.OutputDir = t.TempDir()
		_, err := fetch(t, cfg, "f.bin")
		return err == nil
	})
	os.Remove(filepath.Join(dir, "client"))
	eventually(t, 5*time.Second, "the removed key is refused", func() bool {
		cfg.OutputDir = t.TempDir()
		_, err := fetch(t, cfg, "f.bin")
		return errors.Is(err, receiver.ErrKeyRefused)
	})
}

// TestCurvePythonClient: libzmq's CURVE client (pyzmq) fetches from zsend,
// with a listed key and with a fresh zmq.curve_keypair() under AllowAny;
// an unlisted key gets nothing.
func TestCurvePythonClient(t *testing.T) {
	pyNeedZMQ(t)
	server, client := newCert(t), newCert(t)
	src := t.TempDir()
	const name = "app.conf"
	p := writeRandom(t, src, name, 1<<20+5)
	for _, kind := range endpointKinds {
		t.Run(kind, func(t *testing.T) {
			ep, _ := serve(t, sender.Config{Endpoint: endpointFor(t, kind), Paths: []string{p}, Curve: curveServer(server, client)})
			pyFetch(t, src, t.TempDir(), ep, name, "--curve-serverkey", server.Public.String(),
				"--curve-publickey", client.Public.String(), "--curve-secretkey", client.Secret.String())
			// An unlisted (fresh) key: libzmq retries the handshake
			// quietly; the client gives up after its timeout.
			out := t.TempDir()
			res := pyclient(t, time.Minute, "--timeout", "2", "--curve-serverkey", server.Public.String(), ep, name, out)
			if res.code == 0 {
				t.Fatalf("an unlisted libzmq key fetched the file: %s", res.stdout)
			}
			if got := entries(t, out); len(got) != 0 {
				t.Fatalf("output holds %v", got)
			}
		})
	}
	t.Run("allow-any", func(t *testing.T) {
		ep, _ := serve(t, sender.Config{Paths: []string{p}, Curve: curveServer(server)})
		pyFetch(t, src, t.TempDir(), ep, name, "--curve-serverkey", server.Public.String())
	})
}

// pyRouter is a libzmq CURVE ROUTER written in Python: it receives one
// message, checks that it is a ZSND HELLO, prints its peer id, and answers
// a ZSND ERROR 404 for the whole session.
const pyRouter = `
import struct, sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.curve_server = True
s.curve_secretkey = sys.argv[1].encode()
s.setsockopt(zmq.RCVTIMEO, 20000)
s.setsockopt(zmq.LINGER, 2000)
port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
m = s.recv_multipart()
ident, cmd, hdr = m[0], m[1], m[2]
assert cmd[:4] == b"ZSND" and cmd[4] == 1 and cmd[5] == 0x01, cmd
n = struct.unpack(">H", hdr[10:12])[0]
print("HELLO", hdr[12:12+n].decode(), flush=True)
msg = b"python router says no"
s.send_multipart([ident, b"ZSND\x01\x23", struct.pack(">IHH", 0, 404, len(msg)) + msg])
s.recv_multipart()  # the receiver's goodbye, or the timeout
`

func TestCurvePythonRouter(t *testing.T) {
	pyNeedZMQ(t)
	server, client := newCert(t), newCert(t)
	port, stderr, lines, stop := startPyRouter(t, server)
	defer stop()
	cfg := receiver.Config{Endpoint: "tcp://127.0.0.1:" + port, OutputDir: t.TempDir(), PeerID: "go-curve-node",
		Curve: curveClient(server, client), Timeout: 10 * time.Second}
	_, err := fetch(t, cfg, "f.bin")
	var re *receiver.RemoteError
	if !errors.As(err, &re) || re.Message != "python router says no" || !errors.Is(err, receiver.ErrNotFound) {
		t.Fatalf("fetch from the python router: %v (python stderr: %s)", err, stderr.String())
	}
	select {
	case l := <-lines:
		if l != "HELLO go-curve-node" {
			t.Fatalf("python router printed %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("python router printed nothing")
	}
}

// A libzmq server drops a HELLO boxed to another key without a word;
// after a few such drops in a row zrecv concludes the key is wrong
// (exit code 8), rather than retrying until its timeout.
func TestCurvePythonRouterWrongKey(t *testing.T) {
	pyNeedZMQ(t)
	server, other, client := newCert(t), newCert(t), newCert(t)
	port, _, _, stop := startPyRouter(t, server)
	defer stop()
	start := time.Now()
	_, err := fetch(t, receiver.Config{Endpoint: "tcp://127.0.0.1:" + port, OutputDir: t.TempDir(),
		Curve: curveClient(other, client), Timeout: 20 * time.Second}, "f.bin")
	if !errors.Is(err, receiver.ErrServerKey) {
		t.Fatalf("wrong key against libzmq: %v, want ErrServerKey", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
}

// startPyRouter runs pyRouter with server's secret key and returns its
// port, its stderr, the lines it prints after the port, and a stop func.
func startPyRouter(t *testing.T, server *zcert.Cert) (string, *lockedBuffer, <-chan string, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, pySystemPython, "-c", pyRouter, server.Secret.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var stderr lockedBuffer
	go func() {
		sc := bufio.NewScanner(stderrPipe)
		for sc.Scan() {
			stderr.add(sc.Text())
		}
	}()
	lines := make(chan string, 4)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	stop := func() { cancel(); cmd.Wait() }
	select {
	case port, ok := <-lines:
		if ok {
			return port, &stderr, lines, stop
		}
	case <-time.After(30 * time.Second):
	}
	stop()
	t.Fatalf("python router did not start: %s", stderr.String())
	return "", nil, nil, nil
}
