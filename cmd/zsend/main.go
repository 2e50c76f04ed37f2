// Command zsend serves files over ZeroMQ to zrecv clients, under
// credit-based flow control, with every chunk hashed with BLAKE3.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/zsend/zsend/internal/acl"
	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/sender"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `zsend serves files over ZeroMQ to zrecv clients. Each PATH is served under
its base name; a directory also serves the files below it as DIR/REL/PATH.
It serves until SIGINT or SIGTERM, then tells clients it is going away so
they reconnect and resume.

Usage:
  zsend [flags] PATH...

Examples:
  zsend big.iso                                 serve on tcp://127.0.0.1:5555
  zsend -b tcp://0.0.0.0:5555 /srv/releases     serve a directory on all interfaces
  zsend -b ipc:///run/zsend.sock /etc/hosts     serve on a Unix socket
  zsend --json -b 'tcp://[::1]:5555' a b        NDJSON session events on stdout
  zsend --keygen /etc/zsend/server              write a CURVE key pair and exit
  zsend --curve-secret /etc/zsend/server_secret --allow /etc/zsend/clients /srv
                                                encrypted; only listed client keys

Flags:
`

func main() {
	ctx, stop := cli.SignalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
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
		curveSecret = fs.String("curve-secret", "", "CURVE: this server's secret certificate; turns CURVE on and makes it mandatory")
		allowDir    = fs.String("allow", "", "CURVE: directory of authorized client public certificates (re-read when it changes)")
		allowAny    = fs.Bool("allow-any", false, "CURVE: accept any client key (encrypted, but anyone may fetch)")
		aclFile     = fs.String("acl", "", "CURVE: access list FILE: which client key may fetch which names (format in README)")
		keygen      = fs.String("keygen", "", "write a new CURVE key pair to PATH and PATH_secret (mode 0600), print the public key and exit")
	)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, `
Exit codes:
  0  clean shutdown after SIGINT/SIGTERM
  1  the server failed while serving
  2  usage error (bad flags, unreadable PATH, endpoint in use)
