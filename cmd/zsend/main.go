// Command zsend serves files over ZeroMQ to zrecv clients, under
// credit-based flow control, with every chunk hashed with BLAKE3.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/internal/endpoint"
	"github.com/zsend/zsend/internal/metrics"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `zsend serves files over ZeroMQ to zrecv clients. Each PATH is served under
its base name; a directory also serves the files below it as DIR/REL/PATH.
It serves until SIGINT or SIGTERM, then tells clients it is going away so
they reconnect and resume.

Each directory is also published as a tree: a version (manifest of every
entry, id = its BLAKE3) with a sequence number that only grows, kept with
a copy of its files in the state directory, so a node (zrecv ENDPOINT TREE)
gets exactly what was published even while the directory is edited. A new
version is published at start, on SIGHUP, and with --watch whenever the
tree changes. Devices, sockets and FIFOs are skipped and reported;
symlinks are published as symlinks, never followed.

Usage:
  zsend [flags] PATH...
  zsend --status ENDPOINT [--json] [--wait [--min-nodes N] [--timeout D]]   the fleet: who runs which version
        [--server-key KEY --curve-secret CERT]             (a CURVE server: its key, the operator's key)

Nodes that follow trees (zrecv --follow) and one-shot tree syncs report to
the server; --status prints, per tree, the latest version and per node the
relay it reports through (VIA; - if direct), its version, how far behind
it is, its state, when it was last seen and its hook result, then a
summary line. Relays (zrecv --follow --serve) forward their children's
reports, so the root shows the whole tree. --wait polls until every live
node runs the latest version of every tree (a deploy gate); --min-nodes N
also waits for N of them per tree (nodes not yet reported are not counted). With --barrier,
followers stage each new version and switch together when the server says
so: once every live follower of the tree has staged it (or --quorum N of
them), or at --barrier-timeout, when those that have staged switch and the
others stay on their version (shown behind, and logged). The server names
the instant to switch at, --switch-delay after its decision, so that every
node switches at once whatever order its message went out in.

Examples (zrecv --help fetches from each):
  zsend big.iso                                 serve big.iso on tcp://127.0.0.1:5555
  zsend -b tcp://0.0.0.0:5555 /etc/app          serve a directory (app/...) on all interfaces
  zsend -b ipc:///run/zsend.sock /etc/hosts     serve /etc/hosts as "hosts" on a Unix socket
  zsend --json -b 'tcp://[::1]:5555' a b c      NDJSON events on stdout
  zsend --watch /etc/myapp                      publish a new version of tree "myapp" on every change
  zsend --state-dir /srv/zsend-state /etc/myapp keep published versions in /srv/zsend-state
  zsend --rate-limit 100M /srv/releases         send at most 100 MiB/s, all clients together
  kill -HUP $(pidof zsend)                      publish now (rescan every tree)
  zsend --keygen /etc/zsend/server              write a CURVE key pair and exit
  zsend --curve-secret /etc/zsend/server_secret --allow /etc/zsend/clients /srv/releases
                                                encrypted; only listed client keys may connect

The fleet:
  zsend --status tcp://cfg1:5555                       who runs which version
  zsend --status tcp://cfg1:5555 --wait --timeout 2m   deploy gate: exit 0 once every live node has the latest

Flags:
`

