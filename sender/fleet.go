package sender

import (
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zsend/zsend/internal/fleet"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
)

// The fleet table (PROTOCOL.md section 14): nodes REPORT their state of
// each tree; the table keeps the latest report per (node, tree), stamped
// with this server's clock; STATUS reads it; with Config.Barrier, the
// server tells the followers of a tree to switch together.

// fleetState is the server's fleet table and barriers. The table is
// guarded by mu because Server.Fleet reads it from any goroutine; the
// barriers belong to the serving goroutine.
type fleetState struct {
	mu     sync.Mutex
	table  *fleet.Table
	latest map[string]uint64 // tree -> seq last given to the table

	barriers map[string]*barrier // tree -> barrier of its latest version
	started  time.Time           // when the server started (barrier grace)

	dirty    map[rowKey]bool // rows changed since the last Forwards(false)
	dirtyAll bool            // too many to list: every row counts as changed
	switches []switchOrder   // Switch calls the serving goroutine has yet to run
}

// switchOrder is a Switch call: a parent's barrier decision.
type switchOrder struct {
	tree string
	id   protocol.Hash
	at   time.Time
}

// barrier is the coordinated switch of one tree to one version.
type barrier struct {
	b       fleet.Barrier
	seq     uint64
	id      protocol.Hash
	decided bool
	// told maps each node sent SWITCH to the session it went to; sent
	// holds those sessions. A node staged again on another session (it
	// reconnected, or moved to another relay) is told again; a session
	// that got the SWITCH is not sent it again (a relay passes it on to
	// its late children itself).
	told map[string]*session
	sent map[*session]bool
	// at is when the nodes switch (PROTOCOL.md section 17): set when the
	// barrier is decided, Config.SwitchDelay after the decision (a
	// parent's instant on a relay); zero: at once.
	at time.Time
}

// maxNodesPerSession bounds the node names one session may report under
// (they are remembered to address SWITCH and to keep the node alive).
const maxNodesPerSession = 64

// FleetConfig bounds the fleet table. Zero values take the defaults.
type FleetConfig struct {
	MaxNodes  int           // most nodes kept; default 10000 (a lost node is evicted to make room)
	LostAfter time.Duration // a node not heard from for longer is shown lost; default 30s
	MaxText   int           // longest error or hook output kept; default 4096
}

func newFleetState(c FleetConfig) *fleetState {
	cfg := fleet.Config{MaxNodes: c.MaxNodes, LostAfter: c.LostAfter, MaxText: c.MaxText}
	return &fleetState{table: fleet.New(cfg), latest: map[string]uint64{}, barriers: map[string]*barrier{}, started: time.Now(),
		dirty: map[rowKey]bool{}}
}

// Fleet returns the fleet table: every published tree's latest version
// and the nodes' reports of it, sorted by tree then node. Safe from any
// goroutine.
func (s *Server) Fleet() []fleet.TreeStatus {
	s.fleet.mu.Lock()
	defer s.fleet.mu.Unlock()
	return s.fleet.table.Status(time.Now())
}

// FleetGate is the deploy gate over the fleet table now (see fleet.Gate).
func (s *Server) FleetGate() fleet.Verdict {
	s.fleet.mu.Lock()
	defer s.fleet.mu.Unlock()
	return s.fleet.table.Gate(time.Now())
}

func hexID(h protocol.Hash) string {
	if h == (protocol.Hash{}) {
		return ""
	}
	return hex.EncodeToString(h[:])
}

func hashOf(s string) (h protocol.Hash) {
	b, err := hex.DecodeString(s)
	if err == nil && len(b) == len(h) {
		copy(h[:], b)
	}
	return h
}

// syncFleetLatest gives the table each tree's latest version, and opens a
// barrier for each new one when the server coordinates switches.
func (s *Server) syncFleetLatest(now time.Time) {
	if s.pub == nil {
		return
	}
	f := s.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, name := range s.pub.names {
		v := s.pub.trees[name].latest()
		if v == nil || f.latest[name] == v.seq {
			continue
		}
		f.latest[name] = v.seq
		f.table.Publish(name, fleet.Latest{Seq: v.seq, Version: v.id.String()})
		if s.cfg.Barrier {
			f.barriers[name] = s.newBarrier(name, v.seq, protocol.Hash(v.id), now)
		}
	}
}

