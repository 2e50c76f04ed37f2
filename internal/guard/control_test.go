package guard

// Control tests: the same hostile peers against plain zmq4 "tcp://"
// endpoints, showing that each guard test would fail without the guard.
// The crashing ones run in a child process.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

const helperEnv = "GUARD_TEST_CRASH_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		crashHelper(mode)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashHelper runs a plain zmq4 ROUTER and attacks it with one raw client.
// It prints SURVIVED if the process is still alive a second later.
func crashHelper(mode string) {
	r := zmq4.NewRouter(context.Background(), zmq4.WithLogger(quiet))
	if err := r.Listen("tcp://127.0.0.1:0"); err != nil {
		panic(err)
	}
	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		panic(err)
	}
	switch mode {
	case "huge-frame":
		c.Write(append(nullGreeting[:], ready("Socket-Type", "DEALER")...))
		c.Write(binary.BigEndian.AppendUint64([]byte{flagLong}, 1<<62))
	case "bad-ready":
		c.Write(append(nullGreeting[:], frame(flagCommand, []byte("\x05READY\x0bSocket-Type"))...))
	default:
		panic("unknown mode " + mode)
	}
	time.Sleep(time.Second)
	fmt.Println("SURVIVED")
}

func runCrashHelper(t *testing.T, mode string) {
	if testing.Short() {
		t.Skip("control test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if err == nil || bytes.Contains(out, []byte("SURVIVED")) {
		t.Fatalf("plain zmq4 survived %s (err %v); output:\n%s", mode, err, out)
	}
	first, _, _ := bytes.Cut(out, []byte("\n\n"))
	t.Logf("plain zmq4 crashed (%v): %s", err, first)
}

func TestControlPlainHugeFrameCrashes(t *testing.T) { runCrashHelper(t, "huge-frame") }

func TestControlPlainMalformedReadyCrashes(t *testing.T) { runCrashHelper(t, "bad-ready") }

func TestControlPlainIdleClientBlocksAccept(t *testing.T) {
	if testing.Short() {
		t.Skip("control test")
	}
	_, ep := startRouter(t, context.Background(), "tcp://127.0.0.1:0")
	idle := rawDial(t, ep)
	time.Sleep(20 * time.Millisecond)

	d := zmq4.NewDealer(context.Background(), zmq4.WithLogger(quiet))
	defer d.Close()
	dialed := make(chan error, 1)
	go func() { dialed <- d.Dial(ep) }()
	select {
	case err := <-dialed:
		t.Fatalf("plain zmq4 accepted a DEALER while a client was idle (err %v)", err)
	case <-time.After(time.Second):
		t.Log("plain zmq4: DEALER handshake still blocked after 1s by one idle client")
	}
	idle.Close() // unblocks zmq4's accept loop
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
}

func TestControlPlainStuckReaderBlocksRouter(t *testing.T) {
	if testing.Short() {
		t.Skip("control test")
	}
	router, ep := startRouter(t, context.Background(), "tcp://127.0.0.1:0")
	stuck := rawDial(t, ep) // a DEALER that never reads
	rawHandshake(t, stuck, "stuck")
	healthy := startDealer(t, context.Background(), ep, "healthy")
	for _, send := range []func(){
		func() { stuck.Write(frame(0, []byte("hello"))) },
		func() { healthy.Send(zmq4.NewMsgString("hello")) },
	} {
		send()
		if _, err := recvTimeout(router, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	flooded := make(chan struct{})
	var floods atomic.Int64 // messages the flooder has sent
	go func() {
		defer close(flooded)
		payload := make([]byte, 1<<20)
		for range 1000 {
			if router.Send(zmq4.NewMsgFrom([]byte("stuck"), payload)) != nil {
				return
			}
			floods.Add(1)
		}
	}()
	// Frozen means no progress, not a slow probe: on a loaded machine a
	// send can wait 50ms behind a 1 MiB write that is still going, while
	// the stuck peer's buffers are not full yet.
	eventually(t, 10*time.Second, "router frozen", func() bool {
		before := floods.Load()
		return stalledFor(router, 200*time.Millisecond) && floods.Load() == before
	})
	sent := make(chan error, 1)
	go func() { sent <- router.Send(zmq4.NewMsgFrom([]byte("healthy"), []byte("x"))) }()
	select {
	case <-sent:
		t.Fatal("plain zmq4 sent to the healthy DEALER while another one was stuck")
	case <-time.After(time.Second):
		t.Log("plain zmq4: send to the healthy DEALER still blocked after 1s")
	}
	stuck.Close() // the write fails and releases the router
	<-flooded
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
