// Command zrecv fetches files from a zsend server, verifies every chunk and
// every file with BLAKE3, and puts each file in place atomically.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/receiver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `zrecv fetches files from a zsend server over ZeroMQ, verifying every chunk
and every file with BLAKE3. A file appears under its name only once it has
been fully verified; an interrupted fetch resumes when run again.

Usage:
  zrecv [flags] ENDPOINT NAME...

Examples:
  zrecv tcp://127.0.0.1:5555 big.iso            fetch big.iso into .
  zrecv -o /srv/conf tcp://cfg1:5555 app.conf   fetch into /srv/conf
  zrecv --json tcp://[::1]:5555 a b c > log     NDJSON events for scripts
  zrecv ipc:///run/zsend.sock etc/hosts         a file below a served directory
  zrecv --keygen ~/.curve/node1                 write a CURVE key pair and exit
  zrecv --server-key /etc/zrecv/server --curve-secret ~/.curve/node1_secret \
        tcp://cfg1:5555 app.conf                 encrypted, server key pinned

Flags:
`

func main() {
	ctx, stop := cli.SignalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("zrecv", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		out       = fs.StringP("output", "o", ".", "directory to write into (must exist)")
		timeout   = fs.DurationP("timeout", "t", 30*time.Second, "give up when the server is unreachable for this long")
		quiet     = fs.BoolP("quiet", "q", false, "no progress or per-file lines on stderr")
		jsonOut   = fs.Bool("json", false, "write NDJSON events to stdout (start, progress, file-done, error, summary)")
		noResume  = fs.Bool("no-resume", false, "discard partial files of earlier attempts and start over")
		window    = fs.String("window", "8M", "initial credit window (grows automatically on long links)")
		maxWindow = fs.String("max-window", "64M", "largest credit window: the receive memory budget")
		heartbeat = fs.Duration("heartbeat", 2*time.Second, "interval between heartbeats")
		peerTO    = fs.Duration("peer-timeout", 10*time.Second, "a server silent this long is considered gone")
		showVer   = fs.Bool("version", false, "print the version and exit")
		serverKey = fs.String("server-key", "", "CURVE: the server's public key (40-char Z85 or a certificate file); turns CURVE on")
		curveSec  = fs.String("curve-secret", "", "CURVE: this client's secret certificate (default: a fresh key per run)")
		keygen    = fs.String("keygen", "", "write a new CURVE key pair to PATH and PATH_secret (mode 0600), print the public key and exit")
	)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+cli.ExitCodeHelp)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return cli.ExitOK
		}
		fmt.Fprintf(stderr, "zrecv: %v (see zrecv --help)\n", err)
		return cli.ExitUsage
	}
	if *showVer {
		fmt.Fprintf(stdout, "zrecv %s (protocol ZSND/1)\n", version)
		return cli.ExitOK
	}
	if *keygen != "" {
		return cli.Keygen("zrecv", *keygen, stdout, stderr)
	}
	var curve *receiver.CurveClient
	if *serverKey != "" {
		k, err := zcert.ParsePublic(*serverKey)
		if err != nil {
			fmt.Fprintln(stderr, "zrecv: --server-key:", err)
			return cli.ExitUsage
		}
		curve = &receiver.CurveClient{ServerKey: k}
		if *curveSec != "" {
			cert, err := zcert.LoadSecret(*curveSec)
			if err != nil {
				fmt.Fprintln(stderr, "zrecv: --curve-secret:", err)
				return cli.ExitUsage
			}
			curve.PublicKey, curve.SecretKey = cert.Public, cert.Secret
		}
	} else if *curveSec != "" {
		fmt.Fprintln(stderr, "zrecv: --curve-secret needs --server-key")
		return cli.ExitUsage
	}
	if fs.NArg() < 2 {
		fmt.Fprintln(stderr, "zrecv: need an ENDPOINT and at least one NAME (see zrecv --help)")
		return cli.ExitUsage
	}
	win, err := cli.ParseSize(*window)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv: --window:", err)
		return cli.ExitUsage
	}
	maxWin, err := cli.ParseSize(*maxWindow)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv: --max-window:", err)
		return cli.ExitUsage
	}
	var js io.Writer
	if *jsonOut {
		js = stdout
	}
	rep := cli.NewReporter(stderr, js, *quiet)
	cfg := receiver.Config{
		Endpoint: fs.Arg(0), OutputDir: *out, Timeout: *timeout, NoResume: *noResume,
		Window: win, MaxWindow: maxWin, Heartbeat: *heartbeat, PeerTimeout: *peerTO,
		Progress: rep.Event, Curve: curve,
	}
	start := time.Now()
	results, err := receiver.Fetch(ctx, cfg, fs.Args()[1:]...)
	code := cli.ExitCodeFor(err)
	if results == nil && err != nil {
		// Configuration error before any transfer.
		fmt.Fprintln(stderr, "zrecv:", err)
		code = cli.ExitUsage
	}
	rep.Summary(results, time.Since(start), code)
	return code
}
