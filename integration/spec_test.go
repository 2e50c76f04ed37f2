package integration

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Promises of PROTOCOL.md that need a server of their own.

// TestSessionLimitProbe: a HELLO that finds the server full makes it PING
// every session and waits for the answers (5.2.2). A slot held by a peer
// that does not answer goes to the new client (the silent session gets
// BYE 408); when every session answers, the new client gets ERROR 429,
// only after its sessions were probed.
func TestSessionLimitProbe(t *testing.T) {
	dir := t.TempDir()
	writeRandom(t, dir, "f", 1000)
	ep, _ := serve(t, sender.Config{Paths: []string{filepath.Join(dir, "f")}, MaxSessions: 1, Heartbeat: 5 * time.Second, PeerTimeout: 20 * time.Second})

	// A silent session: it never answers the probe.
	a := dialZ(t, ep, true)
	a.hello(t, 1<<20)
	b := dialZ(t, ep, true)
	b.send(t, hello())
	if _, ok := a.expect(t, 3*time.Second).(*protocol.Ping); !ok {
		t.Fatal("the full server did not probe its session")
	}
	if m := b.expect(t, 3*time.Second); m.Command() != protocol.CmdWelcome {
		t.Fatalf("HELLO while the only slot was held by a silent peer: %T %+v", m, m)
	}
	if bye, ok := a.expect(t, 3*time.Second).(*protocol.Bye); !ok || bye.Code != protocol.CodeTimeout {
		t.Fatal("the silent session was not told BYE 408")
	}

	// b answers its probe: the next client is refused.
	c := dialZ(t, ep, true)
	sent := time.Now()
	c.send(t, hello())
	ping, ok := b.expect(t, 3*time.Second).(*protocol.Ping)
	if !ok {
		t.Fatal("the full server did not probe its session")
	}
	b.send(t, &protocol.Pong{Token: ping.Token})
	answered := time.Since(sent)
	m := c.expect(t, 3*time.Second)
	if w, ok := m.(*protocol.Welcome); ok {
		// Allowed only if b's answer may have come after the probe time
		// (a loaded machine): then b was dropped, as the spec says.
		if answered < 250*time.Millisecond {
			t.Fatalf("b answered its probe %v after the HELLO, yet the HELLO got %+v", answered, w)
		}
		if bye, ok := b.expect(t, 3*time.Second).(*protocol.Bye); !ok || bye.Code != protocol.CodeTimeout {
			t.Fatal("a slot was given without dropping the slow session")
		}
		t.Logf("b answered %v after the HELLO, too late: dropped, as specified", answered)
		return
	}
	e, ok := m.(*protocol.Error)
	if !ok || e.Code != protocol.CodeTooMany || e.Request != 0 || !strings.Contains(e.Message, "limit of 1 sessions") {
		t.Fatalf("HELLO while the only session is alive: %T %+v", m, m)
	}
	// b keeps its session.
	b.send(t, &protocol.Ping{Token: 42})
	for {
		m := b.expect(t, 3*time.Second)
		if p, ok := m.(*protocol.Pong); ok && p.Token == 42 {
			break
		}
		if m.Command() != protocol.CmdPing {
			t.Fatalf("b after the refusal: %T %+v", m, m)
		}
	}
}

// TestStaleIPCSocketRemoved: a socket file nobody listens on (a crashed
// zsend's) does not stop zsend from binding; a live one does, with an
// error that names the user's endpoint and no internal name.
func TestStaleIPCSocketRemoved(t *testing.T) {
	dir, err := os.MkdirTemp("", "zs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	src := writeRandom(t, dir, "f", 100)

	// Leave a socket file behind, as a killed process would.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("no stale socket: %v", err)
	}
	ep, _ := serve(t, sender.Config{Endpoint: "ipc://" + path, Paths: []string{src}})
	out := t.TempDir()
	if _, err := fetch(t, receiver.Config{Endpoint: ep, OutputDir: out}, "f"); err != nil {
		t.Fatalf("fetch over the re-bound socket: %v", err)
	}

	// A second server on the live socket fails, without internal names.
	_, err = sender.Listen(t.Context(), sender.Config{Endpoint: "ipc://" + path, Paths: []string{src}})
	if err == nil {
		t.Fatal("a second server bound a socket in use")
	}
	if msg := err.Error(); strings.Contains(msg, "guard") || !strings.Contains(msg, "ipc://"+path) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind error %q", msg)
	}
	// A regular file in the way is not removed.
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sender.Listen(t.Context(), sender.Config{Endpoint: "ipc://" + file, Paths: []string{src}}); err == nil {
		t.Fatal("bound over a regular file")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("the regular file was touched: %q %v", b, err)
	}
}
