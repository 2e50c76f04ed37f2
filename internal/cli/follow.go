package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/zsend/zsend/internal/cpuload"
	"github.com/zsend/zsend/internal/metrics"
	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// NewLogger makes the slog logger of --log-format: "text" (default) or
// "json", written to w.
func NewLogger(w io.Writer, format string, quiet bool) (*slog.Logger, error) {
	level := slog.LevelInfo
	if quiet {
		level = slog.LevelWarn
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// governor is the process's thread governor (package cpuload). It reads
// /proc/loadavg, or the file ZSND_LOADAVG names (for tests: a load the
// machine does not have on demand).
var governor = sync.OnceValue(func() *cpuload.Governor {
	if p := os.Getenv("ZSND_LOADAVG"); p != "" {
		return cpuload.New(p)
	}
	return cpuload.New("/proc/loadavg")
})

// AdjustThreads limits this process to one thread while every core of the
// machine is busy, and lifts the limit otherwise (package cpuload); zrecv
// calls it as each sync of a tree starts.
func AdjustThreads() bool { return governor().Adjust() }

// Follow runs zrecv --follow until ctx ends, logging through log, and
// returns the exit code (0 after SIGINT/SIGTERM).
func Follow(ctx context.Context, cfg mirror.FollowConfig, metricsAddr string, log *slog.Logger) int {
	var prom *metrics.Follower
	if metricsAddr != "" {
		reg := metrics.NewRegistry()
		prom = metrics.NewFollower(reg)
		addr, err := metrics.Serve(ctx, metricsAddr, reg)
		if err != nil {
			log.Error("metrics", "err", err.Error())
			return ExitUsage
		}
		log.Info("metrics", "url", "http://"+addr+"/metrics")
	}
	inner := cfg.Events // a relay's (package relay)
	cfg.Events = func(e mirror.FollowEvent) {
		if inner != nil {
			inner(e)
		}
		if prom != nil {
			prom.Event(e)
		}
		attrs := []any{"event", e.Kind}
		if e.Kind == "syncing" {
			AdjustThreads()
			attrs = append(attrs, "threads", runtime.GOMAXPROCS(0))
		}
		if e.Tree != "" {
			attrs = append(attrs, "tree", e.Tree)
		}
		if e.Seq != 0 {
			attrs = append(attrs, "seq", e.Seq, "version", e.Version.Short())
		}
		if e.Kind == "switched" && !e.Time.IsZero() {
			// The rename itself: the record is logged later, once the
			// sync has pruned and the hooks have run.
			attrs = append(attrs, "switched_at", e.Time)
		}
		if e.Hook != nil {
			attrs = append(attrs, "hook_exit", e.Hook.Exit, "hook_ms", e.Hook.Duration.Milliseconds())
			if e.Hook.Err != nil {
				attrs = append(attrs, "hook_output", e.Hook.Output)
			}
		}
		if e.Err != nil {
			attrs = append(attrs, "err", e.Err.Error())
		}
		msg := e.Message
		if msg == "" {
			msg = e.Kind
		}
		switch e.Kind {
		case "failed":
			log.Error(msg, attrs...)
		case "disconnected", "note":
			log.Warn(msg, attrs...)
		default:
			log.Info(msg, attrs...)
		}
	}
	log.Info("following", "endpoint", cfg.Receiver.Endpoint, "trees", cfg.Trees, "out", cfg.Out, "node", cfg.Node)
	if err := mirror.Follow(ctx, cfg); err != nil {
		log.Error("follow", "err", err.Error())
		return ExitUsage
	}
	log.Info("stopped")
	return ExitOK
}

// ReportSync tells the server the outcome of a one-shot sync of a tree
// (zrecv ENDPOINT TREE). A failure to report is a warning, never the
// command's failure.
func ReportSync(ctx context.Context, cfg receiver.Config, node string, res mirror.Result, syncErr error, took time.Duration, stderr io.Writer) {
	if node == "" {
		node, _ = os.Hostname()
	}
	if node == "" || len(node) > protocol.MaxNodeLen || !utf8.ValidString(node) {
		fmt.Fprintf(stderr, "zrecv: warning: node name %q cannot be reported (1 to %d octets of UTF-8)\n", node, protocol.MaxNodeLen)
		return
	}
	r := protocol.Report{Node: node, Tree: res.Tree, State: protocol.StateSwitched, Seq: res.Seq,
		Version: protocol.Hash(res.Version), SyncMS: uint32(took / time.Millisecond)}
	if syncErr != nil {
		r.State, r.Seq, r.Version = protocol.StateFailed, 0, protocol.Hash{}
		r.Error = clipText(syncErr.Error(), protocol.MaxTextLen)
	}
	cfg.Timeout = 5 * time.Second
	cfg.Progress = nil
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := receiver.Report(rctx, cfg, r); err != nil {
		fmt.Fprintln(stderr, "zrecv: warning: reporting to the server:", err)
	}
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n]
}
