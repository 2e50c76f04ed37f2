// Command zrecv fetches files from a zsend server, verifies every chunk and
// every file with BLAKE3, and puts each file in place atomically.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/internal/endpoint"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `zrecv fetches files from a zsend server over ZeroMQ, verifying every chunk
and every file with BLAKE3. A file appears under its name only once it has
been fully verified; an interrupted fetch resumes when run again.

Usage:
  zrecv [flags] ENDPOINT NAME...
  zrecv [flags] ENDPOINT TREE            mirror a published tree at DIR/TREE
  zrecv --list ENDPOINT [TREE]           the trees served, their latest version
  zrecv --rollback -o DIR TREE           back to the previous kept version (no network)
  zrecv --follow [-o DIR] ENDPOINT TREE...  keep trees on the latest version until SIGTERM
  zrecv --follow --serve ENDPOINT2 [-o DIR] ENDPOINT TREE...  a relay: also serve them to other zrecv

A NAME that is a tree the server publishes is mirrored: DIR/TREE becomes a
symlink to a complete, verified version, switched atomically; unchanged
files are reused locally, only new and changed ones are fetched.

ENDPOINT may be a comma-separated list of servers of the same content (a
root and its relays): tcp://relay1:5555,tcp://relay2:5555. zrecv starts
with the first and moves to the next, at once, when one cannot be reached,
falls silent, ends the session or (--follow) sends data that fails
verification; the --timeout clock is the same whichever server serves.
With CURVE, --server-key takes one key for all of them or one per endpoint,
comma-separated, in the same order.

Examples (each fetches what the same example in zsend --help serves):
  zrecv tcp://127.0.0.1:5555 big.iso                       fetch big.iso into .
  zrecv -o /srv/conf tcp://cfg1:5555 app/app.conf          a file below a served directory
  zrecv ipc:///run/zsend.sock hosts                        over a Unix socket
  zrecv --json tcp://[::1]:5555 a b c > log                NDJSON events for scripts
  zrecv -o /srv tcp://127.0.0.1:5555 myapp                 mirror tree myapp at /srv/myapp (zsend --watch /etc/myapp)
  zrecv --keygen /etc/zrecv/node1                         write a CURVE key pair and exit
  zrecv --server-key /etc/zrecv/server --curve-secret /etc/zrecv/node1_secret tcp://cfg1:5555 app/app.conf
                                                           encrypted, the server's key pinned

Follow mode:
  zrecv --follow -o /srv --check 'nginx -t -c $ZSND_PATH/nginx.conf' \
        --exec 'systemctl reload nginx' --rollback-on-failure tcp://cfg1:5555 nginx

Relay (serves every version it has verified; nodes below it follow it,
with another relay as failover):
  zrecv --follow --serve tcp://0.0.0.0:5556 --rate-limit 100M -o /srv tcp://cfg1:5555 nginx
  zrecv --follow -o /srv tcp://relay1:5556,tcp://relay2:5556 nginx

