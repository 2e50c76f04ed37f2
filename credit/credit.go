// Package credit is ZSND's flow control, as pure logic: no I/O, no clocks
// (callers pass the time in), no goroutines.
//
// Credit is counted in bytes of chunk data and expressed as an absolute
// limit: "you may have sent Limit bytes of chunk data on this session in
// total". Limits only grow, so a duplicated, reordered or stale grant is
// harmless (the sender keeps the maximum it has seen).
//
// The receiver side (Window) grants credit as data is consumed, that is
// written to disk, so the bytes in flight plus the bytes buffered never
// exceed the window: memory is bounded by the window, not by file size.
// It sends an update once half of the window has been consumed, and it
// auto-tunes the window in the manner of quic-go's receive windows: once a
// whole window has been consumed since the last decision, if that took
// less than 4 round trips and the receiver has no backlog, the window was
// the bottleneck, so it doubles, up to a memory budget.
//
// The sender side (Gate) holds the highest limit received and the bytes
// sent; a chunk may be sent only if it fits entirely under the limit.
package credit

import (
	"errors"
	"fmt"
	"time"
)

// ErrOverrun means the peer sent more data than it was granted.
var ErrOverrun = errors.New("credit: peer sent data beyond the granted credit")

// Gate is the sender's view: how much it may still send.
type Gate struct {
	limit uint64
	sent  uint64
}

// Grant records a limit from the peer. Lower or equal limits are ignored.
// It reports whether the limit grew.
func (g *Gate) Grant(limit uint64) bool {
	if limit <= g.limit {
		return false
	}
	g.limit = limit
	return true
}

// Available is how many bytes may be sent now.
func (g *Gate) Available() uint64 {
	if g.sent >= g.limit {
		return 0
	}
	return g.limit - g.sent
}

// Take consumes n bytes of credit if they are all available.
func (g *Gate) Take(n uint64) bool {
	if n > g.Available() {
		return false
	}
	g.sent += n
	return true
}

// Sent is the total of chunk data sent so far.
func (g *Gate) Sent() uint64 { return g.sent }

// Limit is the highest limit granted so far.
func (g *Gate) Limit() uint64 { return g.limit }

// Auto-tuning constants. An update is sent when this fraction of the
// window has been consumed since the last grant; the window doubles when a
// window's worth was consumed in less than tuneRTTs round trips.
const (
	updateFraction = 0.125
	tuneRTTs       = 4
)

// Window is the receiver's view: what it has granted, received and consumed.
type Window struct {
	window    uint64 // current window size
	maxWindow uint64 // memory budget
	limit     uint64 // highest limit granted
	received  uint64 // chunk data bytes received
	consumed  uint64 // chunk data bytes fully processed

	rtt         time.Duration
	epochStart  time.Time
	epochOffset uint64
}

// NewWindow starts with an initial window and a maximum it may grow to.
// max below initial is raised to initial.
func NewWindow(initial, max uint64) *Window {
	if max < initial {
		max = initial
	}
	return &Window{window: initial, maxWindow: max}
}

// Start returns the first limit to grant (the initial window) and starts
// the first auto-tuning epoch at now.
func (w *Window) Start(now time.Time) uint64 {
	w.limit = w.consumed + w.window
	w.epochStart, w.epochOffset = now, w.consumed
	return w.limit
}

// SetRTT gives a round-trip sample. The window is tuned on the smallest
// sample seen: a sample taken while data is flowing includes the time spent
// queued behind that data (in socket buffers, at the sender), which grows
// with the window itself and would make every window look too small.
// Without any sample the window never grows.
func (w *Window) SetRTT(rtt time.Duration) {
	if rtt > 0 && (w.rtt == 0 || rtt < w.rtt) {
		w.rtt = rtt
	}
}

// Received accounts n bytes of arriving chunk data. It fails if they go
// beyond what was granted: the sender broke the protocol.
func (w *Window) Received(n uint64) error {
	if w.received+n > w.limit || w.received+n < w.received {
		return fmt.Errorf("%w: %d bytes received, %d granted", ErrOverrun, w.received+n, w.limit)
	}
	w.received += n
	return nil
}

// Consumed accounts n bytes as processed at time now. If an update is due
// it returns the new limit and true; the caller sends it as CREDIT.
func (w *Window) Consumed(n uint64, now time.Time) (uint64, bool) {
	w.consumed += n
	if w.consumed > w.received {
		// A caller bug, not a peer's: keep the invariant anyway.
		w.consumed = w.received
	}
	remaining := w.limit - w.consumed
	if float64(remaining) > float64(w.window)*(1-updateFraction) {
		return 0, false
	}
	if w.consumed-w.epochOffset >= w.window {
		w.autoTune(now)
	}
	w.limit = w.consumed + w.window
	return w.limit, true
}

// autoTune runs once a whole window has been consumed since the epoch
// began (judging by an eighth would mistake a burst of queued writes
// completing together for a fast link). It doubles the window if that took
// under tuneRTTs round trips and the receiver has no backlog, then starts
// a new epoch.
func (w *Window) autoTune(now time.Time) {
	defer func() { w.epochStart, w.epochOffset = now, w.consumed }()
	if w.rtt == 0 || w.window >= w.maxWindow {
		return
	}
	// A receiver with a backlog (data received, not yet consumed) is
	// limited by its own processing, not by the window: growing the window
	// would only buffer more. Only a starved receiver grows it.
	if w.received-w.consumed > w.window/4 {
		return
	}
	fraction := float64(w.consumed-w.epochOffset) / float64(w.window)
	if now.Sub(w.epochStart) < time.Duration(tuneRTTs*fraction*float64(w.rtt)) {
		w.window *= 2
		if w.window > w.maxWindow {
			w.window = w.maxWindow
		}
	}
}

// Size is the current window size.
func (w *Window) Size() uint64 { return w.window }

// Limit is the highest limit granted.
func (w *Window) Limit() uint64 { return w.limit }

// Unused is credit granted for which no data has arrived yet.
func (w *Window) Unused() uint64 { return w.limit - w.received }

// Outstanding is data received but not yet consumed.
func (w *Window) Outstanding() uint64 { return w.received - w.consumed }
