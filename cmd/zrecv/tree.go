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
	return cli.Follow(ctx, mirror.FollowConfig{Receiver: cfg, Out: cfg.OutputDir, Trees: trees, Keep: tf.keep,
		LockWait: tf.lockWait, Node: tf.node, Check: tf.check, Exec: tf.exec, RollbackOnFailure: tf.rollbackOnFailure,
		HookTimeout: tf.hookTimeout}, tf.metrics, log)
}

// tryTree mirrors name if the server publishes a tree of that name. done
// is false when name should be fetched as a file (the server does not
// serve trees, or has no such tree).
func tryTree(ctx context.Context, cfg receiver.Config, name string, tf treeFlags, quiet bool, js io.Writer, stderr io.Writer) (int, bool) {
	tree := strings.TrimRight(name, "/")
	if mirror.ValidTree(tree) != nil {
		return 0, false
	}
	lc := cfg
	if _, err := os.Stat(lc.OutputDir); err != nil {
		lc.OutputDir = os.TempDir() // List writes nothing; the directory is checked later
	}
	if _, err := receiver.List(ctx, lc, tree); err != nil {
		if errors.Is(err, receiver.ErrNotFound) || errors.Is(err, receiver.ErrNoTrees) {
			return 0, false
		}
		if errors.Is(err, receiver.ErrUnreachable) || ctx.Err() != nil {
			if _, serr := os.Stat(cfg.OutputDir); serr != nil && ctx.Err() == nil {
				return 0, false // the file fetch reports the missing output directory (a usage error)
			}
			fmt.Fprintln(stderr, "zrecv:", cli.Printable(err.Error()))
			return cli.TreeExitCode(err), true
		}
		return 0, false // let the file fetch report it
	}
	if tf.keep < 1 {
		fmt.Fprintln(stderr, "zrecv: --keep must be at least 1")
		return cli.ExitUsage, true
	}
	if _, err := os.Stat(cfg.OutputDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(cfg.OutputDir, 0o755); err != nil {
			fmt.Fprintln(stderr, "zrecv: creating the output directory:", err)
			return cli.ExitFailure, true
		}
		fmt.Fprintf(stderr, "zrecv: created the output directory %s\n", cfg.OutputDir)
	}
	rep := cli.NewTreeReporter(stderr, js, quiet)
	mc := mirror.Config{Receiver: cfg, Out: cfg.OutputDir, Tree: tree, Keep: tf.keep, Verify: tf.verify,
		LockWait: tf.lockWait, Events: rep.Event}
	start := time.Now()
	res, err := mirror.Sync(ctx, mc)
	if ctx.Err() == nil && !errors.Is(err, receiver.ErrUnreachable) {
		cli.ReportSync(ctx, cfg, tf.node, res, err, time.Since(start), stderr)
	}
	code := cli.TreeExitCode(err)
	rep.Done(res, err, code)
	return code, true
}

func rollback(args []string, out string, quiet bool, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "zrecv: --rollback takes one TREE (and -o DIR)")
		return cli.ExitUsage
	}
	tree := strings.TrimRight(args[0], "/")
	dir, err := mirror.Rollback(out, tree)
	if err != nil {
		fmt.Fprintln(stderr, "zrecv: rollback:", err)
		if errors.Is(err, mirror.ErrNoPrevious) {
			return cli.ExitNotFound
		}
		return cli.ExitFailure
	}
	if !quiet {
		fmt.Fprintf(stderr, "%s now shows %s\n", filepath.Join(out, tree), filepath.Base(dir))
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
		fmt.Fprintln(stderr, "zrecv: --list:", err)
		return cli.TreeExitCode(err)
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TREE\tSEQ\tVERSION\tENTRIES\tBYTES")
	for _, t := range trees {
		fmt.Fprintf(w, "%s\t%d\t%x\t%d\t%d\n", t.Name, t.Seq, t.Version[:6], t.Entries, t.Bytes)
	}
	w.Flush()
	return cli.ExitOK
}
