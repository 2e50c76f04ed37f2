// Package fleet is the server's table of which node runs which version of
// which tree: pure logic with the time passed in, no I/O, no clock.
//
// Nodes report (node name, tree, version, sequence, state, last error,
// hook result); the table keeps the latest report per (node, tree), marks
// a node lost when it has not been heard from within LostAfter (lost nodes
// are shown, not forgotten, until the table needs their room), and answers
// "is every live node on the latest version?" for a deploy gate.
//
// Bounds: at most MaxNodes nodes and only trees the server publishes. A
// report for an unknown tree is refused (ErrUnknownTree); a new node when
// the table is full evicts the node lost the longest, or is refused
// (ErrFull) when no node is lost. A node's name is bound to the key that
// first reported it when keys are known (CURVE): another key reporting
// under that name is refused (ErrNameTaken).
package fleet

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// State of a node's tree.
type State string

// States a node reports; Lost is derived by the table.
const (
	Syncing  State = "syncing"
	Staged   State = "staged"
	Switched State = "switched"
	Failed   State = "failed"
	Lost     State = "lost"
)

// Valid reports whether a node may report s.
func (s State) Valid() bool {
	switch s {
	case Syncing, Staged, Switched, Failed:
		return true
	}
	return false
}

// Hook is the outcome of a node's last hook run.
type Hook struct {
	Name     string        // "check" or "exec"
	Exit     int           // exit status; -1 if killed or not started
	Output   string        // captured output, bounded by the node
	Duration time.Duration // how long it ran
	OK       bool
}

// Report is what a node tells the server about one tree.
type Report struct {
	Node     string // node name (--node, default the host name)
	Key      string // fingerprint of the node's CURVE key; "" without CURVE
	Parent   string // the relay it reports through; "" if direct
	Tree     string
	Version  string // version id (hex) the node runs; "" if none yet
	Seq      uint64 // that version's sequence number
	State    State
	Error    string // last error, "" if none
	Hook     *Hook
	SyncTime time.Duration // duration of the last sync
}

// Row is a report as the table shows it.
type Row struct {
	Report
	LastSeen time.Time
	Behind   uint64 // versions behind the latest (latest seq - Seq)
	Shown    State  // State, or Lost
}

// Config bounds the table.
type Config struct {
	MaxNodes  int           // default 10000
	LostAfter time.Duration // default 30s
	MaxText   int           // longest error or hook output kept, default 4096
}

// Errors of Update.
var (
	// ErrUnknownTree: the report names a tree the server does not publish.
	ErrUnknownTree = errors.New("unknown tree")
	// ErrFull: the table holds MaxNodes live nodes.
	ErrFull = errors.New("fleet table full")
	// ErrNameTaken: another key already reports under this node name.
	ErrNameTaken = errors.New("node name bound to another key")
	// ErrBadReport: a field is invalid (empty node name, unknown state).
	ErrBadReport = errors.New("invalid report")
)

// Latest is a tree's newest published version.
type Latest struct {
	Seq     uint64
	Version string
}

type node struct {
	key      string
	lastSeen time.Time
	trees    map[string]*Row
}

// Table is the fleet table. It is not safe for concurrent use: the server's
// serving goroutine owns it.
type Table struct {
	cfg    Config
	nodes  map[string]*node
	latest map[string]Latest
}

// New makes an empty table.
func New(cfg Config) *Table {
	if cfg.MaxNodes <= 0 {
		cfg.MaxNodes = 10000
	}
	if cfg.LostAfter <= 0 {
		cfg.LostAfter = 30 * time.Second
	}
	if cfg.MaxText <= 0 {
		cfg.MaxText = 4096
	}
	return &Table{cfg: cfg, nodes: map[string]*node{}, latest: map[string]Latest{}}
}

// Publish records a tree's latest version. Trees never published are
// unknown to Update.
func (t *Table) Publish(tree string, l Latest) { t.latest[tree] = l }

