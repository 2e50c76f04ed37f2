package receiver

import "time"

// This file holds the receiver's budgets and clocks, the rules that bound
// every wait and every retry (README "Limits"):
//
//   - Timeout: how long the server may stay lost. The clock starts when the
//     last message of a session that verified data arrived (or at the start
//     of the fetch); a session that verifies no data does not restart it.
//   - Retries: per chunk. One chunk offset failing its BLAKE3 check Retries+1
//     times in a row fails the file; a chunk that fails elsewhere starts its
//     own count. The verified prefix is kept for a later run.
//   - Restarts: per file. Starting a file over (ERROR 409, a new version tag,
//     a whole-file mismatch) counts; past the budget the file fails.
//   - MinRate over RateWindow, and Deadline: progress must keep a pace.
//
// Progress, for all of them, is verified data: a chunk whose BLAKE3
// matched, or a file put in place.

// taskBudget is a task's share of the budgets, and its byte accounting.
type taskBudget struct {
	// failAt is the offset of the chunk that last failed verification and
	// fails how many times in a row it did.
	failAt int64
	fails  int
	// begun: a FILE was accepted in this fetch, so fromDisk is known.
	begun bool
	// fromDisk is how many bytes at the start of the current content came
	// from partial data of an earlier run (Result.Reused).
	fromDisk int64
	// best is the furthest the current content was verified in this
	// fetch: only data beyond it is progress, so a server that sends the
	// same chunks again after each reconnect makes none.
	best int64
}

// advanced records that the content is verified up to next and returns
// how many bytes of that are new in this fetch.
func (b *taskBudget) advanced(next int64) int64 {
	if next <= b.best {
		return 0
	}
	n := next - max(b.best, b.fromDisk)
	b.best = next
	return max(n, 0)
}

// chunkFailed counts a verification failure of the chunk at off and
// returns how many times in a row that chunk has failed.
func (b *taskBudget) chunkFailed(off int64) int {
	if b.fails == 0 || b.failAt != off {
		b.failAt, b.fails = off, 0
	}
	b.fails++
	return b.fails
}

// kept records that a FILE kept the first reuse bytes of what the task
// held (0: starting over).
func (b *taskBudget) kept(reuse int64) {
	if !b.begun {
		b.begun, b.fromDisk = true, reuse
		return
	}
	b.fromDisk = min(b.fromDisk, reuse)
}

// restarted records that the task dropped what it held.
func (b *taskBudget) restarted() { b.fromDisk, b.best = 0, 0 }

// counts splits the bytes of t: Reused + Wire is what is verified of the
// current content; Refetched is what else came over the network.
func (t *task) counts() (wire, reused, refetched int64) {
	reused = t.b.fromDisk
	done := t.next
	if t.done && t.err == nil {
		done = t.size
	}
	wire = max(done-reused, 0)
	refetched = max(t.wire-wire, 0)
	return wire, reused, refetched
}

// rateMeter checks that verified data keeps a minimum pace: over any
// window of its length, at least min bytes per second on average. Time is
// passed in, so it is tested without sleeping.
type rateMeter struct {
	min    float64 // bytes per second; 0: off
	window time.Duration
	start  time.Time
	total  int64
	marks  []rateMark // (time, total) at least every window/8, back to one before now-window
}

type rateMark struct {
	at    time.Time
	total int64
}

func newRateMeter(minRate int64, window time.Duration, now time.Time) *rateMeter {
	m := &rateMeter{window: window, start: now}
	if minRate > 0 && window > 0 {
		m.min = float64(minRate)
	}
	m.marks = []rateMark{{now, 0}}
	return m
}

// add counts n verified bytes at now.
func (m *rateMeter) add(n int64, now time.Time) {
	m.total += n
	m.mark(now)
}

func (m *rateMeter) mark(now time.Time) {
	if last := m.marks[len(m.marks)-1]; now.Sub(last.at) >= m.window/8 {
		m.marks = append(m.marks, rateMark{now, m.total})
	}
	// Keep one mark at or before now-window, to measure from.
	for len(m.marks) > 1 && !m.marks[1].at.After(now.Add(-m.window)) {
		m.marks = m.marks[1:]
	}
}

// slow reports whether less than the minimum was verified over the last
// window, and the average rate over it. It never fires before a whole
// window has passed since the start.
func (m *rateMeter) slow(now time.Time) (bool, float64) {
	if m.min == 0 {
		return false, 0
	}
	m.mark(now)
	from := m.marks[0]
	span := now.Sub(from.at)
	if now.Sub(m.start) < m.window || span <= 0 {
		return false, 0
	}
	rate := float64(m.total-from.total) / span.Seconds()
	return rate < m.min, rate
}
