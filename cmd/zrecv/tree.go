package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zsend/zsend/internal/cli"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

type treeFlags struct {
	keep     int
	rollback bool
	list     bool
	verify   bool
	lockWait time.Duration

	follow            bool
	node              string
	check, exec       string
	rollbackOnFailure bool
	hookTimeout       time.Duration
	logFormat         string
	metrics           string

	// Relay (--follow --serve).
	serve                   string
	serveSecret, serveAllow string
	serveACL                string
	serveAllowAny           bool
	// rateLimit is --rate-limit, parsed: for a relay (--follow --serve),
	// the bytes per second its server sends to its children, all
	// together (sender.Config.RateLimit); 0: no limit.
	rateLimit int64
}

func follow(ctx context.Context, args []string, cfg receiver.Config, tf treeFlags, quiet bool, stderr io.Writer) int {
	log, err := cli.NewLogger(stderr, tf.logFormat, quiet)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv:", err)
		return cli.ExitUsage
	}
	var trees []string
	for _, a := range args[1:] {
		trees = append(trees, strings.TrimRight(a, "/"))
	}
	fcfg := mirror.FollowConfig{Receiver: cfg, Out: cfg.OutputDir, Trees: trees, Keep: tf.keep,
		LockWait: tf.lockWait, Node: tf.node, Check: tf.check, Exec: tf.exec, RollbackOnFailure: tf.rollbackOnFailure,
		HookTimeout: tf.hookTimeout}
	if tf.serve == "" {
		return cli.Follow(ctx, fcfg, tf.metrics, log)
	}
	curve, err := cli.ServerCurve(cli.ServerCurveFlags{Prog: "zrecv",
		Names:  [4]string{"--serve-secret", "--serve-allow", "--serve-allow-any", "--serve-acl"},
		Secret: tf.serveSecret, Allow: tf.serveAllow, AllowAny: tf.serveAllowAny, ACL: tf.serveACL}, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv:", err, "(see zrecv --help)")
		return cli.ExitUsage
	}
	// The relay's server keeps what the follower keeps on disk.
	scfg := sender.Config{Endpoint: tf.serve, Curve: curve, Heartbeat: cfg.Heartbeat, KeepVersions: tf.keep, RateLimit: tf.rateLimit}
	if tf.node != "" {
		scfg.Name = tf.node
	}
	return cli.Relay(ctx, fcfg, scfg, tf.metrics, log)
}