Follow mode syncs each TREE to its latest version, then syncs every new
version the server announces (no polling), reconnecting forever. It reports
each change of state to the server (zsend --status shows them) under
--node. Hooks run with /bin/sh -c and get ZSND_TREE, ZSND_VERSION,
ZSND_SEQ, ZSND_PATH (the staged directory for --check, the stable path
for --exec), ZSND_PREV_VERSION, ZSND_PREV_SEQ and ZSND_PHASE (check, exec,
rollback). A version whose hook failed is not retried; the next one is.

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
		out       = fs.StringP("output", "o", ".", "directory to write into (must exist for files; a tree sync creates it)")
		timeout   = fs.DurationP("timeout", "t", 30*time.Second, "give up when the server stays lost this long (counted from the last data verified)")
		minRate   = fs.String("min-rate", "1K", "give up (exit 7) below this many bytes/s verified over --rate-window; 0: no minimum")
		rateWin   = fs.Duration("rate-window", time.Minute, "span --min-rate is averaged over (at least twice --timeout)")
		deadline  = fs.Duration("deadline", 0, "give up (exit 7) when the whole fetch takes longer; 0: no limit")
		quiet     = fs.BoolP("quiet", "q", false, "no progress or per-file lines on stderr")
		jsonOut   = fs.Bool("json", false, "write NDJSON events to stdout (start, progress, file-done, error, summary)")
		noResume  = fs.Bool("no-resume", false, "discard partial files of earlier attempts and start over")
		window    = fs.String("window", "8M", "initial credit window (grows automatically on long links)")
		maxWindow = fs.String("max-window", "64M", "largest credit window: the receive memory budget")
		heartbeat = fs.Duration("heartbeat", 2*time.Second, "interval between heartbeats")
		peerTO    = fs.Duration("peer-timeout", 10*time.Second, "a server silent this long is considered gone")
		showVer   = fs.Bool("version", false, "print the version and exit")
		tf        treeFlags
		serverKey = fs.String("server-key", "", "CURVE: the server's public key (40-char Z85 or a certificate file), or one per ENDPOINT, comma-separated; turns CURVE on")
		curveSec  = fs.String("curve-secret", "", "CURVE: this client's secret certificate (default: a fresh key per run)")
		keygen    = fs.String("keygen", "", "write a new CURVE key pair to PATH and PATH_secret (mode 0600), print the public key and exit")
	)
	fs.IntVar(&tf.keep, "keep", 2, "tree mode: versions kept on disk, the current one included")
	fs.BoolVar(&tf.rollback, "rollback", false, "switch TREE in -o DIR back to the previous kept version (no network)")
	fs.BoolVar(&tf.list, "list", false, "list the trees served at ENDPOINT (or one TREE): latest version, sequence, size")
	fs.BoolVar(&tf.verify, "verify", false, "tree mode: re-hash the current version even when it is the latest")
	fs.BoolVar(&tf.follow, "follow", false, "keep each TREE on the latest version until SIGINT/SIGTERM, reporting to the server")
	fs.StringVar(&tf.node, "node", "", "node name reported to the server (default: the host name)")
	fs.StringVar(&tf.check, "check", "", "follow: command run on each staged version before the switch; failure = no switch")
	fs.StringVar(&tf.exec, "exec", "", "follow: command run after each switch")
	fs.BoolVar(&tf.rollbackOnFailure, "rollback-on-failure", false, "follow: when --exec fails, switch back and run it for the previous version")
	fs.DurationVar(&tf.hookTimeout, "hook-timeout", 30*time.Second, "follow: kill a hook (its process group) after this long")
	fs.StringVar(&tf.logFormat, "log-format", "text", "follow: log format on stderr, text or json")
	fs.StringVar(&tf.metrics, "metrics", "", "follow: serve Prometheus metrics at http://ADDR/metrics")
	fs.StringVar(&tf.serve, "serve", "", "follow: relay: serve every verified version of the TREEs at ENDPOINT (tcp://HOST:PORT, ipc://PATH) to other zrecv")
	fs.StringVar(&tf.serveSecret, "serve-secret", "", "relay: CURVE secret certificate of the relay's server (towards its children); turns CURVE on there")
	fs.StringVar(&tf.serveAllow, "serve-allow", "", "relay: directory of authorized child public certificates")
	fs.BoolVar(&tf.serveAllowAny, "serve-allow-any", false, "relay: accept any child key (encrypted, not authenticated)")
	fs.StringVar(&tf.serveACL, "serve-acl", "", "relay: access list FILE (zsend --acl format) narrowing what the root's access list allows each child key")
	rateLimit := fs.String("rate-limit", "0", "relay (--follow --serve): most bytes/s its server sends to its children, all together (K, M, G = 1024 multiples; at least 4K); 0: no limit")
	fs.DurationVar(&tf.lockWait, "lock-wait", 0, "tree mode: wait this long for another zrecv syncing the same tree (default: fail at once)")
	fs.Usage = func() {
		// Only --help calls this (errors are reported below): help that
		// was asked for goes to stdout, so that it can be paged.
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, usage)
		fs.PrintDefaults()
		fmt.Fprint(stdout, "\n"+cli.ExitCodeHelp)
	}
	start := time.Now()
	parseErr := fs.Parse(args)
	if errors.Is(parseErr, pflag.ErrHelp) {
		return cli.ExitOK
	}
	var js io.Writer
	if *jsonOut || (parseErr != nil && cli.WantsJSON(args)) {
		js = stdout
	}
	rep := cli.NewReporter(stderr, js, *quiet)
	usageErr := func(err error) int {
		rep.Fail(fmt.Errorf("%w (see zrecv --help)", err), cli.ExitUsage)
		rep.Summary(nil, time.Since(start), cli.ExitUsage)
		return cli.ExitUsage
	}
	if parseErr != nil {
		return usageErr(parseErr)
	}
	if *showVer {
		fmt.Fprintf(stdout, "zrecv %s (protocol ZSND/1, versions %d..%d)\n", version, protocol.MinVersion, protocol.MaxVersion)
		return cli.ExitOK
	}
	rl, err := cli.ParseRateLimit(*rateLimit)
	if err != nil {
		return usageErr(fmt.Errorf("--rate-limit: %w", err))
	}
	if rl != 0 && (!tf.follow || tf.serve == "") {
		return usageErr(errors.New("--rate-limit limits a relay's server: it needs --follow --serve"))
	}
	tf.rateLimit = rl
	if *keygen != "" {
		return cli.Keygen("zrecv", *keygen, stdout, stderr)
	}
	if *serverKey == "" && *curveSec != "" {
		return usageErr(errors.New("--curve-secret needs --server-key"))
	}
	curve, err := cli.CurveClient(*serverKey, *curveSec, fs.Arg(0))
	if err != nil {
		return usageErr(err)
	}
	if tf.serve != "" && !tf.follow {
		return usageErr(errors.New("--serve needs --follow (a relay re-serves the trees it follows)"))
	}
	if tf.serve == "" && (tf.serveSecret != "" || tf.serveAllow != "" || tf.serveAllowAny || tf.serveACL != "") {
		return usageErr(errors.New("--serve-secret, --serve-allow, --serve-allow-any and --serve-acl need --serve"))
	}
	if tf.rollback {
		return rollback(fs.Args(), *out, *quiet, stdout, stderr)
	}
	if tf.list {
		if fs.NArg() < 1 || fs.NArg() > 2 {
			return usageErr(errors.New("--list takes an ENDPOINT and at most one TREE"))
		}
		if _, err := endpoint.CheckList(fs.Arg(0)); err != nil {
			return usageErr(err)
		}
		return list(ctx, fs.Args(), receiver.Config{Endpoint: fs.Arg(0), OutputDir: os.TempDir(), Timeout: *timeout,
			Heartbeat: *heartbeat, PeerTimeout: *peerTO, Curve: curve}, stdout, stderr)
	}
	if tf.follow {
		if fs.NArg() < 2 {
			return usageErr(errors.New("--follow needs an ENDPOINT and at least one TREE"))
		}
		if _, err := endpoint.CheckList(fs.Arg(0)); err != nil {
			return usageErr(err)
		}
		if tf.serve != "" {
			if err := endpoint.Check(tf.serve, true); err != nil {
				return usageErr(fmt.Errorf("--serve: %w", err))
			}
		}
		return follow(ctx, fs.Args(), receiver.Config{Endpoint: fs.Arg(0), OutputDir: *out, Timeout: *timeout,
			Heartbeat: *heartbeat, PeerTimeout: *peerTO, Curve: curve}, tf, *quiet, stderr)
	}
	if fs.NArg() < 2 {
		return usageErr(errors.New("need an ENDPOINT and at least one NAME"))
	}
	if _, err := endpoint.CheckList(fs.Arg(0)); err != nil {
		return usageErr(err)
	}
	win, err := cli.ParseSize(*window)
	if err != nil {
		return usageErr(fmt.Errorf("--window: %w", err))
	}
	maxWin, err := cli.ParseSize(*maxWindow)
	if err != nil {
		return usageErr(fmt.Errorf("--max-window: %w", err))
	}
	rate := int64(-1) // no minimum
	if strings.TrimSpace(*minRate) != "0" {
		r, err := cli.ParseSize(*minRate)
		if err != nil {
			return usageErr(fmt.Errorf("--min-rate: %w", err))
		}
		rate = int64(min(r, 1<<62))
	}
	cfg := receiver.Config{
		Endpoint: fs.Arg(0), OutputDir: *out, Timeout: *timeout, NoResume: *noResume,
		Window: win, MaxWindow: maxWin, Heartbeat: *heartbeat, PeerTimeout: *peerTO,
		MinRate: rate, RateWindow: *rateWin, Deadline: *deadline,
		Curve: curve,
	}
	// One failover state for the probe, the sync or fetch and the report:
	// each starts at the server the one before found alive.
	if cfg.Failover, err = receiver.NewFailover(cfg.Endpoint); err != nil {
		return usageErr(err)
	}
	if *deadline > 0 {
		// --deadline bounds the whole command: the probe, every step of a
		// tree sync, or the fetch (which also applies it itself).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, *deadline, fmt.Errorf("%w: the deadline of %v passed", receiver.ErrTooSlow, *deadline))
		defer cancel()
	}
	if fs.NArg() == 2 {
		if code, done, err := tryTree(ctx, cfg, fs.Arg(1), tf, *quiet, js, stderr, func(e receiver.Event) {
			if e.Kind == receiver.EventReconnect {
				rep.Event(e)
			}
		}); done {
			if err != nil {
				rep.Fail(err, code)
				rep.Summary(nil, time.Since(start), code)
			}
			return code
		}
	}
	cfg.Progress = rep.Event
	results, err := receiver.Fetch(ctx, cfg, fs.Args()[1:]...)
	code := cli.ExitCodeFor(err)
	if results == nil && err != nil {
		// Configuration error before any transfer (the output directory).
		code = cli.ExitUsage
		rep.Fail(err, code)
	}
	rep.Summary(results, time.Since(start), code)
	return code
}
