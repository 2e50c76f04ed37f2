package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// Exit codes of zsend --status.
const (
	ExitWaitTimeout = 7 // --wait: the fleet did not converge within --timeout
	ExitHookFailed  = 8 // --wait: a live node failed (its sync, check or exec hook)
)

// StatusExitHelp is the table printed by zsend --help for --status.
const StatusExitHelp = `  zsend --status ENDPOINT [--json] [--wait [--timeout D]]:
  0  status printed; with --wait: every live node runs the latest version of every tree
  3  the server serves no trees (it speaks ZSND/1 only)
  4  the server could not be reached within --timeout
  6  protocol error (a misbehaving server)
  7  --wait: not converged within --timeout
  8  --wait: a live node reports a failure (state failed or a failed hook)
`

// StatusOptions configure zsend --status.
type StatusOptions struct {
	JSON    bool
	Wait    bool
	Timeout time.Duration // --wait's bound (and the connection's)
	Every   time.Duration // --wait's polling interval; default 200ms
	// MinNodes (--min-nodes): with Wait, converged also needs at least
	// this many live nodes on the latest version of every tree (nodes that
	// have not reported yet are not in the table: without it, a gate run
	// while followers start passes on those already there).
	MinNodes int
}

// FleetView turns the rows a server sent into each tree's view.
func FleetView(st receiver.FleetStatus, now time.Time) []fleet.TreeStatus {
	byTree := map[string][]fleet.Row{}
	for _, r := range st.Rows {
		row := fleet.Row{Report: fleet.Report{Node: r.Node, Tree: r.Tree, Seq: r.Seq, State: fleet.State(r.State.String()),
			Error: r.Error, SyncTime: r.SyncTime, Parent: r.Parent}, LastSeen: now.Add(-r.Age), Behind: r.Behind, Shown: fleet.State(r.State.String())}
		if r.Version != (protocol.Hash{}) {
			row.Version = hex.EncodeToString(r.Version[:])
		}
		if r.Hook.Name != "" {
			row.Hook = &fleet.Hook{Name: r.Hook.Name, Exit: int(r.Hook.Exit), Output: r.Hook.Output,
				Duration: time.Duration(r.Hook.DurationMS) * time.Millisecond, OK: r.Hook.Exit == 0}
		}
		byTree[r.Tree] = append(byTree[r.Tree], row)
	}
	var out []fleet.TreeStatus
	for _, t := range st.Trees {
		out = append(out, fleet.Summarize(t.Name, fleet.Latest{Seq: t.Seq, Version: hex.EncodeToString(t.Version[:])}, byTree[t.Name]))
	}
	return out
}

// Status runs zsend --status and returns the exit code.
func Status(ctx context.Context, cfg receiver.Config, opt StatusOptions, stdout, stderr io.Writer) int {
	if opt.Every <= 0 {
		opt.Every = 200 * time.Millisecond
	}
	if opt.Timeout > 0 {
		cfg.Timeout = opt.Timeout
	}
	// --timeout bounds the whole command: the poll of a plain --status,
	// every poll of --wait.
	var deadline time.Time
	if opt.Timeout > 0 {
		deadline = time.Now().Add(opt.Timeout)
	}
	lastSummary := ""
	for {
		// With --wait, every poll (its reconnecting included) is bounded
		// by what is left of --timeout, not by a fresh --timeout.
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if !deadline.IsZero() {
			cfg.Timeout = max(time.Until(deadline), time.Millisecond)
			pctx, cancel = context.WithDeadline(ctx, deadline)
		}
		st, err := receiver.Status(pctx, cfg, "")
		expired := errors.Is(pctx.Err(), context.DeadlineExceeded) // before cancel, which would set Canceled
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				fmt.Fprintln(stderr, "zsend: --status:", err)
				return ExitInterrupted
			}
			if expired && opt.Wait {
				fmt.Fprintf(stderr, "zsend: --wait: not converged within %v (the last poll: %v)\n", opt.Timeout, err)
				return ExitWaitTimeout
			}
			if expired {
				fmt.Fprintf(stderr, "zsend: --status: no answer within --timeout %v (%v)\n", opt.Timeout, err)
				return ExitUnreachable
			}
			fmt.Fprintln(stderr, "zsend: --status:", err)
			return TreeExitCode(err)
		}
		now := time.Now()
		view := FleetView(st, now)
		verdict := fleet.GateOf(view)
		if len(view) == 0 {
			verdict = fleet.Pending
		}
		if verdict == fleet.Converged {
			for _, v := range view {
				if v.OnLatest < opt.MinNodes {
					verdict = fleet.Pending
				}
			}
		}
		done := !opt.Wait || verdict != fleet.Pending
		timedOut := !done && !deadline.IsZero() && now.Add(opt.Every).After(deadline)
		if done || timedOut {
			if opt.JSON {
				writeStatusJSON(stdout, view, verdict, now)
			} else {
				writeStatusText(stdout, view, now)
			}
			switch {
			case !opt.Wait:
				return ExitOK
			case verdict == fleet.Converged:
				return ExitOK
			case verdict == fleet.HookFailed:
				fmt.Fprintln(stderr, "zsend: --wait: a node failed")
				return ExitHookFailed
			}
			fmt.Fprintf(stderr, "zsend: --wait: not converged within %v\n", opt.Timeout)
			return ExitWaitTimeout
		}
		if !opt.JSON {
			var sums []string
			for _, v := range view {
				sums = append(sums, v.Summary())
			}
			if s := strings.Join(sums, "; "); s != lastSummary {
				fmt.Fprintln(stderr, "zsend: waiting:", s)
				lastSummary = s
			}
		}
		select {
		case <-ctx.Done():
			return ExitInterrupted
		case <-time.After(opt.Every):
		}
	}
}

