package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// A server slow to answer HELLO (longer than several heartbeats): the
// control client (STATUS, follow mode's session) sends nothing before WELCOME,
// in particular no PING at version 1 in what becomes a version 2 session
// (a real server drops the session for it), and proceeds once WELCOME
// comes.
func TestControlSendsNothingBeforeWelcome(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := zmq4.NewRouter(ctx)
	if err := sock.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	var mu sync.Mutex
	var early []string // messages received after HELLO, before WELCOME
	go func() {
		welcomed := false
		for {
			msg, err := sock.Recv()
			if err != nil {
				return
			}
			if len(msg.Frames) < 2 {
				continue
			}
			id := msg.Frames[0]
			m, v, err := protocol.Decode(msg.Frames[1:])
			if err != nil {
				continue
			}
			var out []protocol.Message
			switch m := m.(type) {
			case *protocol.Hello:
				time.Sleep(600 * time.Millisecond) // six heartbeats of the client
				welcomed = true
				out = []protocol.Message{&protocol.Welcome{Version: 2, ChunkSize: 1 << 20, HeartbeatMS: 100, MaxRequests: 16, PeerID: "slow"}}
			case *protocol.Ping:
				out = []protocol.Message{&protocol.Pong{Token: m.Token}}
			case *protocol.Status:
				out = []protocol.Message{&protocol.End{Request: m.Request}}
			}
			if !welcomed {
				mu.Lock()
				early = append(early, m.Command().String())
				mu.Unlock()
			}
			if _, isPing := m.(*protocol.Ping); isPing && v != 2 {
				mu.Lock()
				early = append(early, "PING at version 1")
				mu.Unlock()
			}
			for _, o := range out {
				sock.Send(zmq4.NewMsgFrom(append([][]byte{id}, protocol.Encode(2, o)...)...))
			}
		}
	}()
	cfg := receiver.Config{Endpoint: "tcp://" + sock.Addr().String(), OutputDir: t.TempDir(), Timeout: 5 * time.Second,
		Heartbeat: 200 * time.Millisecond, PeerTimeout: 3 * time.Second}
	lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
	defer lcancel()
	if _, err := receiver.Status(lctx, cfg, ""); err != nil {
		t.Fatalf("STATUS against a slow WELCOME: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(early) > 0 {
		t.Fatalf("the client sent %v before WELCOME", early)
	}
}
