package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/sender"
)

// lockedBuffer collects a subprocess's stderr for later inspection.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) add(s string) {
	l.mu.Lock()
	l.b.WriteString(s + "\n")
	l.mu.Unlock()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// zsendCurveProc runs zsend with args, returning its endpoint and all it
// writes on stderr; it is stopped with SIGTERM at cleanup.
func zsendCurveProc(t *testing.T, args ...string) (string, *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), append([]string{"-b", "tcp://127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	epc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`on (tcp://\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.add(sc.Text())
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				epc <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		defer cancel()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	select {
	case ep := <-epc:
		return ep, &log
	case <-time.After(10 * time.Second):
		t.Fatalf("zsend did not report its endpoint: %s", log.String())
	}
	return "", nil
}

// run runs one of the binaries (bounded: runFor, 5 minutes); it returns
// the exit code, stdout and stderr.
func run(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	code, stdout, stderr, _ := runFor(t, 5*time.Minute, bin, args...)
	return code, stdout, stderr
}

// runFor runs one of the binaries, killed after limit; it returns the exit
// code (-1 if it had to be killed), stdout, stderr and how long it ran.
func runFor(t *testing.T, limit time.Duration, bin string, args ...string) (int, string, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		return -1, out.String(), errb.String(), took
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String(), took
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String(), took
}

func TestBinariesCurve(t *testing.T) {
	keys := t.TempDir()
	allow := filepath.Join(keys, "allow")
	os.Mkdir(allow, 0o755)
	srv, node, other := filepath.Join(keys, "server"), filepath.Join(keys, "node1"), filepath.Join(keys, "other")

	code, stdout, stderr := run(t, "zsend", "--keygen", srv)
	if code != 0 || !strings.Contains(stdout, "fingerprint = ") {
		t.Fatalf("zsend --keygen: exit %d, %q %q", code, stdout, stderr)
	}
	for _, p := range []string{node, other} {
		if code, _, stderr := run(t, "zrecv", "--keygen", p); code != 0 {
			t.Fatalf("zrecv --keygen: exit %d: %s", code, stderr)
		}
	}
	for _, p := range []string{srv, node, other} {
		fi, err := os.Stat(p + "_secret")
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s_secret: %v %v", p, fi.Mode(), err)
		}
	}
	if code, _, stderr := run(t, "zrecv", "--keygen", node); code != 2 || !strings.Contains(stderr, "exists") {
		t.Fatalf("--keygen over an existing pair: exit %d, %q", code, stderr)
	}
	nodeText, _ := os.ReadFile(node)
	os.WriteFile(filepath.Join(allow, "node1"), nodeText, 0o644)
	srvCert, _ := zcert.Load(srv)
	otherCert, _ := zcert.Load(other)

	// Flag errors.
	src := t.TempDir()
	p := writeRandom(t, src, "app.conf", 200<<10)
	if code, _, stderr := run(t, "zsend", "--curve-secret", srv+"_secret", p); code != 2 || !strings.Contains(stderr, "--allow") {
		t.Fatalf("--curve-secret alone: exit %d, %q", code, stderr)
	}
	// --curve-secret also takes the public path when PATH_secret is beside it.
	ep, log := zsendCurveProc(t, "--curve-secret", srv, "--allow", allow, p)
	out := t.TempDir()
	fetchArgs := func(extra ...string) []string {
		return append(append([]string{"-q", "-o", out}, extra...), ep, "app.conf")
	}

	if code, _, stderr := run(t, "zrecv", fetchArgs("--server-key", srv, "--curve-secret", node+"_secret")...); code != 0 {
		t.Fatalf("listed key: exit %d: %s", code, stderr)
	}
	sameFile(t, p, filepath.Join(out, "app.conf"))
	os.Remove(filepath.Join(out, "app.conf"))
	// The key as a Z85 string instead of a file.
	if code, _, stderr := run(t, "zrecv", fetchArgs("--server-key", srvCert.Public.String(), "--curve-secret", node+"_secret")...); code != 0 {
		t.Fatalf("Z85 server key: exit %d: %s", code, stderr)
	}
	os.Remove(filepath.Join(out, "app.conf"))

	for _, c := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"wrong server key", fetchArgs("--server-key", other, "--curve-secret", node+"_secret"), 8, "server key mismatch"},
		{"unlisted client key", fetchArgs("--server-key", srv, "--curve-secret", other+"_secret"), 9, otherCert.Fingerprint()},
		{"no CURVE", fetchArgs(), 8, "requires CURVE"},
		{"secret without server key", fetchArgs("--curve-secret", node+"_secret"), 2, "--server-key"},
		{"bad server key", fetchArgs("--server-key", "not-a-key"), 2, "--server-key"},
	} {
		start := time.Now()
		code, _, stderr := run(t, "zrecv", c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("%s: exit %d (want %d), stderr %q (want %q)", c.name, code, c.code, stderr, c.msg)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v", c.name, d)
		}
	}
	if got := entries(t, out); len(got) != 0 {
		t.Fatalf("refused fetches left %v", got)
	}
	eventually(t, 5*time.Second, "zsend logs the refused key by fingerprint", func() bool {
		return strings.Contains(log.String(), "key:"+otherCert.Fingerprint()) && strings.Contains(log.String(), "curve-refused")
	})
	if !strings.Contains(log.String(), srvCert.Fingerprint()) {
		t.Errorf("zsend did not print its key's fingerprint: %s", log.String())
	}

	// --acl: node1 may fetch other.txt only.
	aclPath := filepath.Join(keys, "acl")
	os.WriteFile(aclPath, []byte("# test\nnode1 other.txt\n"), 0o644)
	ep3, log3 := zsendCurveProc(t, "--curve-secret", srv+"_secret", "--allow", allow, "--acl", aclPath, p)
	code, _, stderr = run(t, "zrecv", "-q", "-o", out, "--server-key", srv, "--curve-secret", node+"_secret", ep3, "app.conf")
	if code != 3 || !strings.Contains(stderr, "not allowed") {
		t.Fatalf("--acl refusal: exit %d, %q", code, stderr)
	}
	nodeCert, _ := zcert.Load(node)
	eventually(t, 5*time.Second, "zsend logs the session's key", func() bool {
		return strings.Contains(log3.String(), "with key "+nodeCert.Fingerprint())
	})

	// --allow-any warns.
	_, log2 := zsendCurveProc(t, "--curve-secret", srv+"_secret", "--allow-any", p)
	if !strings.Contains(log2.String(), "WARNING") {
		t.Errorf("--allow-any printed no warning: %s", log2.String())
	}
}

