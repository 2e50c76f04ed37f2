package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// rawServer is a ROUTER that answers HELLO with WELCOME at version 2 and
// every other message with what reply returns.
func rawServer(t *testing.T, reply func(m protocol.Message) []protocol.Message) string {
	t.Helper()
	return rawServerWith(t, rawOptions{reply: reply})
}

// rawOptions: reply answers messages other than HELLO and PING; helloDelay
// holds WELCOME back; seen, if set, is told every message decoded, with
// the version its command frame carried.
type rawOptions struct {
	reply      func(m protocol.Message) []protocol.Message
	helloDelay time.Duration
	seen       func(m protocol.Message, version uint8)
	version    uint8 // WELCOME's version; 0: 2
}

func rawServerWith(t *testing.T, o rawOptions) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewRouter(ctx)
	if err := sock.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sock.Close() })
	go func() {
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
			if o.seen != nil {
				o.seen(m, v)
			}
			var out []protocol.Message
			switch m := m.(type) {
			case *protocol.Hello:
				time.Sleep(o.helloDelay)
				v := o.version
				if v == 0 {
					v = 2
				}
				out = []protocol.Message{&protocol.Welcome{Version: v, ChunkSize: 1 << 20, HeartbeatMS: 200, MaxRequests: 16, PeerID: "liar"}}
			case *protocol.Ping:
				out = []protocol.Message{&protocol.Pong{Token: m.Token}}
			default:
				if o.reply != nil {
					out = o.reply(m)
				}
			}
			for _, m := range out {
				v := o.version
				if v == 0 {
					v = 2
				}
				frames := append([][]byte{id}, protocol.Encode(v, m)...)
				sock.Send(zmq4.NewMsgFrom(frames...))
			}
		}
	}()
	return "tcp://" + sock.Addr().String()
}

// A server that lies on the control session (a SWITCH or TREE the node
// never asked for, a STATUS whose END miscounts) ends the session with
// ErrProtocol; nothing is trusted.
func TestControlAgainstLyingServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cases := map[string]func(m protocol.Message) []protocol.Message{
		"switch for another request": func(m protocol.Message) []protocol.Message {
			if l, ok := m.(*protocol.List); ok {
				return []protocol.Message{&protocol.End{Request: l.Request}, &protocol.Switch{Request: 99, Seq: 2, Tree: "app"}}
			}
			return nil
		},
		"tree of another name": func(m protocol.Message) []protocol.Message {
			if l, ok := m.(*protocol.List); ok {
				return []protocol.Message{&protocol.Tree{Request: l.Request, Seq: 1, Name: "other"}}
			}
			return nil
		},
		"tree with a traversal name": func(m protocol.Message) []protocol.Message {
			if l, ok := m.(*protocol.List); ok {
				return []protocol.Message{&protocol.Tree{Request: l.Request, Seq: 1, Name: "../app"}}
			}
			return nil
		},
		"file data on the control session": func(m protocol.Message) []protocol.Message {
			if l, ok := m.(*protocol.List); ok {
				return []protocol.Message{&protocol.File{Request: l.Request, Size: 1, Name: "x"}}
			}
			return nil
		},
	}
	for name, reply := range cases {
		ep := rawServer(t, reply)
		err := receiver.Control(ctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second},
			receiver.ControlConfig{Trees: []string{"app"}})
		if !errors.Is(err, receiver.ErrProtocol) {
			t.Errorf("%s: %v, want ErrProtocol", name, err)
		}
	}
	ep := rawServer(t, func(m protocol.Message) []protocol.Message {
		if s, ok := m.(*protocol.Status); ok {
			return []protocol.Message{&protocol.Fleet{Request: s.Request, State: protocol.StateSwitched, Node: "a", Tree: "app"},
				&protocol.End{Request: s.Request, Size: 5}}
		}
		return nil
	})
	if _, err := receiver.Status(ctx, receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second}, ""); !errors.Is(err, receiver.ErrProtocol) {
		t.Errorf("STATUS with a miscounting END: %v", err)
	}
}