// isLatest reports whether (seq, id) is the latest version this server
// publishes of tree.
func (s *Server) isLatest(tree string, seq uint64, id protocol.Hash) bool {
	if s.pub == nil {
		return false
	}
	t := s.pub.trees[tree]
	if t == nil {
		return false
	}
	v := t.latest()
	return v != nil && v.seq == seq && protocol.Hash(v.id) == id
}

func (s *Server) newBarrier(tree string, seq uint64, id protocol.Hash, now time.Time) *barrier {
	return &barrier{b: fleet.Barrier{Tree: tree, Version: hexID(id), Quorum: s.cfg.Quorum, Deadline: now.Add(s.cfg.BarrierTimeout)},
		seq: seq, id: id, told: map[string]*session{}, sent: map[*session]bool{}}
}

// nodeStates maps the states a node reports on the wire to the table's.
var nodeStates = map[protocol.NodeState]fleet.State{
	protocol.StateSyncing:  fleet.Syncing,
	protocol.StateStaged:   fleet.Staged,
	protocol.StateSwitched: fleet.Switched,
	protocol.StateFailed:   fleet.Failed,
}

func stateOf(s protocol.NodeState) fleet.State {
	if st, ok := nodeStates[s]; ok {
		return st
	}
	return fleet.State("invalid")
}

// wireState is stateOf's inverse; the table's own Lost (and anything
// else) is StateLost.
func wireState(s fleet.State) protocol.NodeState {
	for w, st := range nodeStates {
		if st == s {
			return w
		}
	}
	return protocol.StateLost
}

// report answers REPORT: the table takes it (END) or refuses it (ERROR,
// request-level; the session continues).
func (sess *session) report(m *protocol.Report) {
	if !sess.nodes[m.Node] && len(sess.nodes) >= maxNodesPerSession && sess.mayTree(m.Tree) {
		sess.send(&protocol.Error{Request: m.Request, Code: protocol.CodeTooMany,
			Message: fmt.Sprintf("more than %d node names in one session", maxNodesPerSession)})
		return
	}
	if !sess.takeRow(m, "") {
		return
	}
	if sess.nodes == nil {
		sess.nodes = map[string]bool{}
	}
	sess.nodes[m.Node] = true
	sess.send(&protocol.End{Request: m.Request})
	sess.afterRow(m)
}

// forward answers FORWARD (PROTOCOL.md section 15.4): a relay's row, kept
// like a REPORT's but under the relay's parent name, bound to no key, and
// kept alive by forwards only.
func (sess *session) forward(m *protocol.Forward) {
	s := sess.srv
	if !sess.forwards[m.Node] && len(sess.forwards) >= s.maxForwards() && sess.mayTree(m.Tree) {
		sess.send(&protocol.Error{Request: m.Request, Code: protocol.CodeTooMany,
			Message: fmt.Sprintf("more than %d forwarded node names in one session", s.maxForwards())})
		return
	}
	if !sess.takeRow(&m.Report, m.Parent) {
		return
	}
	if sess.forwards == nil {
		sess.forwards = map[string]bool{}
	}
	sess.forwards[m.Node] = true
	sess.send(&protocol.End{Request: m.Request})
	sess.afterRow(&m.Report)
}

// maxForwards bounds the node names one session may FORWARD: the table's
// own bound on nodes.
func (s *Server) maxForwards() int {
	if n := s.cfg.Fleet.MaxNodes; n > 0 {
		return n
	}
	return 10000
}

// afterRow runs the barrier on a staged row the table took.
func (sess *session) afterRow(m *protocol.Report) {
	s := sess.srv
	if m.State == protocol.StateStaged && (s.cfg.Barrier || s.cfg.ExternalBarrier) {
		s.stagedReport(sess, m.Tree, m.Node, m.Version, m.Seq, time.Now())
	}
}

