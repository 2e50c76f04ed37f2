package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// A server slow to answer HELLO (longer than several heartbeats): the
// control client (STATUS, follow mode's session) sends no PING before
// WELCOME, which would be at version 1 in what becomes a version 2
// session (a real server drops the session for it), and proceeds once
// WELCOME comes.
func TestControlSendsNothingBeforeWelcome(t *testing.T) {
	var mu sync.Mutex
	var early []string // PINGs sent at version 1, i.e. before WELCOME
	ep := rawServerWith(t, rawOptions{
		helloDelay: 600 * time.Millisecond, // six heartbeats of the client
		seen: func(m protocol.Message, v uint8) {
			if _, ping := m.(*protocol.Ping); ping && v != protocol.Version2 {
				mu.Lock()
				early = append(early, "PING at version 1")
				mu.Unlock()
			}
		},
		reply: func(m protocol.Message) []protocol.Message {
			if s, ok := m.(*protocol.Status); ok {
				return []protocol.Message{&protocol.End{Request: s.Request}}
			}
			return nil
		},
	})
	cfg := receiver.Config{Endpoint: ep, OutputDir: t.TempDir(), Timeout: 5 * time.Second,
		Heartbeat: 200 * time.Millisecond, PeerTimeout: 3 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := receiver.Status(ctx, cfg, ""); err != nil {
		t.Fatalf("STATUS against a slow WELCOME: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(early) > 0 {
		t.Fatalf("the client sent %v before WELCOME", early)
	}
}
