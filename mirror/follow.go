package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/hooks"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// Follow mode (zrecv --follow): keep trees on the latest version for as
// long as the context lives.
//
// One control session (receiver.Control) subscribes to every tree (LIST
// with SUBSCRIBE) and carries the node's REPORTs; it is re-established
// forever, with a capped backoff, whatever happens to the server. Each
// tree has a worker that syncs (Sync, in sessions of its own) whenever the
// server announces a version other than the one the stable path shows.
// Each (re)connect lists every tree again, so an announcement lost while
// disconnected never matters, and a node any number of versions behind
// goes straight to the latest one (Sync always syncs to the latest).

// FollowConfig configures Follow. Zero values take the documented defaults.
type FollowConfig struct {
	// Receiver carries the endpoint and timeouts (as for Sync).
	Receiver receiver.Config
	// Out is the output directory (created if missing); Trees the trees
	// to follow.
	Out   string
	Trees []string
	// Keep and LockWait as in Config.
	Keep     int
	LockWait time.Duration
	// Node is the name this node reports under; default the host name.
	Node string
	// Check runs (sh -c) on each staged version before the switch; a
	// failure (non-zero exit, timeout) means no switch and state failed.
	Check string
	// Exec runs after each switch. A failure is reported (state failed);
	// with RollbackOnFailure the stable path flips back to the previous
	// version and Exec runs again for it (phase "rollback").
	Exec              string
	RollbackOnFailure bool
	// HookTimeout kills a hook's process group; default 30s.
	HookTimeout time.Duration
	// MaxBackoff caps the wait between reconnects and between retries
	// of a failed sync; default 5s.
	MaxBackoff time.Duration
	// ReportEvery re-sends the node's reports (liveness); default 10s.
	ReportEvery time.Duration
	// Events, if set, receives what happens; it must not block.
	Events func(FollowEvent)

	// Forwards, if set (a relay: zrecv --follow --serve), returns the rows
	// of the relay's own fleet table to FORWARD to the parent, like the
	// node's reports: all of them when all is true (after each connect,
	// and every ReportEvery), otherwise those that changed. parent is
	// this node's name (Node), the parent of the relay's direct children
	// (see sender.Server.Forwards, which fits as is). A parent that
	// predates relays (ERROR 501) gets no more forwards for the rest of
	// the run (the other endpoints of a failover list still do).
	Forwards func(parent string, all bool) []protocol.Forward
	// ForwardNotify, if set, is signalled when Forwards has rows that
	// changed (sender.Config.OnReport), so that they go up at once.
	ForwardNotify <-chan struct{}
	// OnSwitch, if set, is called when the control session receives a
	// SWITCH or SWITCHAT (the parent's barrier decision), for each
	// followed tree, from the control session's goroutine; it must not
	// block. at is when to switch, by this node's clock (PROTOCOL.md
	// section 17). A relay passes it on to its children
	// (sender.Server.Switch).
	OnSwitch func(tree string, id manifest.ID, at time.Time)

	// OnVersion, if set, is called with each version of a tree that is
	// complete and verified on disk: when it is staged and checked (before
	// the switch, and before waiting for the server's SWITCH), and after
	// each sync that leaves the stable path on it. dir is the version's
	// directory, ManifestPath(Out, tree, id) its manifest; barrier says
	// whether the server coordinates its switch. A relay (zrecv --serve)
	// offers it to its own receivers. It must not block for long.
	OnVersion func(tree string, seq uint64, id manifest.ID, dir string, barrier bool)
}

// ManifestPath is where a node keeps the verified manifest of version id
// of tree (docs/DESIGN-trees.md section 5): OUT/.zsnd/TREE/m/<id hex>.
func ManifestPath(out, tree string, id manifest.ID) string {
	return filepath.Join(out, ".zsnd", tree, "m", id.String())
}

// FollowEvent is something that happened while following.
type FollowEvent struct {
	Time    time.Time // for "switched": when the stable path was switched
	Kind    string    // "connected", "disconnected", "syncing", "staged", "switched", "unchanged", "failed", "hook", "note"
	Tree    string
	Seq     uint64
	Version manifest.ID
	Message string
	Err     error
	Hook    *hooks.Result
	Result  *Result       // "switched", "unchanged": the sync's result
	Took    time.Duration // "switched", "unchanged", "failed": the sync's duration
}

