package integration

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// keypair writes a CURVE key pair with zrecv --keygen and returns the
// public certificate's path (the secret one is PATH_secret).
func keypair(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if code, _, errs := run(t, "zrecv", "--keygen", p); code != 0 {
		t.Fatalf("keygen %s: exit %d: %s", name, code, errs)
	}
	return p
}

// allowDir makes a directory holding the given public certificates.
func allowDir(t *testing.T, dir, name string, pubs ...string) string {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range pubs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, filepath.Base(p)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// The binaries, as a user runs them: root zsend with CURVE -> relay
// (zrecv --follow --serve, a CURVE client towards the root and a CURVE
// server towards its children) -> leaf. Every version reaches the leaf
// byte for byte; a child whose key the relay does not allow gets nothing;
// the relay logs what it serves.
func TestRelayCurveCLI(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1\n")
	writeRandom(t, src, "blob.bin", 1<<20+5)

	rootKey := keypair(t, dir, "root")
	relayClient := keypair(t, dir, "relay-client")
	relayServer := keypair(t, dir, "relay-server")
	leafKey := keypair(t, dir, "leaf")
	strangerKey := keypair(t, dir, "stranger")
	operatorKey := keypair(t, dir, "operator")

	root := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"), "--watch",
		"--curve-secret", rootKey+"_secret", "--allow", allowDir(t, dir, "root-allow", relayClient, operatorKey), src)
	relayEP := "ipc://" + filepath.Join(dir, "relay.sock")
	relayOut := filepath.Join(dir, "out-relay")
	relay := startFollowerProc(t, root.ep, relayOut, "relay1", "--serve", relayEP,
		"--server-key", rootKey, "--curve-secret", relayClient+"_secret",
		"--serve-secret", relayServer+"_secret", "--serve-allow", allowDir(t, dir, "relay-allow", leafKey),
		"--rate-limit", "512K")
	leafOut := filepath.Join(dir, "out-leaf")
	leafStart := time.Now()
	leaf := startFollowerProc(t, relayEP, leafOut, "leaf1", "--server-key", relayServer, "--curve-secret", leafKey+"_secret")
	strangerOut := filepath.Join(dir, "out-stranger")
	stranger := startFollowerProc(t, relayEP, strangerOut, "stranger", "--server-key", relayServer, "--curve-secret", strangerKey+"_secret")

	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{relay, leaf, stranger} {
				p.kill()
			}
			t.Logf("relay log:\n%s\nleaf log:\n%s\nroot log:\n%s", relay.log, leaf.log, root.log)
		}
	})
	waitUntil(t, 30*time.Second, "leaf on v1", nodeOn(t, src, leafOut, "app"))
	// The relay's --rate-limit 512K: v1 (1 MiB and a bit) cannot reach the
	// leaf faster than (size - burst) / rate = 1 s (lower bound only).
	if took := time.Since(leafStart); took < 800*time.Millisecond {
		t.Errorf("leaf had v1 after %v through a relay limited to 512 KiB/s", took)
	}
	writeFile(t, filepath.Join(src, "app.conf"), "v2\n")
	waitUntil(t, 30*time.Second, "leaf on v2", nodeOn(t, src, leafOut, "app"))
	if ok, why := nodeOn(t, src, relayOut, "app")(); !ok {
		waitUntil(t, 10*time.Second, "relay on v2 ("+why+")", nodeOn(t, src, relayOut, "app"))
	}
	// The operator sees the whole tree at the CURVE root (the leaf through
	// the relay) with its own key; without CURVE it gets nothing.
	code, out, errs := statusWait(t, root.ep, 20*time.Second, "--min-nodes", "2", "--server-key", rootKey, "--curve-secret", operatorKey+"_secret")
	if code != 0 || !strings.Contains(out, "leaf1") || !strings.Contains(out, "relay1") {
		t.Fatalf("zsend --status with CURVE keys: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs := statusWait(t, root.ep, 3*time.Second); code == 0 {
		t.Fatalf("zsend --status without keys against a CURVE root: exit 0\n%s%s", out, errs)
	}
	// The stranger's key is refused at the relay's handshake: nothing.
	if _, err := os.Lstat(filepath.Join(strangerOut, "app")); err == nil {
		t.Fatal("a child with a key the relay does not allow got the tree")
	}
	for _, p := range []*proc{leaf, stranger, relay} {
		if err := p.stop(t); err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	}
	if log := relay.log.String(); !strings.Contains(log, "relay serving") || !strings.Contains(log, "serving version") {
		t.Errorf("relay log lacks its serving lines:\n%s", log)
	}
}

