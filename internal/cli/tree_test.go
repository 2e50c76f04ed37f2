package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
)

func TestTreeExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{fmt.Errorf("x: %w", mirror.ErrBadManifest), ExitProtocol},
		{fmt.Errorf("%w: %w", mirror.ErrBadManifest, receiver.ErrVerify), ExitVerify},
		{fmt.Errorf("x: %w", mirror.ErrMismatch), ExitVerify},
		{fmt.Errorf("x: %w", mirror.ErrNotTree), ExitNotFound},
		{receiver.ErrNoTrees, ExitNotFound},
		{fmt.Errorf("x: %w", receiver.ErrUnreachable), ExitUnreachable},
		{fmt.Errorf("x: %w", mirror.ErrLocked), ExitFailure},
		{context.Canceled, ExitInterrupted},
	} {
		if got := TreeExitCode(c.err); got != c.want {
			t.Errorf("%v: exit %d, want %d", c.err, got, c.want)
		}
	}
}

// --json prints a progress line every 500 ms however often progress events
// come (they once reset the clock without printing, so a steady stream of
// events 100 ms apart printed only the first line).
func TestTreeJSONProgressSteady(t *testing.T) {
	var out bytes.Buffer
	r := NewTreeReporter(io.Discard, &out, true)
	t0 := time.Unix(1700000000, 0)
	for i := 0; i < 30; i++ { // 3 s of events, 100 ms apart
		r.Event(mirror.Event{Kind: mirror.EventProgress, Time: t0.Add(time.Duration(i) * 100 * time.Millisecond), FilesDone: i, FilesTotal: 30})
	}
	if n := strings.Count(out.String(), `"event":"progress"`); n < 5 || n > 7 {
		t.Errorf("%d progress lines over 3 s of events 100 ms apart, want 6:\n%s", n, out.String())
	}
}