// errSuperseded: a newer version was announced while one was staged
// waiting for the barrier; the newer one is synced instead.
var errSuperseded = errors.New("a newer version was announced")

// hookError is a failed --check.
type hookError struct{ res hooks.Result }

func (e *hookError) Error() string {
	return fmt.Sprintf("check hook failed: %v", e.res.Err)
}

// ErrBadNode: the node name is empty, too long or not UTF-8.
var ErrBadNode = errors.New("invalid node name")

// Follow syncs every tree of cfg.Trees to its latest version, then keeps
// it there until ctx ends, reporting each change of state to the server.
// It returns nil when ctx ends, or a configuration error at once.
func Follow(ctx context.Context, cfg FollowConfig) error {
	if len(cfg.Trees) == 0 {
		return fmt.Errorf("%w: no tree to follow", receiver.ErrRefused)
	}
	seen := map[string]bool{}
	for _, t := range cfg.Trees {
		if err := ValidTree(t); err != nil {
			return err
		}
		if seen[t] {
			return fmt.Errorf("%w: tree %s named twice", receiver.ErrRefused, t)
		}
		seen[t] = true
	}
	if cfg.Node == "" {
		cfg.Node, _ = os.Hostname()
	}
	if cfg.Node == "" || len(cfg.Node) > protocol.MaxNodeLen || !utf8.ValidString(cfg.Node) {
		return fmt.Errorf("%w: %q (1 to %d octets of UTF-8)", ErrBadNode, cfg.Node, protocol.MaxNodeLen)
	}
	if cfg.Out == "" {
		cfg.Out = "."
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if fi, err := os.Stat(cfg.Out); err != nil || !fi.IsDir() {
		return fmt.Errorf("output directory %s: not a directory (%v)", cfg.Out, err)
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = 30 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.Receiver.OutputDir == "" {
		cfg.Receiver.OutputDir = cfg.Out
	}
	if cfg.Receiver.Failover == nil {
		// The control session and every sync share one current endpoint.
		f, err := receiver.NewFailover(cfg.Receiver.Endpoint)
		if err != nil {
			return err
		}
		cfg.Receiver.Failover = f
	}
	fl := &follower{cfg: &cfg, trees: map[string]*followed{}, notify: make(chan struct{}, 1)}
	for _, t := range cfg.Trees {
		fl.trees[t] = &followed{fl: fl, name: t, poke: make(chan struct{}, 1), switchCh: make(chan switchOrder, 1)}
	}
	var wg sync.WaitGroup
	for _, f := range fl.trees {
		wg.Add(1)
		go func() { defer wg.Done(); f.work(ctx) }()
	}
	if cfg.ForwardNotify != nil {
		wg.Add(1)
		go func() { defer wg.Done(); fl.relayNotify(ctx) }()
	}
	fl.control(ctx)
	wg.Wait()
	return nil
}

type follower struct {
	cfg    *FollowConfig
	trees  map[string]*followed
	notify chan struct{}

	mu      sync.Mutex
	reports map[string]protocol.Report // tree -> latest report
	dirty   map[string]bool

	// noForward holds the parents (endpoints) that refused FORWARD
	// (501): they get no more forwards. parent is the endpoint of the
	// current control session.
	fwdMu     sync.Mutex
	noForward map[string]bool
	parent    string
}

// relayNotify turns ForwardNotify into the control session's notify.
func (fl *follower) relayNotify(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-fl.cfg.ForwardNotify:
			select {
			case fl.notify <- struct{}{}:
			default:
			}
		}
	}
}

// forwards is receiver.ControlConfig.Forwards.
func (fl *follower) forwards(all bool) []protocol.Forward {
	fl.fwdMu.Lock()
	refused := fl.noForward[fl.parent]
	fl.fwdMu.Unlock()
	if refused {
		return nil
	}
	return fl.cfg.Forwards(fl.cfg.Node, all)
}

func (fl *follower) emit(e FollowEvent) {
	if fl.cfg.Events != nil {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		fl.cfg.Events(e)
	}
}

