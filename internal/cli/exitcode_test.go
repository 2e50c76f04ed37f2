package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// Every documented exit code, from the errors Fetch returns (wrapped as it
// wraps them).
func TestExitCodeFor(t *testing.T) {
	wrap := func(err error) error { return &receiver.FileError{Name: "f", Err: fmt.Errorf("context: %w", err)} }
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{wrap(errors.New("disk full")), ExitFailure},
		{wrap(receiver.ErrNotFound), ExitNotFound},
		{wrap(&receiver.RemoteError{Code: protocol.CodeRefused}), ExitNotFound},
		{wrap(receiver.ErrUnreachable), ExitUnreachable},
		{wrap(receiver.ErrVerify), ExitVerify},
		{wrap(receiver.ErrProtocol), ExitProtocol},
		{wrap(&receiver.RemoteError{Code: protocol.CodeVersion}), ExitProtocol},
		{wrap(receiver.ErrTooSlow), ExitTooSlow},
		{wrap(receiver.ErrChanged), ExitFailure},
		{wrap(context.Canceled), ExitInterrupted},
	} {
		if got := ExitCodeFor(c.err); got != c.want {
			t.Errorf("ExitCodeFor(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	for _, code := range []int{ExitOK, ExitFailure, ExitUsage, ExitNotFound, ExitUnreachable, ExitVerify, ExitProtocol, ExitTooSlow, ExitInterrupted} {
		if !strings.Contains(ExitCodeHelp, fmt.Sprintf("\n  %d ", code)) {
			t.Errorf("exit code %d missing from the help", code)
		}
	}
}

// Reconnect lines: the first is told, repeats of the same cause are not, a
// new cause is; JSON carries the endpoint and the attempt.
func TestReporterReconnects(t *testing.T) {
	var log, js bytes.Buffer
	r := NewReporter(&log, &js, false)
	refused := errors.New("connection refused")
	for i, err := range []error{refused, refused, refused, errors.New("no such host")} {
		r.Event(receiver.Event{Kind: receiver.EventReconnect, Endpoint: "tcp://x:1", Attempt: i + 1, Err: err,
			Message: fmt.Sprintf("connecting to tcp://x:1: %v; retrying", err)})
	}
	if got := strings.Count(log.String(), "\n"); got != 2 {
		t.Fatalf("%d lines, want 2 (the first, then the new cause): %q", got, log.String())
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(js.String()), "\n") {
		var ev JSONEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		n++
		if ev.Event != "reconnect" || ev.Endpoint != "tcp://x:1" || ev.Attempt == nil || *ev.Attempt != n || ev.Error == "" {
			t.Errorf("JSON reconnect event %+v", ev)
		}
	}
	if n != 4 {
		t.Fatalf("%d JSON events, want every one (4)", n)
	}
}