func main() {
	// Most of zsend's heap is the published manifests, which live as long
	// as their versions; the default GOGC of 100 lets garbage grow to as
	// much again before a collection. 50 holds the peak RSS of a tree of
	// 10^5 entries to about 42 MiB instead of 50 (same speed, measured).
	// A GOGC set by the user wins.
	setGCPercent(os.Getenv("GOGC"))
	ctx, stop := cli.SignalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// gcPercent is zsend's GC percent (see main).
const gcPercent = 50

// setGCPercent sets gcPercent unless the user set GOGC (its value).
func setGCPercent(gogc string) {
	if gogc == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// run serves until ctx is done. ready, if not nil, receives the bound
// endpoint once the socket is listening (tests use it).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) int {
	fs := pflag.NewFlagSet("zsend", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		bind        = fs.StringP("bind", "b", "tcp://127.0.0.1:5555", "endpoint to serve on: tcp://HOST:PORT or ipc://PATH")
		chunk       = fs.String("chunk-size", "1M", "chunk size proposed to clients (4K..4M)")
		quiet       = fs.BoolP("quiet", "q", false, "log nothing but errors")
		jsonOut     = fs.Bool("json", false, "write NDJSON session events to stdout")
		maxSessions = fs.Int("max-sessions", 256, "most concurrent client sessions")
		heartbeat   = fs.Duration("heartbeat", 2*time.Second, "interval between heartbeats to idle clients")
		peerTO      = fs.Duration("peer-timeout", 10*time.Second, "drop a client silent for this long")
		showVer     = fs.Bool("version", false, "print the version and exit")
		stateDir    = fs.String("state-dir", sender.DefaultStateDir(), "where published versions are kept (store, manifests, sequence numbers); '' publishes no versions (plain file serving, no copies)")
		watch       = fs.Bool("watch", false, "publish a new version whenever a served directory changes (and rescan every 60s)")
		keep        = fs.Int("keep-versions", sender.DefaultKeepVersions, "versions of each tree kept (older ones are removed, with their unreferenced files)")
		status      = fs.Bool("status", false, "print the fleet table of the zsend at ENDPOINT and exit")
		serverKey   = fs.String("server-key", "", "with --status: the CURVE server's public key (40-char Z85 or a certificate file); --curve-secret is then the operator's client certificate")
		wait        = fs.Bool("wait", false, "with --status: wait until every live node runs the latest version of every tree")
		minNodes    = fs.Int("min-nodes", 0, "with --status --wait: also wait until at least N live nodes run the latest version of every tree")
		timeout     = fs.Duration("timeout", 0, "with --status: give up after this long (default 30s to connect; --wait: forever)")
		barrier     = fs.Bool("barrier", false, "followers stage each new version and switch together on the server's SWITCH")
		quorum      = fs.Int("quorum", 0, "with --barrier: switch once this many live followers have staged (default: all)")
		barrierTO   = fs.Duration("barrier-timeout", 30*time.Second, "with --barrier: switch those that have staged after this long")
		switchDelay = fs.Duration("switch-delay", sender.DefaultSwitchDelay, "with --barrier: the nodes switch this long after the decision, at one instant (0: at once; at most 10s)")
		lostAfter   = fs.Duration("lost-after", 30*time.Second, "a node not heard from for this long is shown lost")
		maxNodes    = fs.Int("max-nodes", 10000, "most nodes in the fleet table (a lost one is evicted to make room)")
		metricsAddr = fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100)")
		logFormat   = fs.String("log-format", "text", "log format on stderr: text (lines) or json (log/slog records)")
		curveSecret = fs.String("curve-secret", "", "CURVE: this server's secret certificate; turns CURVE on and makes it mandatory")
		allowDir    = fs.String("allow", "", "CURVE: directory of authorized client public certificates (re-read when it changes)")
		allowAny    = fs.Bool("allow-any", false, "CURVE: accept any client key (encrypted, but anyone may fetch)")
		aclFile     = fs.String("acl", "", "CURVE: access list FILE: which client key may fetch which names (format in README)")
		keygen      = fs.String("keygen", "", "write a new CURVE key pair to PATH and PATH_secret (mode 0600), print the public key and exit")
		rateLimit   = fs.String("rate-limit", "0", "most bytes/s of file data sent, all clients together (K, M, G = 1024 multiples: 100M = 100 MiB/s; at least 4K); 0: no limit")
	)
	fs.Usage = func() {
		// Only --help calls this (errors are reported below): help that
		// was asked for goes to stdout, so that it can be paged.
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, usage)
		fs.PrintDefaults()
		fmt.Fprint(stdout, `
Exit codes:
  0  clean shutdown after SIGINT/SIGTERM
  1  the server failed while serving
  2  usage error (bad flags, bad endpoint, unreadable PATH, endpoint in use)
`+cli.StatusExitHelp)
	}
	parseErr := fs.Parse(args)
	if errors.Is(parseErr, pflag.ErrHelp) {
		return cli.ExitOK
	}
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	jsonOn := *jsonOut || (parseErr != nil && cli.WantsJSON(args))
	emit := func(fields map[string]any) {
		if jsonOn {
			fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
			enc.Encode(fields)
		}
	}
	fail := func(code int, format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		fmt.Fprintln(stderr, "zsend: "+cli.Printable(msg))
		mu.Lock()
		emit(map[string]any{"event": "error", "message": msg, "exit_code": code})
		mu.Unlock()
		return code
	}
	if parseErr != nil {
		return fail(cli.ExitUsage, "%v (see zsend --help)", parseErr)
	}
	if *showVer {
		fmt.Fprintf(stdout, "zsend %s (protocol ZSND/1, versions %d..%d)\n", version, protocol.MinVersion, protocol.MaxVersion)
		return cli.ExitOK
	}
	if *status {
		if fs.NArg() != 1 {
			return fail(cli.ExitUsage, "--status takes one ENDPOINT (see zsend --help)")
		}
		if err := endpoint.Check(fs.Arg(0), false); err != nil {
			return fail(cli.ExitUsage, "%v (see zsend --help)", err)
		}
		if *serverKey == "" && *curveSecret != "" {
			return fail(cli.ExitUsage, "with --status, --curve-secret (the operator's key) needs --server-key")
		}
		if *minNodes < 0 || (*minNodes > 0 && !*wait) {
			return fail(cli.ExitUsage, "--min-nodes N goes with --status --wait, N at least 0")
		}
		curve, err := cli.CurveClient(*serverKey, *curveSecret, fs.Arg(0))
		if err != nil {
			return fail(cli.ExitUsage, "%v", err)
		}
		return cli.Status(ctx, receiver.Config{Endpoint: fs.Arg(0), OutputDir: os.TempDir(), Heartbeat: *heartbeat, Curve: curve},
			cli.StatusOptions{JSON: *jsonOut, Wait: *wait, Timeout: *timeout, MinNodes: *minNodes}, stdout, stderr)
	}
	if *serverKey != "" {
		return fail(cli.ExitUsage, "--server-key is for --status (the server's own key is in --curve-secret)")
	}
	if *keygen != "" {
		return cli.Keygen("zsend", *keygen, stdout, stderr)
	}
	if fs.NArg() == 0 {
		return fail(cli.ExitUsage, "nothing to serve: give at least one PATH (see zsend --help)")
	}
	if err := endpoint.Check(*bind, true); err != nil {
		return fail(cli.ExitUsage, "%v (see zsend --help)", err)
	}
	if *keep < 1 {
		return fail(cli.ExitUsage, "--keep-versions must be at least 1")
	}
	if *switchDelay < 0 || *switchDelay > protocol.MaxSwitchInMS*time.Millisecond {
		return fail(cli.ExitUsage, "--switch-delay must be between 0 and %v", protocol.MaxSwitchInMS*time.Millisecond)
	}
	cs, err := cli.ParseSize(*chunk)
	if err != nil {
		return fail(cli.ExitUsage, "--chunk-size: %v", err)
	}
	rate, err := cli.ParseRateLimit(*rateLimit)
	if err != nil {
		return fail(cli.ExitUsage, "--rate-limit: %v", err)
	}
	var slogger *slog.Logger
	switch *logFormat {
	case "text":
	case "json":
		slogger, _ = cli.NewLogger(stderr, "json", *quiet)
	default:
		return fail(cli.ExitUsage, "--log-format %q: want text or json", *logFormat)
	}
	curve, err := cli.ServerCurve(cli.ServerCurveFlags{Prog: "zsend", Names: [4]string{"--curve-secret", "--allow", "--allow-any", "--acl"},
		Secret: *curveSecret, Allow: *allowDir, AllowAny: *allowAny, ACL: *aclFile}, stderr)
	if err != nil {
		return fail(cli.ExitUsage, "%v", err)
	}
	var bars *cli.ServerBars
	if !*quiet && slogger == nil && cli.IsTerminal(stderr) {
		bars = cli.NewServerBars(stderr)
		defer bars.Stop()
	}
	var srvp atomic.Pointer[sender.Server]
	var prom *metrics.Sender
	if *metricsAddr != "" {
		reg := metrics.NewRegistry()
		prom = metrics.NewSender(reg, srvp.Load)
		addr, err := metrics.Serve(ctx, *metricsAddr, reg)
		if err != nil {
			return fail(cli.ExitUsage, "%v", err)
		}
		switch {
		case slogger != nil:
			slogger.Info("metrics", "url", "http://"+addr+"/metrics")
		case !*quiet:
			fmt.Fprintf(stderr, "zsend: metrics on http://%s/metrics\n", addr)
		}
	}
	events := func(e sender.Event) {
		if prom != nil {
			prom.Event(e)
		}
		mu.Lock()
		defer mu.Unlock()
		// jsonOn first: no map per event (one per file sent) without JSON.
		if jsonOn && e.Kind == "published" {
			emit(map[string]any{"event": e.Kind, "tree": e.Name, "seq": e.Seq, "version": e.Version,
				"entries": e.Entries, "files": e.Files, "bytes": e.Size, "stored": e.Stored})
		} else if jsonOn && e.Kind == "barrier" {
			emit(map[string]any{"event": e.Kind, "tree": e.Name, "seq": e.Seq, "version": e.Version,
				"switch_at": e.At.UTC().Format(time.RFC3339Nano), "message": e.Message})
		} else if jsonOn && e.Kind != "progress" {
			emit(map[string]any{"event": e.Kind, "peer": e.Peer, "session": e.Session, "key": e.Key, "name": e.Name, "size": e.Size,
				"offset": e.Offset, "blake3": hashString(e), "message": e.Message})
		}
		if *quiet && e.Kind != "error" {
			return
		}
		if bars != nil && bars.Event(e) {
			return
		}
		line := logLine(e)
		if line == "" {
			return
		}
		if slogger != nil {
			attrs := []any{"event", e.Kind}
			for k, v := range map[string]string{"name": e.Name, "peer": e.Peer, "session": e.Session, "version": e.Version} {
				if v != "" {
					attrs = append(attrs, k, v)
				}
			}
			if e.Seq != 0 {
				attrs = append(attrs, "seq", e.Seq)
			}
			if e.Kind == "barrier" && !e.At.IsZero() {
				attrs = append(attrs, "switch_at", e.At)
			}
			if e.Kind == "error" {
				slogger.Error(strings.TrimPrefix(line, "zsend: "), attrs...)
			} else {
				slogger.Info(strings.TrimPrefix(line, "zsend: "), attrs...)
			}
			return
		}
		if bars != nil {
			bars.Log(line) // above the bars, which it would otherwise tear
			return
		}
		fmt.Fprintln(stderr, line)
	}
	// SIGHUP: publish now. Caught from here on, so a HUP during the first
	// scan does not kill the process; it publishes once serving starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	srv, err := sender.Listen(ctx, sender.Config{
		Endpoint: *bind, Paths: fs.Args(), ChunkSize: int(cs), MaxSessions: *maxSessions,
		Heartbeat: *heartbeat, PeerTimeout: *peerTO, Events: events,
		StateDir: *stateDir, KeepVersions: *keep, Watch: *watch, Curve: curve,
		Fleet:   sender.FleetConfig{MaxNodes: *maxNodes, LostAfter: *lostAfter},
		Barrier: *barrier, Quorum: *quorum, BarrierTimeout: *barrierTO, SwitchDelay: switchDelayConfig(*switchDelay),
		RateLimit: rate,
	})
	if err != nil {
		return fail(cli.ExitUsage, "%v", err)
	}
	srvp.Store(srv)
	switch {
	case slogger != nil:
		slogger.Info("serving", "paths", fs.NArg(), "endpoint", srv.Endpoint())
	case !*quiet:
		fmt.Fprintf(stderr, "zsend: serving %d path(s) on %s\n", fs.NArg(), srv.Endpoint())
		if curve != nil {
			fmt.Fprintf(stderr, "zsend: CURVE on, server key %s (fingerprint %s), boxes by %s\n", zcert.Key(curve.PublicKey), zcert.Fingerprint(curve.PublicKey), sender.CurveBackend())
		}
	}
	mu.Lock()
	emit(map[string]any{"event": "listening", "endpoint": srv.Endpoint(), "paths": fs.Args()})
	mu.Unlock()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				srv.Publish(ctx) // failures are reported as events
			}
		}
	}()
	if ready != nil {
		ready <- srv.Endpoint()
	}
	if err := srv.Serve(ctx); err != nil {
		return fail(cli.ExitFailure, "%v", err)
	}
	return cli.ExitOK
}