// control keeps the control session up until ctx ends. With a failover
// list, receiver.Control moves to the next endpoint when a session fails;
// the backoff is waited once per round of the list.
func (fl *follower) control(ctx context.Context) {
	rc := fl.cfg.Receiver
	rc.Timeout = fl.cfg.MaxBackoff + time.Second // one dial attempt; this loop retries forever
	backoff := 100 * time.Millisecond
	fails := 0
	for ctx.Err() == nil {
		connected := false
		cc := receiver.ControlConfig{
			Trees: fl.cfg.Trees, Notify: fl.notify, ReportEvery: fl.cfg.ReportEvery, Reports: fl.pending,
			Events: func(e receiver.ControlEvent) {
				if e.Kind == receiver.ControlConnected {
					connected = true
				}
				fl.controlEvent(e)
			},
		}
		if fl.cfg.Forwards != nil {
			cc.Forwards = fl.forwards
		}
		err := receiver.Control(ctx, rc, cc)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, receiver.ErrForwardUnsupported) {
			fl.fwdMu.Lock()
			if fl.noForward == nil {
				fl.noForward = map[string]bool{}
			}
			fl.noForward[fl.parent] = true
			fl.fwdMu.Unlock()
			fl.emit(FollowEvent{Kind: "note", Err: err, Message: "the parent " + fl.parent +
				" predates relays: the status of the nodes below this relay is not forwarded to it"})
		}
		if connected {
			backoff, fails = 100*time.Millisecond, 0
		}
		if fails++; fails%rc.Failover.Len() != 0 {
			fl.emit(FollowEvent{Kind: "disconnected", Err: err, Message: "moving to " + rc.Failover.Current()})
			continue
		}
		fl.emit(FollowEvent{Kind: "disconnected", Err: err, Message: fmt.Sprintf("reconnecting in %v", backoff)})
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, fl.cfg.MaxBackoff)
	}
}

func (fl *follower) controlEvent(e receiver.ControlEvent) {
	switch e.Kind {
	case receiver.ControlConnected:
		fl.fwdMu.Lock()
		fl.parent = e.Endpoint
		fl.fwdMu.Unlock()
		fl.emit(FollowEvent{Kind: "connected", Message: e.Endpoint})
	case receiver.ControlTree:
		if f := fl.trees[e.Tree.Name]; f != nil {
			f.announce(e.Tree, e.Barrier)
		}
	case receiver.ControlSwitch:
		if f := fl.trees[e.Tree.Name]; f != nil && fl.cfg.OnSwitch != nil {
			fl.cfg.OnSwitch(e.Tree.Name, manifest.ID(e.Tree.Version), e.At)
		}
		if f := fl.trees[e.Tree.Name]; f != nil {
			select {
			case <-f.switchCh:
			default:
			}
			f.switchCh <- switchOrder{id: manifest.ID(e.Tree.Version), at: e.At}
		}
	case receiver.ControlRefused:
		fl.emit(FollowEvent{Kind: "note", Tree: e.Tree.Name, Err: e.Err, Message: e.Err.Error()})
	}
}

// pending is receiver.ControlConfig.Reports.
func (fl *follower) pending(all bool) []protocol.Report {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	var out []protocol.Report
	for t, r := range fl.reports {
		if all || fl.dirty[t] {
			out = append(out, r)
		}
	}
	clear(fl.dirty)
	return out
}

func (fl *follower) setReport(r protocol.Report) {
	r.Node = fl.cfg.Node
	r.Error = clip(r.Error, protocol.MaxTextLen)
	r.Hook.Output = clip(r.Hook.Output, protocol.MaxHookOutput)
	fl.mu.Lock()
	if fl.reports == nil {
		fl.reports, fl.dirty = map[string]protocol.Report{}, map[string]bool{}
	}
	fl.reports[r.Tree] = r
	fl.dirty[r.Tree] = true
	fl.mu.Unlock()
	select {
	case fl.notify <- struct{}{}:
	default:
	}
}

// clip makes s valid UTF-8 of at most n octets.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// HookReport converts a hook's result for REPORT.
func HookReport(name string, r *hooks.Result) protocol.HookResult {
	if r == nil {
		return protocol.HookResult{}
	}
	return protocol.HookResult{Name: name, Exit: int32(r.Exit), DurationMS: uint32(r.Duration / time.Millisecond),
		Output: clip(r.Output, protocol.MaxHookOutput)}
}

