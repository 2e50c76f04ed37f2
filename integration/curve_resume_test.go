package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// Resume and recovery with CURVE: each reconnection is a new handshake
// with new transient keys, and a session survives what a plaintext one
// survives.

func TestCurveReconnectAfterServerRestart(t *testing.T) {
	server, client := newCert(t), newCert(t)
	src := t.TempDir()
	const size = 40 << 20
	p := writeRandom(t, src, "big.bin", size)
	ep := freeTCPEndpoint(t)
	cfg := sender.Config{Endpoint: ep, Paths: []string{p}, ShutdownRetry: 50 * time.Millisecond, Curve: curveServer(server, client)}
	ctxA, stopA := context.WithCancel(context.Background())
	srvA, err := sender.Listen(ctxA, cfg)
	if err != nil {
		t.Fatal(err)
	}
	doneA := make(chan error, 1)
	go func() { doneA <- srvA.Serve(ctxA) }()
	var restarted atomic.Bool
	ev := &events{}
	rcfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 10 * time.Second, Curve: curveClient(server, client),
		Progress: func(e receiver.Event) {
			ev.add(e)
			if e.Kind == receiver.EventProgress && e.Done > size/3 && restarted.CompareAndSwap(false, true) {
				stopA()
				<-doneA
				serve(t, cfg) // same key, new cookie keys and state
			}
		}}
	results, err := fetch(t, rcfg, "big.bin")
	if err != nil {
		t.Fatalf("fetch across a restart: %v", err)
	}
	// Resumed, not started over: what was verified before the restart is
	// kept (Wire counts it, in this run); only the chunks in flight at the
	// restart are received twice (Refetched), never a third of the file.
	r := results[0]
	if !restarted.Load() || ev.count(receiver.EventReconnect) == 0 || r.Wire+r.Reused != size || r.Refetched >= size/3 {
		t.Fatalf("restarted %v, reconnects %d, wire %d reused %d refetched %d of %d", restarted.Load(), ev.count(receiver.EventReconnect), r.Wire, r.Reused, r.Refetched, size)
	}
	sameFile(t, p, results[0].Path)
}

// Corrupted bytes fail the MESSAGE's authentication: the connection is
// closed, the receiver reconnects and resumes, and the file is right.
func TestCurveCorruptionOnTheWire(t *testing.T) {
	server, client := newCert(t), newCert(t)
	p, ep, _ := serveRandom(t, "big.bin", 24<<20, sender.Config{Curve: curveServer(server, client)})
	proxy, pep := proxyTo(t, ep)
	proxy.CorruptDownstream(3<<20, 4)
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Progress: ev.add, Curve: curveClient(server, client)}, "big.bin")
	if err != nil {
		t.Fatalf("fetch through a corrupting proxy: %v", err)
	}
	if ev.count(receiver.EventReconnect) == 0 {
		t.Fatal("no corruption was detected: did the proxy flip anything?")
	}
	sameFile(t, p, results[0].Path)
}

func TestCurveReconnectAfterConnectionsCut(t *testing.T) {
	server, client := newCert(t), newCert(t)
	const size = 40 << 20
	p, ep, _ := serveRandom(t, "big.bin", size, sender.Config{Curve: curveServer(server, client)})
	proxy, pep := proxyTo(t, ep)
	var cut atomic.Int32
	ev := &events{}
	results, err := fetch(t, receiver.Config{Endpoint: pep, OutputDir: t.TempDir(), Curve: curveClient(server, client), Progress: func(e receiver.Event) {
		ev.add(e)
		if e.Kind == receiver.EventProgress && e.Done > int64(cut.Load()+1)*size/4 && cut.Load() < 2 {
			cut.Add(1)
			proxy.Cut()
		}
	}}, "big.bin")
	if err != nil {
		t.Fatalf("fetch across cut connections: %v", err)
	}
	if cut.Load() == 0 || ev.count(receiver.EventReconnect) == 0 {
		t.Fatalf("no reconnect happened (cuts %d)", cut.Load())
	}
	sameFile(t, p, results[0].Path)
}