// takeRow puts a REPORT (parent "") or a FORWARD's row into the table. It
// answers a refusal itself (ERROR, request-level) and reports whether the
// table took the row; the caller acknowledges it.
func (sess *session) takeRow(m *protocol.Report, parent string) bool {
	s := sess.srv
	now := time.Now()
	if !sess.mayTree(m.Tree) {
		sess.refuseKey(m.Request, m.Tree)
		return false
	}
	r := fleet.Report{Node: m.Node, Tree: m.Tree, Version: hexID(m.Version), Seq: m.Seq, State: stateOf(m.State),
		Error: m.Error, SyncTime: time.Duration(m.SyncMS) * time.Millisecond, Parent: parent}
	if sess.hasKey && parent == "" {
		// With CURVE a node name belongs to the first key that reported
		// it (fleet.ErrNameTaken, 403, for another key). A forwarded row
		// is bound to no key (section 15.4).
		r.Key = KeyFingerprint(sess.key)
	}
	if m.Hook.Name != "" {
		r.Hook = &fleet.Hook{Name: m.Hook.Name, Exit: int(m.Hook.Exit), Output: m.Hook.Output,
			Duration: time.Duration(m.Hook.DurationMS) * time.Millisecond, OK: m.Hook.Exit == 0}
	}
	s.fleet.mu.Lock()
	prev, had := s.fleet.table.Row(r.Node, r.Tree)
	err := s.fleet.table.Update(r, now)
	changed := err == nil && (!had || rowChanged(prev.Report, r))
	if changed && !s.fleet.dirtyAll {
		if len(s.fleet.dirty) >= s.maxForwards() {
			// Nobody reads them (not a relay), or too many changed since
			// the last read: the next read returns every row.
			clear(s.fleet.dirty)
			s.fleet.dirtyAll = true
		} else {
			s.fleet.dirty[rowKey{r.Node, r.Tree}] = true
		}
	}
	s.fleet.mu.Unlock()
	what := "report"
	if parent != "" {
		what = "forwarded report"
	}
	if err != nil {
		code := protocol.CodeBadRequest
		switch {
		case errors.Is(err, fleet.ErrUnknownTree):
			code = protocol.CodeNotFound
		case errors.Is(err, fleet.ErrFull):
			code = protocol.CodeTooMany
		case errors.Is(err, fleet.ErrNameTaken):
			code = protocol.CodeRefused
		}
		sess.sendNoted(Event{Kind: "refused", Name: m.Tree, Message: fmt.Sprintf("%s of node %q: %v", what, m.Node, err)}, &protocol.Error{Request: m.Request, Code: code, Message: what + " refused: " + err.Error()})
		return false
	}
	// Periodic reports repeat the state: only a change is an event.
	if changed {
		msg := fmt.Sprintf("node %s %s", m.Node, r.State)
		if parent != "" {
			msg += " via " + parent
		}
		sess.event(Event{Kind: "report", Name: m.Tree, Seq: m.Seq, Version: r.Version, Message: msg})
		if s.cfg.OnReport != nil {
			s.cfg.OnReport()
		}
	}
	return true
}

// rowChanged reports whether a new report of a row says something the
// previous one did not (periodic reports repeat the state).
func rowChanged(a, b fleet.Report) bool {
	if a.State != b.State || a.Version != b.Version || a.Seq != b.Seq || a.Error != b.Error || a.Parent != b.Parent {
		return true
	}
	if (a.Hook == nil) != (b.Hook == nil) {
		return true
	}
	return a.Hook != nil && *a.Hook != *b.Hook
}

// rowKey names a row of the fleet table.
type rowKey struct{ node, tree string }

// Forwards returns the rows a relay forwards upward (PROTOCOL.md section
// 15.4): with all, every row of the table that is not lost; otherwise
// those that changed since the last call (and are not lost). A row the
// node reported directly gets parent, the relay's own node name; a row
// this server got by FORWARD keeps the parent it came with (parent must
// be a valid node name, 1 to 255 octets; with "" only those rows are
// returned). Safe from any
// goroutine; meant for one caller (the relay's control session), since
// it resets what "changed" means.
func (s *Server) Forwards(parent string, all bool) []protocol.Forward {
	now := time.Now()
	f := s.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	if !all && len(f.dirty) == 0 && !f.dirtyAll {
		return nil
	}
	all = all || f.dirtyAll
	f.dirtyAll = false
	var rows []fleet.Row
	if all {
		for _, st := range f.table.Status(now) {
			rows = append(rows, st.Rows...)
		}
	} else {
		for k := range f.dirty {
			if r, ok := f.table.Shown(k.node, k.tree, now); ok {
				rows = append(rows, r)
			}
		}
		sort.Slice(rows, func(i, j int) bool {
			return rows[i].Tree < rows[j].Tree || (rows[i].Tree == rows[j].Tree && rows[i].Node < rows[j].Node)
		})
	}
	var out []protocol.Forward
	for _, r := range rows {
		if r.Shown == fleet.Lost {
			continue
		}
		fw := protocol.Forward{Parent: r.Parent, Report: protocol.Report{State: wireState(r.State), Seq: r.Seq,
			SyncMS: uint32(min(r.SyncTime/time.Millisecond, 1<<32-1)), Version: hashOf(r.Version), Node: r.Node, Tree: r.Tree,
			Error: clampText(r.Error)}}
		if fw.Parent == "" {
			fw.Parent = parent
		}
		if fw.Parent == "" || len(fw.Parent) > protocol.MaxNodeLen {
			continue // no valid parent name: the row cannot be forwarded
		}
		if r.Hook != nil {
			fw.Hook = protocol.HookResult{Name: r.Hook.Name, Exit: int32(r.Hook.Exit),
				DurationMS: uint32(min(r.Hook.Duration/time.Millisecond, 1<<32-1)), Output: clampHook(r.Hook.Output)}
		}
		out = append(out, fw)
	}
	clear(f.dirty)
	return out
}

