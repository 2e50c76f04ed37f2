package cli

import (
	"context"
	"fmt"
	"testing"

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