// followed is one tree's worker state.
type followed struct {
	fl       *follower
	name     string
	poke     chan struct{}
	switchCh chan switchOrder
	timed    bool // worker: the switch under way waited for a barrier's SWITCH

	mu      sync.Mutex
	latest  receiver.TreeInfo // the newest version announced
	known   bool
	barrier bool

	// Owned by the worker.
	shownSeq  uint64
	shownID   manifest.ID
	failedID  manifest.ID // a version whose hooks failed: not retried
	lastHook  protocol.HookResult
	lastSync  time.Duration
	retryWait time.Duration
}

func (f *followed) announce(info receiver.TreeInfo, barrier bool) {
	f.mu.Lock()
	if !f.known || info.Seq >= f.latest.Seq || info.Version != f.latest.Version {
		f.latest, f.known, f.barrier = info, true, barrier
	}
	f.mu.Unlock()
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

func (f *followed) wanted() (receiver.TreeInfo, bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.latest, f.barrier, f.known
}

func (f *followed) report(state protocol.NodeState, seq uint64, id manifest.ID, err error) {
	r := protocol.Report{Tree: f.name, State: state, Seq: seq, Version: protocol.Hash(id),
		SyncMS: uint32(f.lastSync / time.Millisecond), Hook: f.lastHook}
	if err != nil {
		r.Error = err.Error()
	}
	f.fl.setReport(r)
}

func (f *followed) work(ctx context.Context) {
	var retry <-chan time.Time
	// Every ReportEvery the stable path is compared with the version
	// believed shown (one readlink), so a switch made behind the
	// follower's back (zrecv --rollback by hand) is undone and never
	// misreported for long.
	every := f.fl.cfg.ReportEvery
	if every <= 0 {
		every = 10 * time.Second
	}
	check := time.NewTicker(every)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.poke:
		case <-retry:
		case <-check.C:
		}
		retry = nil
		info, _, known := f.wanted()
		if !known {
			continue
		}
		id := manifest.ID(info.Version)
		if id == f.failedID {
			continue
		}
		if id == f.shownID && f.shownSeq != 0 && f.onDisk(id) {
			continue
		}
		if err := f.syncOnce(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, errSuperseded) {
				continue
			}
			f.retryWait = min(max(2*f.retryWait, 500*time.Millisecond), f.fl.cfg.MaxBackoff)
			retry = time.After(f.retryWait)
			continue
		}
		f.retryWait = 0
	}
}

// onDisk reports whether the stable path still names version id (a
// rollback by hand, or another zrecv, may have switched it meanwhile).
func (f *followed) onDisk(id manifest.ID) bool {
	target, err := os.Readlink(filepath.Join(f.fl.cfg.Out, f.name))
	if err != nil {
		return false
	}
	_, id12, ok := parseVersionName(filepath.Base(target))
	return ok && id12 == id.Short()
}