// stagedReport runs the barrier when a node reports a version staged.
// sess is the session it came on (the node's, or its relay's).
func (s *Server) stagedReport(sess *session, tree, node string, id protocol.Hash, seq uint64, now time.Time) {
	f := s.fleet
	b := f.barriers[tree]
	if s.cfg.ExternalBarrier {
		// A relay: only its parent's decision (Switch) switches.
		if b != nil && b.decided && b.id == id {
			b.retell(sess, node)
			s.sendSwitch(b, []string{node})
		}
		return
	}
	if (b == nil || (b.id != id && seq > b.seq)) && s.isLatest(tree, seq, id) {
		// No barrier for it (the server restarted): open one now. Only
		// for the version this server publishes as the tree's latest: a
		// report naming any other (forged, or from a server with other
		// content on the same endpoint) must not replace the barrier
		// the followers are staging for.
		b = s.newBarrier(tree, seq, id, now)
		f.barriers[tree] = b
	}
	if b == nil || b.id != id {
		return // an older version (the newer one is on its way to the node), or one never published
	}
	if b.decided {
		b.retell(sess, node)
		s.sendSwitch(b, []string{node})
		return
	}
	s.checkBarrier(b, now)
}

// checkBarrier decides a barrier and sends SWITCH when it says so.
func (s *Server) checkBarrier(b *barrier, now time.Time) {
	s.fleet.mu.Lock()
	d, staged := b.b.Check(s.fleet.table, now)
	s.fleet.mu.Unlock()
	if d == fleet.Wait {
		return
	}
	// A server that just started knows only the nodes that have
	// reconnected so far: "every live node staged" waits for the others to
	// come back first (the housekeeping tick checks again).
	if d == fleet.SwitchAll && b.b.Quorum == 0 && now.Before(s.fleet.started.Add(s.barrierGrace())) {
		return
	}
	b.decided = true
	b.at = time.Now().Add(s.cfg.SwitchDelay)
	msg := fmt.Sprintf("barrier of %s v%d: %d nodes staged, switching at %s", b.b.Tree, b.seq, len(staged), b.at.Format("15:04:05.000"))
	if d == fleet.SwitchTimed {
		var missing []string
		s.fleet.mu.Lock()
		for _, st := range s.fleet.table.Status(now) {
			if st.Tree != b.b.Tree {
				continue
			}
			for _, r := range st.Rows {
				if r.Shown != fleet.Lost && !contains(staged, r.Node) {
					missing = append(missing, r.Node)
				}
			}
		}
		s.fleet.mu.Unlock()
		msg = fmt.Sprintf("barrier of %s v%d timed out: switching %d staged nodes at %s; not staged: %s",
			b.b.Tree, b.seq, len(staged), b.at.Format("15:04:05.000"), strings.Join(missing, ", "))
	}
	// The event goes out before any SWITCH: whoever sees a node told has
	// the decision's record already.
	s.event(Event{Kind: "barrier", Name: b.b.Tree, Seq: b.seq, Version: b.b.Version, Message: msg, At: b.at})
	s.sendSwitch(b, staged)
}

