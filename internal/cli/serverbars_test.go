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
	// Many files on one session: one line for the session, never a
	// frozen bar per file.
	for range 50 {
		ev("file-start", "a", 1000, 0)
		if ev("file-sent", "a", 1000, 0) {
			t.Fatal("file-sent is the caller's to log")
		}
		if b.drawn > 2 {
			t.Fatalf("%d lines of bars for 2 clients", b.drawn)
		}
	}
	if len(b.order) != 1 {
		t.Fatalf("%d bars after a's transfers ended, want b's only", len(b.order))
	}
	ev("session-close", "b", 0, 0) // b vanishes mid-transfer
	if len(b.bars) != 0 || b.drawn != 0 {
		t.Fatalf("%d bars, %d lines left after every transfer ended", len(b.bars), b.drawn)
	}
	b.Stop()
	got := out.String()
	for _, want := range []string{"node[" + ShortSession("a") + "] f.bin", "node[" + ShortSession("b") + "] f.bin", "50.00%", "zsend: hello"} {
		if !strings.Contains(got, want) {
			t.Fatalf("output lacks %q: %q", want, got)
		}
	}
	if strings.Contains(got, "100.00%") {
		t.Fatal("a finished bar was printed as a permanent line")
	}
	if !strings.HasSuffix(got, "\x1b[J") {
		t.Fatalf("Stop did not clear the bars: %q", got[max(0, len(got)-40):])
	}
	if ev("error", "a", 0, 0) {
		t.Fatal("errors must be printed")
	}
}

func TestClientName(t *testing.T) {
	if a, b := ClientName("node", "0a0b"), ClientName("node", "0a0c"); a == b || !strings.HasPrefix(a, "node[") {
		t.Fatalf("two sessions of one peer id: %q, %q", a, b)
	}
	if got := ClientName("\x1b[2Jx", "01"); strings.ContainsRune(got, 0x1b) {
		t.Fatalf("raw ESC in %q", got)
	}
}