// logLine is the text line for a server event ("" for none). Everything
// from a receiver (peer id, names, messages that quote them) is made
// Printable: a client must not be able to write terminal escapes to the
// operator's screen. A client is named by its peer id and a short session
// id (two receivers may share a peer id).
func logLine(e sender.Event) string {
	client := cli.ClientName(e.Peer, e.Session)
	switch e.Kind {
	case "file-sent":
		return fmt.Sprintf("zsend: sent %s (%d bytes, blake3 %s) to %s", cli.Printable(e.Name), e.Size, e.Hash, client)
	case "refused":
		return fmt.Sprintf("zsend: %s: refused %s: %s", client, cli.Printable(e.Name), cli.Printable(e.Message))
	case "error":
		if e.Peer == "" && e.Session == "" { // publishing, not a session
			return fmt.Sprintf("zsend: error: %s", cli.Printable(e.Message))
		}
		return fmt.Sprintf("zsend: %s: %s: %s", client, cli.Printable(e.Name), cli.Printable(e.Message))
	case "published":
		return fmt.Sprintf("zsend: published %s version %d (%.12s): %d entries, %d files, %d bytes (%d files stored)",
			cli.Printable(e.Name), e.Seq, e.Version, e.Entries, e.Files, e.Size, e.Stored)
	case "skipped":
		return fmt.Sprintf("zsend: skipped %s: %s", cli.Printable(e.Name), cli.Printable(e.Message))
	case "barrier":
		return "zsend: " + cli.Printable(e.Message)
	case "curve-refused":
		return fmt.Sprintf("zsend: %s: curve-refused: %s", client, cli.Printable(e.Message))
	case "session-open":
		if e.Key != "" {
			return fmt.Sprintf("zsend: %s connected with key %s", client, e.Key)
		}
		return fmt.Sprintf("zsend: %s connected", client)
	case "session-close":
		return fmt.Sprintf("zsend: %s disconnected: %s", client, cli.Printable(e.Message))
	}
	return ""

}

func hashString(e sender.Event) string {
	if e.Kind != "file-sent" {
		return ""
	}
	return e.Hash.String()
}

// switchDelayConfig maps --switch-delay to sender.Config.SwitchDelay, where
// 0 is the default and a negative value means none.
func switchDelayConfig(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