// tryTree mirrors name if the server publishes a tree of that name. done
// is false when name should be fetched as a file (the server does not
// serve trees, or has no such tree). A failure before the sync starts is
// returned as err, for the caller to report.
func tryTree(ctx context.Context, cfg receiver.Config, name string, tf treeFlags, quiet bool, js io.Writer, stderr io.Writer, onReconnect func(receiver.Event)) (int, bool, error) {
	tree := strings.TrimRight(name, "/")
	if mirror.ValidTree(tree) != nil {
		return 0, false, nil
	}
	lc := cfg
	lc.Progress = onReconnect // "connecting to ...", with the cause, while the server is unreachable
	_, statErr := os.Stat(cfg.OutputDir)
	if statErr != nil {
		// List writes nothing. Without an output directory only a tree
		// can succeed (it creates it): do not make the user wait the whole
		// --timeout to learn that the directory is missing.
		lc.OutputDir = os.TempDir()
		lc.Timeout = min(lc.Timeout, 2*time.Second)
		lc.Progress = nil // a short probe: its failure is reported as the missing directory
	}
	// A node that already mirrors the tree (OUT/.zsnd/TREE) skips the
	// probe: the sync's own LIST answers the same question; if the name
	// is no longer a tree there, it is fetched as a file, as after a
	// probe.
	mirrored := false
	if statErr == nil {
		fi, err := os.Lstat(filepath.Join(cfg.OutputDir, ".zsnd", tree))
		mirrored = err == nil && fi.IsDir()
	}
	var err error
	if !mirrored {
		_, err = receiver.List(ctx, lc, tree)
	}
	if err != nil {
		if statErr == nil && (errors.Is(err, receiver.ErrUnreachable) || ctx.Err() != nil) {
			err = deadlineCause(ctx, err)
			return cli.TreeExitCode(err), true, err
		}
		if errors.Is(statErr, os.ErrNotExist) && errors.Is(err, receiver.ErrUnreachable) {
			// Say both: the directory is missing (fine for a tree, which
			// creates it) and the server did not answer the short probe.
			return cli.ExitUnreachable, true, fmt.Errorf("the output directory %s does not exist (a tree sync creates it), and %s did not answer within %v to say whether %q is a tree: %w",
				cli.Printable(cfg.OutputDir), cli.Printable(cfg.Endpoint), lc.Timeout, tree, err)
		}
		return 0, false, nil // a file, or let the file fetch report it
	}
	if tf.keep < 1 {
		return cli.ExitUsage, true, errors.New("--keep must be at least 1")
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if err := os.MkdirAll(cfg.OutputDir, 0o755); err != nil {
			return cli.ExitFailure, true, fmt.Errorf("creating the output directory: %w", err)
		}
		if !quiet {
			fmt.Fprintf(stderr, "zrecv: created the output directory %s\n", cli.Printable(cfg.OutputDir))
		}
	}
	rep := cli.NewTreeReporter(stderr, js, quiet)
	mc := mirror.Config{Receiver: cfg, Out: cfg.OutputDir, Tree: tree, Keep: tf.keep, Verify: tf.verify,
		LockWait: tf.lockWait, Events: rep.Event}
	start := time.Now()
	cli.AdjustThreads()
	res, err := mirror.Sync(ctx, mc)
	if mirrored && (errors.Is(err, mirror.ErrNotTree) || errors.Is(err, receiver.ErrNoTrees)) {
		return 0, false, nil // not a tree (any more): a file, or let the file fetch report it
	}
	err = deadlineCause(ctx, err)
	if ctx.Err() == nil && !errors.Is(err, receiver.ErrUnreachable) {
		cli.ReportSync(ctx, cfg, tf.node, res, err, time.Since(start), stderr)
	}
	code := cli.TreeExitCode(err)
	rep.Done(res, err, code)
	return code, true, nil
}

// deadlineCause replaces the error of an operation that --deadline cut
// short by the deadline's own error (receiver.ErrTooSlow: exit 7).
func deadlineCause(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, receiver.ErrTooSlow) && !errors.Is(err, receiver.ErrTooSlow) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}

func rollback(args []string, out string, quiet bool, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "zrecv: --rollback takes one TREE (and -o DIR)")
		return cli.ExitUsage
	}
	tree := strings.TrimRight(args[0], "/")
	dir, err := mirror.Rollback(out, tree)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv: rollback:", cli.Printable(err.Error()))
		if errors.Is(err, mirror.ErrNoPrevious) {
			return cli.ExitNotFound
		}
		return cli.ExitFailure
	}
	if !quiet {
		fmt.Fprintf(stderr, "%s now shows %s\n", cli.Printable(filepath.Join(out, tree)), filepath.Base(dir))
	}
	return cli.ExitOK
}

func list(ctx context.Context, args []string, cfg receiver.Config, stdout, stderr io.Writer) int {
	tree := ""
	if len(args) == 2 {
		tree = strings.TrimRight(args[1], "/")
	}
	trees, err := receiver.List(ctx, cfg, tree)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv: --list:", cli.Printable(err.Error()))
		return cli.TreeExitCode(err)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TREE\tSEQ\tVERSION\tENTRIES\tBYTES")
	for _, t := range trees {
		fmt.Fprintf(w, "%s\t%d\t%x\t%d\t%d\n", cli.Printable(t.Name), t.Seq, t.Version[:6], t.Entries, t.Bytes)
	}
	w.Flush()
	return cli.ExitOK
}