func short(v string) string {
	if len(v) > 12 {
		return v[:12]
	}
	if v == "" {
		return "-"
	}
	return v
}

func hookText(h *fleet.Hook) string {
	if h == nil {
		return "-"
	}
	if h.OK {
		return fmt.Sprintf("%s ok (%v)", h.Name, h.Duration.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s exit %d (%v)", h.Name, h.Exit, h.Duration.Round(time.Millisecond))
}

func writeStatusText(w io.Writer, view []fleet.TreeStatus, now time.Time) {
	for i, t := range view {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "tree %s: latest v%d (%s)\n", t.Tree, t.Latest.Seq, short(t.Latest.Version))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tVIA\tVERSION\tBEHIND\tSTATE\tLAST SEEN\tSYNC\tHOOK\tERROR")
		for _, r := range t.Rows {
			ver := "-"
			if r.Version != "" {
				ver = fmt.Sprintf("v%d %s", r.Seq, short(r.Version))
			}
			errText := r.Error
			if errText == "" {
				errText = "-"
			}
			via := r.Parent
			if via == "" {
				via = "-" // reports to this server directly
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%v ago\t%v\t%s\t%s\n", r.Node, via, ver, r.Behind, r.Shown,
				now.Sub(r.LastSeen).Round(100*time.Millisecond), r.SyncTime.Round(time.Millisecond), hookText(r.Hook), oneLine(errText))
		}
		tw.Flush()
		for _, r := range t.Rows {
			if r.Hook != nil && !r.Hook.OK && r.Hook.Output != "" {
				fmt.Fprintf(w, "  %s %s hook output:\n", r.Node, r.Hook.Name)
				for _, l := range strings.Split(strings.TrimRight(r.Hook.Output, "\n"), "\n") {
					fmt.Fprintf(w, "    | %s\n", l)
				}
			}
		}
		fmt.Fprintln(w, t.Summary())
	}
	if len(view) == 0 {
		fmt.Fprintln(w, "no tree published")
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

type jsonHook struct {
	Name       string `json:"name"`
	Exit       int    `json:"exit"`
	DurationMS int64  `json:"duration_ms"`
	OK         bool   `json:"ok"`
	Output     string `json:"output"`
}

type jsonNode struct {
	Node       string    `json:"node"`
	Parent     string    `json:"parent"` // the relay it reports through; "" if direct
	Seq        uint64    `json:"seq"`
	Version    string    `json:"version"`
	Behind     uint64    `json:"behind"`
	State      string    `json:"state"`
	LastSeenMS int64     `json:"last_seen_ms"`
	SyncMS     int64     `json:"sync_ms"`
	Error      string    `json:"error,omitempty"`
	Hook       *jsonHook `json:"hook,omitempty"`
}

type jsonTree struct {
	Tree          string     `json:"tree"`
	LatestSeq     uint64     `json:"latest_seq"`
	LatestVersion string     `json:"latest_version"`
	Summary       string     `json:"summary"`
	Live          int        `json:"live"`
	OnLatest      int        `json:"on_latest"`
	Behind        []string   `json:"behind"`
	Failed        []string   `json:"failed"`
	Lost          []string   `json:"lost"`
	Nodes         []jsonNode `json:"nodes"`
}

func writeStatusJSON(w io.Writer, view []fleet.TreeStatus, verdict fleet.Verdict, now time.Time) {
	out := struct {
		Verdict string     `json:"verdict"`
		Trees   []jsonTree `json:"trees"`
	}{Verdict: [...]string{"pending", "converged", "failed"}[verdict], Trees: []jsonTree{}}
	for _, t := range view {
		jt := jsonTree{Tree: t.Tree, LatestSeq: t.Latest.Seq, LatestVersion: t.Latest.Version, Summary: t.Summary(),
			Live: t.Live, OnLatest: t.OnLatest, Behind: nonNil(t.Behind), Failed: nonNil(t.Failed), Lost: nonNil(t.LostNodes), Nodes: []jsonNode{}}
		for _, r := range t.Rows {
			n := jsonNode{Node: r.Node, Parent: r.Parent, Seq: r.Seq, Version: r.Version, Behind: r.Behind, State: string(r.Shown),
				LastSeenMS: now.Sub(r.LastSeen).Milliseconds(), SyncMS: r.SyncTime.Milliseconds(), Error: r.Error}
			if r.Hook != nil {
				n.Hook = &jsonHook{Name: r.Hook.Name, Exit: r.Hook.Exit, DurationMS: r.Hook.Duration.Milliseconds(), OK: r.Hook.OK, Output: r.Hook.Output}
			}
			jt.Nodes = append(jt.Nodes, n)
		}
		out.Trees = append(out.Trees, jt)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