// A relay SIGKILLed while a child is fetching from it: the child, given
// both relays (--follow ENDPOINT1,ENDPOINT2), moves to the other one
// within the peer timeout, finishes there, and its stable path never
// shows anything but a complete published version.
func TestRelayKilledMidTransferCLI(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1\n")
	writeRandom(t, src, "big.bin", 6<<20)
	want := b3(t, filepath.Join(src, "big.bin"))

	root := startZsendFleet(t, "-b", "tcp://127.0.0.1:0", "--state-dir", filepath.Join(dir, "state"), "--watch", src)
	r1EP := "ipc://" + filepath.Join(dir, "r1.sock")
	r2EP := "ipc://" + filepath.Join(dir, "r2.sock")
	// relay1 is slow (1 MiB/s), so the child is mid-transfer when it dies.
	r1 := startFollowerProc(t, root.ep, filepath.Join(dir, "out-r1"), "relay1", "--serve", r1EP, "--rate-limit", "1M")
	r2 := startFollowerProc(t, root.ep, filepath.Join(dir, "out-r2"), "relay2", "--serve", r2EP)
	waitUntil(t, 30*time.Second, "relay1 on v1", nodeOn(t, src, filepath.Join(dir, "out-r1"), "app"))
	waitUntil(t, 30*time.Second, "relay2 on v1", nodeOn(t, src, filepath.Join(dir, "out-r2"), "app"))

	leafOut := filepath.Join(dir, "out-leaf")
	stop := make(chan struct{})
	watched := make(chan string, 1)
	go func() { // the stable path: absent, or the whole verified file
		bad := ""
		for n := 0; n < 6000; n++ {
			select {
			case <-stop:
				watched <- bad
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := os.ReadFile(filepath.Join(leafOut, "app", "big.bin"))
			if err != nil {
				continue // not there yet
			}
			if got := blake3.Sum256(b); hex.EncodeToString(got[:]) != want && bad == "" {
				bad = fmt.Sprintf("the stable path showed big.bin with BLAKE3 %x", got[:8])
			}
		}
		watched <- bad
	}()
	leaf := startFollowerProc(t, r1EP+","+r2EP, leafOut, "leaf1")
	t.Cleanup(func() {
		if t.Failed() {
			leaf.kill()
		}
	})
	// Mid-transfer: 6 MiB at 1 MiB/s takes about 5 s; kill after 1.5 s.
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Lstat(filepath.Join(leafOut, "app")); err == nil {
		t.Fatal("the leaf finished before relay1 was killed: the test proves nothing")
	}
	r1.kill()
	waitUntil(t, 30*time.Second, "leaf on v1 through relay2", nodeOn(t, src, leafOut, "app"))

	writeFile(t, filepath.Join(src, "app.conf"), "v2\n")
	waitUntil(t, 30*time.Second, "leaf on v2 through relay2", nodeOn(t, src, leafOut, "app"))
	close(stop)
	if bad := <-watched; bad != "" {
		t.Fatal(bad)
	}
	if err := leaf.stop(t); err != nil {
		t.Errorf("leaf exit: %v", err)
	}
	if log := leaf.log.String(); !strings.Contains(log, r2EP) {
		t.Errorf("the leaf's log never names relay2:\n%s", log)
	}
	r2.stop(t)
}