// Forget removes a tree (no longer served) and every node's row of it.
func (t *Table) Forget(tree string) {
	delete(t.latest, tree)
	for _, n := range t.nodes {
		delete(n.trees, tree)
	}
}

// Update records a report received at now: a node's own (Parent "") or
// one a relay forwarded (Parent, the relay's node name).
//
// Keys: a direct report with a Key binds the node name to it, and another
// key reporting under the name is refused (ErrNameTaken). A forwarded row
// is bound to no key (a node may fail over from one relay to another, and
// only the relay saw its key); it is refused (ErrNameTaken) while the name
// is bound to a key and the node is not lost, and takes a lost name over,
// unbinding it. A direct report with a key takes an unbound name over.
// Without keys (Key "" everywhere) the latest report wins.
func (t *Table) Update(r Report, now time.Time) error {
	if r.Node == "" || len(r.Node) > 255 || !r.State.Valid() {
		return fmt.Errorf("%w: node %q state %q", ErrBadReport, r.Node, r.State)
	}
	if _, ok := t.latest[r.Tree]; !ok {
		return fmt.Errorf("%w %q", ErrUnknownTree, r.Tree)
	}
	if r.Parent != "" {
		r.Key = "" // a forwarded row is bound to no key (see Update)
	}
	n, ok := t.nodes[r.Node]
	if ok && n.key != r.Key {
		switch {
		case r.Parent != "" && now.Sub(n.lastSeen) <= t.cfg.LostAfter:
			return fmt.Errorf("%w: %q reports directly", ErrNameTaken, r.Node)
		case r.Parent == "" && n.key != "":
			return fmt.Errorf("%w: %q", ErrNameTaken, r.Node)
		}
		n.key = r.Key // a forward takes a lost name over; a direct report binds an unbound one
	}
	if !ok {
		if len(t.nodes) >= t.cfg.MaxNodes && !t.evictLost(now) {
			return ErrFull
		}
		n = &node{key: r.Key, trees: map[string]*Row{}}
		t.nodes[r.Node] = n
	}
	r.Error = clip(r.Error, t.cfg.MaxText)
	if r.Hook != nil {
		h := *r.Hook
		h.Output = clip(h.Output, t.cfg.MaxText)
		r.Hook = &h
	}
	n.lastSeen = now
	n.trees[r.Tree] = &Row{Report: r, LastSeen: now}
	return nil
}

// Row returns the latest report of node about tree, if any.
func (t *Table) Row(nodeName, tree string) (Row, bool) {
	if _, r := t.find(nodeName, tree); r != nil {
		return *r, true
	}
	return Row{}, false
}

// find returns node's entry and its row about tree (nil if none).
func (t *Table) find(nodeName, tree string) (*node, *Row) {
	n, ok := t.nodes[nodeName]
	if !ok {
		return nil, nil
	}
	return n, n.trees[tree]
}

// Shown is the row of node about tree as Status shows it at now (LastSeen
// the node's, Shown Lost when it was not heard from in time, Behind).
func (t *Table) Shown(nodeName, tree string, now time.Time) (Row, bool) {
	n, r := t.find(nodeName, tree)
	if r == nil {
		return Row{}, false
	}
	row := *r
	row.LastSeen = n.lastSeen
	if l, ok := t.latest[tree]; ok && l.Seq > row.Seq {
		row.Behind = l.Seq - row.Seq
	}
	row.Shown = row.State
	if now.Sub(n.lastSeen) > t.cfg.LostAfter {
		row.Shown = Lost
	}
	return row, true
}

// Seen marks a node alive without a new report (a heartbeat). A node
// whose rows were forwarded (Parent set) is kept alive by forwards only:
// Seen leaves it alone, so that a session that stands for it (a relay's)
// does not keep it alive once the relay stops forwarding it.
func (t *Table) Seen(nodeName string, now time.Time) {
	n, ok := t.nodes[nodeName]
	if !ok {
		return
	}
	for _, r := range n.trees {
		if r.Parent != "" {
			return
		}
	}
	n.lastSeen = now
}

