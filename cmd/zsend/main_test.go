package main

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/sender"
)

func TestLogLine(t *testing.T) {
	client := "node-7[" + cli.ShortSession("0a0b") + "]"
	for _, c := range []struct {
		e    sender.Event
		want string
	}{
		{sender.Event{Kind: "error", Peer: "node-7", Session: "0a0b", Name: "app/app.conf", Message: "source file changed while being sent"},
			"zsend: " + client + ": app/app.conf: source file changed while being sent"},
		{sender.Event{Kind: "session-open", Peer: "node-7", Session: "0a0b"}, "zsend: " + client + " connected"},
		{sender.Event{Kind: "session-close", Peer: "node-7\x1b[2J", Session: "0a0b", Message: "receiver said bye: ok \x1b[31mdone"},
			`zsend: node-7\x1b[2J[` + cli.ShortSession("0a0b") + `] disconnected: receiver said bye: ok \x1b[31mdone`},
		{sender.Event{Kind: "refused", Peer: "node-7", Session: "0a0b", Name: "x", Message: "404 not found: not served here"},
			"zsend: " + client + `: refused x: 404 not found: not served here`},
		{sender.Event{Kind: "progress"}, ""},
	} {
		got := logLine(c.e)
		if got != c.want {
			t.Errorf("logLine(%+v) = %q, want %q", c.e, got, c.want)
		}
		if strings.ContainsRune(got, 0x1b) {
			t.Errorf("raw ESC in %q", got)
		}
	}
}

// zsend collects garbage at a GC percent of 50 (README: its heap is mostly
// the published manifests), unless the user set GOGC.
func TestGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	setGCPercent("200") // the user's GOGC: left to the runtime, which read it
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("with GOGC set, the GC percent became %d", got)
	}
	setGCPercent("")
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("without GOGC, the GC percent is %d, want %d", got, gcPercent)
	}
}