// TestCurveCertsPyzmq: certificates written by pyzmq's zmq.auth are read
// by zcert, and ours by pyzmq.
// TestCurveBackendsMix: a zsend sealing with x/crypto (ZSND_NO_LIBSODIUM)
// and a zrecv with libsodium (when it loads), then the reverse, move a
// file of several chunks byte for byte; zsend says which one it uses.
func TestCurveBackendsMix(t *testing.T) {
	keys := t.TempDir()
	allow := filepath.Join(keys, "allow")
	os.Mkdir(allow, 0o755)
	srv, node := filepath.Join(keys, "server"), filepath.Join(allow, "node1")
	for _, c := range [][]string{{"zsend", "--keygen", srv}, {"zrecv", "--keygen", node}} {
		if code, _, stderr := run(t, c[0], c[1:]...); code != 0 {
			t.Fatalf("%v: exit %d: %s", c, code, stderr)
		}
	}
	os.Rename(node+"_secret", filepath.Join(keys, "node1_secret"))
	p := writeRandom(t, t.TempDir(), "big.bin", 5<<20+123)
	for _, c := range []struct{ server, client, want string }{
		{"1", "", "x/crypto"},
		{"", "1", sender.CurveBackend()},
	} {
		t.Setenv("ZSND_NO_LIBSODIUM", c.server)
		ep, log := zsendCurveProc(t, "--curve-secret", srv+"_secret", "--allow", allow, p)
		t.Setenv("ZSND_NO_LIBSODIUM", c.client)
		out := t.TempDir()
		if code, _, stderr := run(t, "zrecv", "-q", "-o", out, "--server-key", srv, "--curve-secret", filepath.Join(keys, "node1_secret"), ep, "big.bin"); code != 0 {
			t.Fatalf("server ZSND_NO_LIBSODIUM=%q, client %q: exit %d: %s", c.server, c.client, code, stderr)
		}
		sameFile(t, p, filepath.Join(out, "big.bin"))
		if !strings.Contains(log.String(), "boxes by "+c.want) {
			t.Errorf("zsend with ZSND_NO_LIBSODIUM=%q does not say it uses %s: %s", c.server, c.want, log.String())
		}
	}
}

func TestCurveCertsPyzmq(t *testing.T) {
	pyNeedZMQ(t)
	dir := t.TempDir()
	ours := newCert(t)
	if err := ours.Save(filepath.Join(dir, "ours")); err != nil {
		t.Fatal(err)
	}
	script := `
import sys, zmq.auth
pub, sec = zmq.auth.create_certificates(sys.argv[1], "theirs")
p, s = zmq.auth.load_certificate(sys.argv[1] + "/ours_secret")
print(p.decode(), s.decode())
`
	out, err := exec.Command(pySystemPython, "-c", script, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || f[0] != ours.Public.String() || f[1] != ours.Secret.String() {
		t.Fatalf("pyzmq read our certificate as %q", out)
	}
	theirs, err := zcert.LoadSecret(filepath.Join(dir, "theirs.key_secret"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := zcert.ParsePublic(filepath.Join(dir, "theirs.key"))
	if err != nil || pub != theirs.Public {
		t.Fatalf("pyzmq public certificate: %v %v", pub, err)
	}
}