func (t *Table) evictLost(now time.Time) bool {
	var victim string
	var oldest time.Time
	for name, n := range t.nodes {
		if now.Sub(n.lastSeen) > t.cfg.LostAfter && (victim == "" || n.lastSeen.Before(oldest)) {
			victim, oldest = name, n.lastSeen
		}
	}
	if victim == "" {
		return false
	}
	delete(t.nodes, victim)
	return true
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "...(truncated)"
}

// TreeStatus is one tree's view of the fleet.
type TreeStatus struct {
	Tree      string
	Latest    Latest
	Rows      []Row // sorted by node name
	Live      int   // nodes not lost
	OnLatest  int   // live nodes switched to the latest version
	Behind    []string
	Failed    []string
	LostNodes []string
}

// Summary is the one-line view, e.g. "48/50 nodes on myapp v17 (2 behind: web7, web9)".
func (s TreeStatus) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d nodes on %s v%d", s.OnLatest, s.Live, s.Tree, s.Latest.Seq)
	var parts []string
	if len(s.Behind) > 0 {
		parts = append(parts, fmt.Sprintf("%d behind: %s", len(s.Behind), listNames(s.Behind)))
	}
	if len(s.Failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed: %s", len(s.Failed), listNames(s.Failed)))
	}
	if len(s.LostNodes) > 0 {
		parts = append(parts, fmt.Sprintf("%d lost: %s", len(s.LostNodes), listNames(s.LostNodes)))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, "; "))
	}
	return b.String()
}

func listNames(names []string) string {
	const show = 10
	if len(names) <= show {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:show], ", ") + fmt.Sprintf(", and %d more", len(names)-show)
}

// Status returns every published tree's view at now, sorted by tree name.
func (t *Table) Status(now time.Time) []TreeStatus {
	var out []TreeStatus
	for tree, l := range t.latest {
		var rows []Row
		for name := range t.nodes {
			if row, ok := t.Shown(name, tree, now); ok {
				rows = append(rows, row)
			}
		}
		out = append(out, Summarize(tree, l, rows))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tree < out[j].Tree })
	return out
}

// Summarize builds a tree's view from its rows (Shown and Behind set):
// the table's Status uses it, and so does a client holding rows a server
// sent (zsend --status).
func Summarize(tree string, l Latest, rows []Row) TreeStatus {
	s := TreeStatus{Tree: tree, Latest: l, Rows: rows}
	for _, row := range rows {
		name := row.Node
		if row.Shown == Lost {
			s.LostNodes = append(s.LostNodes, name)
			continue
		}
		s.Live++
		switch {
		case row.State == Failed || (row.Hook != nil && !row.Hook.OK):
			s.Failed = append(s.Failed, name)
		case row.State == Switched && row.Version == l.Version:
			s.OnLatest++
		default:
			s.Behind = append(s.Behind, name)
		}
	}
	sort.Slice(s.Rows, func(i, j int) bool { return s.Rows[i].Node < s.Rows[j].Node })
	sort.Strings(s.Behind)
	sort.Strings(s.Failed)
	sort.Strings(s.LostNodes)
	return s
}

// Verdict is the deploy gate's answer.
type Verdict int

// Verdicts of Converged.
const (
	Pending    Verdict = iota // some live node is not on the latest version yet
	Converged                 // every live node of every tree is on the latest version
	HookFailed                // some live node failed (state failed or a failed hook)
)

// Gate decides the deploy gate at now: HookFailed if any live node failed,
// else Converged when every live node reporting any tree runs its latest
// version (at least one node must report each tree), else Pending.
func (t *Table) Gate(now time.Time) Verdict { return GateOf(t.Status(now)) }

// GateOf is Gate over a status already taken.
func GateOf(st []TreeStatus) Verdict {
	v := Converged
	for _, s := range st {
		if len(s.Failed) > 0 {
			return HookFailed
		}
		if s.Live == 0 || s.OnLatest < s.Live {
			v = Pending
		}
	}
	return v
}

// Nodes is the number of nodes in the table, lost ones included.
func (t *Table) Nodes() int { return len(t.nodes) }
