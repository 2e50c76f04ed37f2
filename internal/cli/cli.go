// Package cli holds what the zsend and zrecv commands share: exit codes,
// the signal-cancelled context, size parsing, terminal detection, and the
// drawing of progress (pb/v3 bars on a terminal, NDJSON for scripts). The
// libraries only count progress; drawing it happens here.
package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit codes, documented in README.md and in each command's --help.
const (
	ExitOK          = 0   // every file verified and in place / clean shutdown
	ExitFailure     = 1   // any other failure (local I/O: disk full, permission denied, ...)
	ExitUsage       = 2   // bad flags or arguments
	ExitNotFound    = 3   // a name was not found or was refused
	ExitUnreachable = 4   // the server could not be reached, or went away, within --timeout
	ExitVerify      = 5   // data failed BLAKE3 verification beyond the retry budget
	ExitProtocol    = 6   // the peer broke the protocol or speaks another version
	ExitTooSlow     = 7   // verified data came slower than --min-rate, or --deadline passed
	ExitServerKey   = 8   // CURVE: the server does not hold the pinned key, or security mechanisms differ
	ExitKeyRefused  = 9   // CURVE: the server refused this client's key
	ExitInterrupted = 130 // SIGINT/SIGTERM; partial state kept for resume
)

// ExitCodeHelp is the table printed by --help.
const ExitCodeHelp = `Exit codes:
  0    every file verified and in place
  1    other failure (local I/O such as a full disk or permission denied)
  2    usage error
  3    a name was not found or was refused by the server
  4    server unreachable, or lost for longer than --timeout without data verified
  5    verification failed (BLAKE3 mismatch beyond the retry budget)
  6    protocol error (incompatible or misbehaving peer)
  7    too slow: less than --min-rate verified, or --deadline passed
  8    server key mismatch: the server does not hold the key given with
       --server-key (or CURVE is on one side only)
  9    the server refused this client's CURVE key
  130  interrupted (partial state kept: run the same command to resume)
`

// SignalContext is cancelled by SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// ParseSize reads "1048576", "512K", "8M", "1G" (binary multiples).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	t = strings.TrimSuffix(t, "I")
	mult := uint64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 || n > math.MaxUint64/mult {
		return 0, fmt.Errorf("invalid size %q (examples: 65536, 512K, 8M)", s)
	}
	return n * mult, nil
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// WantsJSON reports whether args ask for --json, for a command line that
// failed to parse (pflag stops at the first bad flag, maybe before it), so
// that even a usage error is reported as a JSON event.
func WantsJSON(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}