// barrierGrace is how long after its start the server waits before it
// decides that every live node has staged: a quarter of the barrier
// timeout, at most 5 s (followers reconnect within their 5 s backoff).
func (s *Server) barrierGrace() time.Duration {
	return min(s.cfg.BarrierTimeout/4, 5*time.Second)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// retell forgets that node was told, when it now reports staged on
// another session than the one told (it reconnected, or moved to another
// relay): that session gets the SWITCH too.
func (b *barrier) retell(sess *session, node string) {
	if b.told[node] != sess {
		delete(b.told, node)
	}
}

// sendSwitch sends SWITCH to every subscribed session of the named nodes:
// the sessions that reported them, and those that forwarded them (a
// relay's, PROTOCOL.md section 15.6), at most one SWITCH per session. A
// session at version 4 gets SWITCHAT, naming the barrier's instant
// (section 17); an older one gets SWITCH, and its node switches when it
// reads it.
func (s *Server) sendSwitch(b *barrier, nodes []string) {
	var want []string
	for _, n := range nodes {
		if sess := b.told[n]; sess != nil {
			if !sess.dead && (sess.nodes[n] || sess.forwards[n]) {
				continue // told on a session that still stands for it
			}
		}
		want = append(want, n)
	}
	if len(want) == 0 {
		return
	}
	for _, sess := range s.ring {
		if sess.dead {
			continue
		}
		var hit []string
		for _, n := range want {
			if sess.nodes[n] || sess.forwards[n] {
				hit = append(hit, n)
			}
		}
		if len(hit) == 0 {
			continue
		}
		for _, sub := range sess.subs {
			if sub.tree == "" || sub.tree == b.b.Tree {
				if !b.sent[sess] {
					sess.send(b.switchMessage(sess.version, sub.req))
					b.sent[sess] = true
				}
				for _, n := range hit {
					b.told[n] = sess
				}
				break
			}
		}
	}
}

// switchMessage is the SWITCH (below version 4) or SWITCHAT (version 4)
// for a session at version v whose LIST with SUBSCRIBE was request req.
// SWITCHAT's in-ms is measured now, as it is sent.
func (b *barrier) switchMessage(v uint8, req uint32) protocol.Message {
	if v < protocol.Version4 {
		return &protocol.Switch{Request: req, Seq: b.seq, Version: b.id, Tree: b.b.Tree}
	}
	now := time.Now()
	at := b.at
	if at.IsZero() {
		at = now
	}
	// Rounded up, so that a node whose clock agrees waits until the
	// instant itself, not up to a millisecond short of it.
	in := min(max(at.Sub(now)+time.Millisecond-1, 0), protocol.MaxSwitchInMS*time.Millisecond)
	return &protocol.SwitchAt{Request: req, Seq: b.seq, AtNS: at.UnixNano(), InMS: uint32(in / time.Millisecond),
		Version: b.id, Tree: b.b.Tree}
}

// Switch passes a parent's barrier decision on (a relay with
// Config.ExternalBarrier, PROTOCOL.md section 15.6): SWITCH for (tree,
// id) goes to every node of the tree whose row shows id staged and that
// has a session (or whose relay has), and the decision is remembered, so
// that a node that reports id staged later gets its SWITCH at once. Safe
// from any goroutine; it does not wait for the SWITCHes to be sent. The
// nodes switch at the instant at (the one the parent's SWITCHAT named, by
// this node's clock), or at once when at is zero or past.
func (s *Server) Switch(tree string, id manifest.ID, at time.Time) {
	f := s.fleet
	f.mu.Lock()
	if len(f.switches) < maxSwitchOrders {
		f.switches = append(f.switches, switchOrder{tree: tree, id: protocol.Hash(id), at: at})
	}
	f.mu.Unlock()
	select {
	case s.switchWake <- struct{}{}:
	default:
	}
}

// maxSwitchOrders bounds the Switch calls queued for the serving
// goroutine (it runs them within a tick; a parent sends one per version).
const maxSwitchOrders = 1024

// runSwitches runs the queued Switch calls (serving goroutine).
func (s *Server) runSwitches(now time.Time) {
	f := s.fleet
	f.mu.Lock()
	orders := f.switches
	f.switches = nil
	st := f.table.Status(now)
	f.mu.Unlock()
	for _, o := range orders {
		seq, known := s.seqOf(o.tree, o.id, st)
		b := f.barriers[o.tree]
		if b == nil || b.id != o.id {
			nb := s.newBarrier(o.tree, seq, o.id, now)
			if b == nil || !known || b.seq <= seq {
				f.barriers[o.tree] = nb // the newest decision stays for late nodes
			}
			b = nb
		}
		b.decided = true
		if b.at.IsZero() || o.at.Before(b.at) {
			b.at = o.at // the earliest instant the parent named (zero: at once)
		}
		var staged []string
		for _, t := range st {
			if t.Tree != o.tree {
				continue
			}
			for _, r := range t.Rows {
				if r.Shown == fleet.Staged && r.Version == hexID(o.id) {
					staged = append(staged, r.Node)
				}
			}
		}
		s.event(Event{Kind: "barrier", Name: o.tree, Seq: seq, Version: hexID(o.id), At: b.at,
			Message: fmt.Sprintf("switch of %s v%d passed on from the parent: %d nodes staged", o.tree, seq, len(staged))})
		s.sendSwitch(b, staged)
	}
}

// seqOf finds the sequence number of version id of tree: from the
// published versions, else from a row that shows it.
func (s *Server) seqOf(tree string, id protocol.Hash, st []fleet.TreeStatus) (uint64, bool) {
	if s.pub != nil {
		if t, ok := s.pub.trees[tree]; ok {
			for _, v := range t.versions() {
				if protocol.Hash(v.id) == id {
					return v.seq, true
				}
			}
		}
	}
	for _, t := range st {
		for _, r := range t.Rows {
			if t.Tree == tree && r.Version == hexID(id) && r.Seq != 0 {
				return r.Seq, true
			}
		}
	}
	return 0, false
}

// fleetHousekeeping keeps the nodes of live sessions alive in the table
// and runs the barriers' deadlines.
func (s *Server) fleetHousekeeping(now time.Time) {
	s.fleet.mu.Lock()
	for _, sess := range s.ring {
		if sess.dead {
			continue
		}
		for n := range sess.nodes {
			s.fleet.table.Seen(n, sess.lastRecv)
		}
	}
	s.fleet.mu.Unlock()
	for _, b := range s.fleet.barriers {
		if !b.decided {
			s.checkBarrier(b, now)
		}
	}
}

// status answers STATUS: TREE per tree, FLEET per row, END with the rows.
func (sess *session) status(m *protocol.Status) {
	s := sess.srv
	now := time.Now()
	s.fleet.mu.Lock()
	st := s.fleet.table.Status(now)
	s.fleet.mu.Unlock()
	tree := strings.TrimSuffix(m.Tree, "/")
	if tree != "" && !sess.mayTree(tree) {
		sess.refuseKey(m.Request, tree)
		return
	}
	seen := st[:0]
	for _, t := range st {
		if sess.mayTree(t.Tree) {
			seen = append(seen, t)
		}
	}
	st = seen
	if tree != "" {
		var one []fleet.TreeStatus
		for _, t := range st {
			if t.Tree == tree {
				one = append(one, t)
			}
		}
		if len(one) == 0 {
			sess.send(&protocol.Error{Request: m.Request, Code: protocol.CodeNotFound, Message: fmt.Sprintf("%q is not a tree served here", tree)})
			return
		}
		st = one
	}
	sort.Slice(st, func(i, j int) bool { return st[i].Tree < st[j].Tree })
	for _, t := range st {
		pt, err := s.tree(t.Tree)
		if err != nil {
			continue
		}
		if v := pt.latest(); v != nil {
			sess.sendTree(m.Request, pt, v)
		}
	}
	rows := 0
	for _, t := range st {
		for _, r := range t.Rows {
			f := &protocol.Fleet{Request: m.Request, State: wireState(r.Shown), Seq: r.Seq, Behind: r.Behind,
				AgeMS: uint64(max(now.Sub(r.LastSeen), 0) / time.Millisecond), SyncMS: uint32(r.SyncTime / time.Millisecond),
				Version: hashOf(r.Version), Node: r.Node, Tree: r.Tree, Error: clampText(r.Error),
				HasParent: m.Flags&protocol.StatusParents != 0, Parent: r.Parent}
			if !f.HasParent {
				f.Parent = ""
			}
			if r.Hook != nil {
				f.Hook = protocol.HookResult{Name: r.Hook.Name, Exit: int32(r.Hook.Exit),
					DurationMS: uint32(r.Hook.Duration / time.Millisecond), Output: clampHook(r.Hook.Output)}
			}
			sess.send(f)
			rows++
		}
	}
	sess.send(&protocol.End{Request: m.Request, Size: uint64(rows)})
}

func clampHook(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= protocol.MaxHookOutput {
		return s
	}
	cut := protocol.MaxHookOutput - len("...")
	for cut > 0 && (s[cut]&0xC0) == 0x80 {
		cut--
	}
	return s[:cut] + "..."
}