// syncOnce syncs to the latest version, runs the hooks and reports.
func (f *followed) syncOnce(ctx context.Context) error {
	cfg := f.fl.cfg
	f.lastHook, f.timed = protocol.HookResult{}, false
	f.report(protocol.StateSyncing, f.shownSeq, f.shownID, nil)
	f.fl.emit(FollowEvent{Kind: "syncing", Tree: f.name, Seq: f.shownSeq, Version: f.shownID})
	var switchedAt time.Time
	mc := Config{Receiver: cfg.Receiver, Out: cfg.Out, Tree: f.name, Keep: cfg.Keep, LockWait: cfg.LockWait, WarmSpares: true,
		BeforeSwitch: f.beforeSwitch, AfterSwitch: f.afterSwitch, Events: func(e Event) {
			if e.Kind == EventSwitch {
				switchedAt = e.Time // the rename over the stable path (before pruning)
			}
			if e.Kind == EventNote && e.Endpoint != "" {
				// A failover (the control session follows the list).
				f.fl.emit(FollowEvent{Kind: "note", Tree: f.name, Message: e.Message})
			}
		}}
	if info, _, known := f.wanted(); known && info.Seq != 0 {
		mc.Listed = &info
	}
	start := time.Now()
	res, err := Sync(ctx, mc)
	f.lastSync = time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		var he *hookError
		switch {
		case errors.Is(err, errSuperseded):
			f.poked()
			return err
		case errors.As(err, &he):
			f.failedID = res.Version
			f.report(protocol.StateFailed, f.shownSeq, f.shownID, err)
			f.fl.emit(FollowEvent{Kind: "failed", Tree: f.name, Seq: res.Seq, Version: res.Version, Err: err, Hook: &he.res})
			return nil // not retried: a newer version is needed
		case errors.Is(err, ErrBadManifest) || errors.Is(err, ErrMismatch) || errors.Is(err, ErrLayout):
			f.report(protocol.StateFailed, f.shownSeq, f.shownID, err)
		default:
			// Transient (the server went away mid-sync): still trying.
			f.report(protocol.StateSyncing, f.shownSeq, f.shownID, err)
		}
		f.fl.emit(FollowEvent{Kind: "failed", Tree: f.name, Seq: res.Seq, Version: res.Version, Err: err})
		return err
	}
	prevSeq, prevID := f.shownSeq, f.shownID
	f.shownSeq, f.shownID = res.Seq, res.Version
	if cfg.OnVersion != nil && res.Dir != "" {
		_, barrier, _ := f.wanted()
		cfg.OnVersion(f.name, res.Seq, res.Version, res.Dir, barrier)
	}
	if res.Unchanged || res.Repaired || (prevID == res.Version && prevSeq != 0) {
		f.report(protocol.StateSwitched, res.Seq, res.Version, nil)
		f.fl.emit(FollowEvent{Kind: "unchanged", Tree: f.name, Seq: res.Seq, Version: res.Version, Result: &res, Took: f.lastSync})
		return nil
	}
	f.fl.emit(FollowEvent{Kind: "switched", Time: switchedAt, Tree: f.name, Seq: res.Seq, Version: res.Version, Result: &res, Took: f.lastSync,
		Message: fmt.Sprintf("%d files fetched, %d reused", res.FilesFetched, res.FilesReused)})
	if cfg.Exec == "" {
		f.report(protocol.StateSwitched, res.Seq, res.Version, nil)
		return nil
	}
	env := hooks.Env{Tree: f.name, Version: res.Version.String(), Seq: res.Seq, Path: res.Stable,
		PrevSeq: prevSeq, Phase: "exec"}
	if prevSeq != 0 {
		env.PrevVersion = prevID.String()
	}
	hr := hooks.Run(ctx, cfg.Exec, cfg.Out, env, cfg.HookTimeout, protocol.MaxHookOutput)
	f.lastHook = HookReport("exec", &hr)
	f.fl.emit(FollowEvent{Kind: "hook", Tree: f.name, Seq: res.Seq, Version: res.Version, Hook: &hr, Err: hr.Err, Message: "exec"})
	if hr.OK() {
		f.report(protocol.StateSwitched, res.Seq, res.Version, nil)
		return nil
	}
	f.failedID = res.Version
	failure := fmt.Errorf("exec hook failed for v%d: %w", res.Seq, hr.Err)
	if cfg.RollbackOnFailure && res.Previous != "" {
		dir, rerr := Rollback(cfg.Out, f.name)
		if rerr != nil {
			failure = fmt.Errorf("%w; rollback failed: %v", failure, rerr)
		} else {
			f.shownSeq, f.shownID = prevSeq, prevID
			if seq, _, ok := parseVersionName(filepath.Base(dir)); ok {
				f.shownSeq = seq
			}
			renv := env
			renv.Version, renv.Seq, renv.PrevVersion, renv.PrevSeq, renv.Phase = prevID.String(), f.shownSeq, res.Version.String(), res.Seq, "rollback"
			rr := hooks.Run(ctx, cfg.Exec, cfg.Out, renv, cfg.HookTimeout, protocol.MaxHookOutput)
			f.fl.emit(FollowEvent{Kind: "hook", Tree: f.name, Seq: f.shownSeq, Version: f.shownID, Hook: &rr, Err: rr.Err, Message: "rollback"})
			failure = fmt.Errorf("%w; rolled back to v%d (rollback hook: %s)", failure, f.shownSeq, okText(rr))
		}
	}
	f.report(protocol.StateFailed, f.shownSeq, f.shownID, failure)
	f.fl.emit(FollowEvent{Kind: "failed", Tree: f.name, Seq: res.Seq, Version: res.Version, Err: failure, Hook: &hr})
	return nil
}

func okText(r hooks.Result) string {
	if r.OK() {
		return "ok"
	}
	return r.Err.Error()
}

