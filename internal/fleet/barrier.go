package fleet

import "time"

// Barrier decides when the nodes following a tree switch together to a
// staged version (zsend --barrier): once every live node has reported it
// staged (or switched), or Quorum of them when Quorum > 0, or when the
// deadline passes. Pure: the caller passes the table and the time.
type Barrier struct {
	Tree     string
	Version  string
	Quorum   int       // 0: every live node
	Deadline time.Time // the barrier timeout
}

// BarrierDecision is Check's answer.
type BarrierDecision int

// Decisions.
const (
	Wait        BarrierDecision = iota // not yet
	SwitchAll                          // every live node (or the quorum) has staged
	SwitchTimed                        // the deadline passed: switch those that have staged
)

// Check reports what to do at now, and the nodes that have staged the
// version (they are the ones told to switch).
func (b Barrier) Check(t *Table, now time.Time) (BarrierDecision, []string) {
	var staged []string
	live := 0
	for name, n := range t.nodes {
		r, ok := n.trees[b.Tree]
		if !ok || now.Sub(n.lastSeen) > t.cfg.LostAfter {
			continue
		}
		live++
		if r.Version == b.Version && (r.State == Staged || r.State == Switched) {
			staged = append(staged, name)
		}
	}
	need := live
	if b.Quorum > 0 && b.Quorum < need {
		need = b.Quorum
	}
	switch {
	case live > 0 && len(staged) >= need:
		return SwitchAll, staged
	case !now.Before(b.Deadline):
		return SwitchTimed, staged
	}
	return Wait, staged
}