`)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return cli.ExitOK
		}
		fmt.Fprintf(stderr, "zsend: %v (see zsend --help)\n", err)
		return cli.ExitUsage
	}
	if *showVer {
		fmt.Fprintf(stdout, "zsend %s (protocol ZSND/1)\n", version)
		return cli.ExitOK
	}
	if *keygen != "" {
		return cli.Keygen("zsend", *keygen, stdout, stderr)
	}
	curve, code := curveConfig(*curveSecret, *allowDir, *allowAny, stderr)
	if code != cli.ExitOK {
		return code
	}
	if *aclFile != "" {
		if curve == nil {
			fmt.Fprintln(stderr, "zsend: --acl needs --curve-secret (the list is keyed by client keys)")
			return cli.ExitUsage
		}
		list, err := acl.Open(*aclFile)
		if err != nil {
			fmt.Fprintln(stderr, "zsend: --acl:", err)
			return cli.ExitUsage
		}
		list.OnReload = func(n int, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "zsend: --acl: keeping the previous list: %v\n", err)
				return
			}
			fmt.Fprintf(stderr, "zsend: %s: reloaded, rules for %d key(s)\n", *aclFile, n)
		}
		curve.Access = func(k [32]byte, name string) bool { return list.Allowed(k, name) }
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "zsend: nothing to serve: give at least one PATH (see zsend --help)")
		return cli.ExitUsage
	}
	cs, err := cli.ParseSize(*chunk)
	if err != nil {
		fmt.Fprintln(stderr, "zsend: --chunk-size:", err)
		return cli.ExitUsage
	}
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	var bars *cli.ServerBars
	if !*quiet && cli.IsTerminal(stderr) {
		bars = cli.NewServerBars(stderr)
		defer bars.Stop()
	}
	events := func(e sender.Event) {
		mu.Lock()
		defer mu.Unlock()
		if *jsonOut && e.Kind != "progress" {
			enc.Encode(map[string]any{"event": e.Kind, "time": time.Now().UTC().Format(time.RFC3339Nano), "peer": e.Peer,
				"session": e.Session, "key": e.Key, "name": e.Name, "size": e.Size, "offset": e.Offset, "blake3": hashString(e), "message": e.Message})
		}
		if *quiet && e.Kind != "error" {
			return
		}
		if bars != nil && bars.Event(e) {
			return
		}
		line := ""
		switch e.Kind {
		case "file-sent":
			line = fmt.Sprintf("zsend: sent %s (%d bytes, blake3 %s) to %s", e.Name, e.Size, e.Hash, e.Peer)
		case "refused", "error", "curve-refused":
			line = fmt.Sprintf("zsend: %s: %s: %s", e.Peer, e.Kind, e.Message)
		case "session-open":
			line = fmt.Sprintf("zsend: %s connected", e.Peer)
			if e.Key != "" {
				line += " with key " + e.Key
			}
		case "session-close":
			line = fmt.Sprintf("zsend: %s disconnected: %s", e.Peer, e.Message)
		default:
			return
		}
		if bars != nil {
			bars.Log(line) // above the bars, which it would otherwise tear
			return
		}
		fmt.Fprintln(stderr, line)
	}
	srv, err := sender.Listen(ctx, sender.Config{
		Endpoint: *bind, Paths: fs.Args(), ChunkSize: int(cs), MaxSessions: *maxSessions,
		Heartbeat: *heartbeat, PeerTimeout: *peerTO, Events: events, Curve: curve,
	})
	if err != nil {
		fmt.Fprintln(stderr, "zsend:", err)
		return cli.ExitUsage
	}
	if !*quiet {
		fmt.Fprintf(stderr, "zsend: serving %d path(s) on %s\n", fs.NArg(), srv.Endpoint())
		if curve != nil {
			fmt.Fprintf(stderr, "zsend: CURVE on, server key %s (fingerprint %s)\n", zcert.Key(curve.PublicKey), zcert.Fingerprint(curve.PublicKey))
		}
	}
	if ready != nil {
		ready <- srv.Endpoint()
	}
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintln(stderr, "zsend:", err)
		return cli.ExitFailure
	}
	return cli.ExitOK
}

// curveConfig builds the CURVE configuration of the flags; nil when
// CURVE is off.
func curveConfig(secret, allow string, any bool, stderr io.Writer) (*sender.CurveServer, int) {
	if secret == "" {
		if allow != "" || any {
			fmt.Fprintln(stderr, "zsend: --allow and --allow-any need --curve-secret")
			return nil, cli.ExitUsage
		}
		return nil, cli.ExitOK
	}
	cert, err := zcert.LoadSecret(secret)
	if err != nil {
		fmt.Fprintln(stderr, "zsend: --curve-secret:", err)
		return nil, cli.ExitUsage
	}
	cs := &sender.CurveServer{PublicKey: cert.Public, SecretKey: cert.Secret}
	switch {
	case allow != "" && any:
		fmt.Fprintln(stderr, "zsend: give --allow DIR or --allow-any, not both")
		return nil, cli.ExitUsage
	case any:
		fmt.Fprintln(stderr, "zsend: WARNING: --allow-any: every client key is accepted; traffic is encrypted but anyone who can connect may fetch")
		cs.AllowAny = true
	case allow != "":
		store, err := zcert.OpenStore(allow)
		if err != nil {
			fmt.Fprintln(stderr, "zsend: --allow:", err)
			return nil, cli.ExitUsage
		}
		store.OnReload = func(n int, bad []error) {
			fmt.Fprintf(stderr, "zsend: %s: %d authorized client key(s)\n", allow, n)
			for _, e := range bad {
				fmt.Fprintf(stderr, "zsend: %s: skipped: %v\n", allow, e)
			}
		}
		fmt.Fprintf(stderr, "zsend: %s: %d authorized client key(s)\n", allow, store.Len())
		cs.Authorize = func(k [32]byte) bool { return store.Allowed(k) }
	default:
		fmt.Fprintln(stderr, "zsend: --curve-secret needs --allow DIR (authorized client certificates) or --allow-any")
		return nil, cli.ExitUsage
	}
	return cs, cli.ExitOK
}

func hashString(e sender.Event) string {
	if e.Kind != "file-sent" {
		return ""
	}
	return e.Hash.String()
}