func (f *followed) poked() {
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

// switchOrder is a SWITCH or SWITCHAT: the version to switch to, and
// when (receiver.ControlEvent.At).
type switchOrder struct {
	id manifest.ID
	at time.Time
}

// waitUntil waits until at (by the monotonic clock: at comes from
// time.Now plus a wait bounded by SWITCHAT's in-ms), or ctx's end. The
// last preciseTail of the wait is spent in clock_nanosleep on this
// goroutine's thread, not on a runtime timer: at the instant the kernel
// wakes that thread and it returns straight to the switch, where a timer
// would wake the runtime's poller first and have it hand the goroutine
// over (50 followers on 2 cores: up to 53 ms between the first and the
// last switch with a timer, in the propagation run at ff83593; up to 33
// ms with clock_nanosleep). ctx is not looked at during that tail.
func waitUntil(ctx context.Context, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return nil
	}
	if d > preciseTail {
		t := time.NewTimer(d - preciseTail)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	sleepUntil(at)
	return nil
}

// preciseTail is the part of waitUntil spent in clock_nanosleep.
const preciseTail = 10 * time.Millisecond

// sleepUntil blocks this thread until at, in clock_nanosleep on
// CLOCK_MONOTONIC (Go's monotonic clock) with an absolute deadline, so
// that an interruption (EINTR) resumes the same wait.
func sleepUntil(at time.Time) {
	d := time.Until(at)
	if d <= 0 {
		return
	}
	var now unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &now) != nil {
		time.Sleep(d)
		return
	}
	deadline := unix.NsecToTimespec(now.Nano() + int64(d))
	for range 1000 { // EINTR: a signal (the runtime's preemption) woke it early
		if err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &deadline, nil); err != unix.EINTR {
			return
		}
	}
}

// settleAfterTimedSwitch is how long a follower waits after a barrier's
// switch before it prunes old versions and reports: followers of one
// machine (a test fleet, or several trees) are woken at one instant, and
// the first ones' pruning would otherwise hold the last ones' switch back
// (50 on 2 cores, a 2,000-file tree: without the pause and the symlink
// made ahead, 20-56 ms between the first and the last switch; with
// them, 8-37 ms).
const settleAfterTimedSwitch = 200 * time.Millisecond

// afterSwitch is mirror.Config.AfterSwitch: after a barrier's switch, it
// waits settleAfterTimedSwitch.
func (f *followed) afterSwitch(ctx context.Context) {
	if !f.timed {
		return
	}
	f.timed = false
	waitUntil(ctx, time.Now().Add(settleAfterTimedSwitch))
}

// beforeSwitch runs --check and, with the server's barrier, waits for
// SWITCH (or SWITCHAT, then for its instant).
func (f *followed) beforeSwitch(ctx context.Context, st Staged) error {
	cfg := f.fl.cfg
	f.lastHook = protocol.HookResult{}
	if cfg.Check != "" {
		env := hooks.Env{Tree: f.name, Version: st.Version.String(), Seq: st.Seq, Path: st.Dir, PrevSeq: f.shownSeq, Phase: "check"}
		if f.shownSeq != 0 {
			env.PrevVersion = f.shownID.String()
		}
		hr := hooks.Run(ctx, cfg.Check, st.Dir, env, cfg.HookTimeout, protocol.MaxHookOutput)
		f.lastHook = HookReport("check", &hr)
		f.fl.emit(FollowEvent{Kind: "hook", Tree: f.name, Seq: st.Seq, Version: st.Version, Hook: &hr, Err: hr.Err, Message: "check"})
		if !hr.OK() {
			return &hookError{res: hr}
		}
	}
	_, barrier, _ := f.wanted()
	if cfg.OnVersion != nil {
		cfg.OnVersion(f.name, st.Seq, st.Version, st.Dir, barrier)
	}
	if !barrier || st.PrevDir == "" {
		return nil
	}
	select {
	case <-f.switchCh: // stale
	default:
	}
	f.report(protocol.StateStaged, st.Seq, st.Version, nil)
	f.fl.emit(FollowEvent{Kind: "staged", Tree: f.name, Seq: st.Seq, Version: st.Version, Message: "waiting for the server's SWITCH"})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case o := <-f.switchCh:
			if o.id == st.Version {
				f.timed = true
				return waitUntil(ctx, o.at)
			}
		case <-f.poke:
			info, barrier, _ := f.wanted()
			if info.Seq > st.Seq && manifest.ID(info.Version) != st.Version {
				return errSuperseded
			}
			if !barrier {
				return nil // the server stopped coordinating
			}
		}
	}
}
