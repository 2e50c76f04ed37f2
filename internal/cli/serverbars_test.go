package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/zsend/zsend/sender"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServerBars(t *testing.T) {
	var out syncBuffer
	b := NewServerBars(&out)
	ev := func(kind, session string, size, n int64) bool {
		return b.Event(sender.Event{Kind: kind, Peer: "node", Session: session, Name: "f.bin", Size: size, Sent: n, Offset: n})
	}
	if ev("session-open", "a", 0, 0) {
		t.Fatal("a session line is the caller's to print")
	}
	if !ev("file-start", "a", 1000, 0) || !ev("file-start", "b", 1000, 500) || !ev("progress", "a", 1000, 400) {
		t.Fatal("transfer events must be drawn, not logged")
	}
	if len(b.order) != 2 {
		t.Fatalf("%d bars in progress, want 2", len(b.order))
	}
	b.Log("zsend: hello")
	ev("file-sent", "a", 1000, 0)
	ev("session-close", "b", 0, 0) // b vanishes mid-transfer
	b.Stop()
	if len(b.bars) != 0 || len(b.order) != 0 {
		t.Fatalf("%d bars left after every transfer ended", len(b.bars))
	}
	for _, want := range []string{"node f.bin", "100.00%", "50.00%", "zsend: hello"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q: %q", want, out.String())
		}
	}
	if ev("error", "a", 0, 0) {
		t.Fatal("errors must be printed")
	}
}
