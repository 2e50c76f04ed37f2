package cli

import (
	"os"
	"runtime/debug"
)

// MemoryPolicy keeps zrecv's memory near what its credit window needs.
//
// zmq4 allocates a fresh buffer for every received frame, so a receiver
// produces garbage at the transfer rate, and without a limit the Go runtime
// returns freed memory to the system too slowly: peak RSS measured 70-120
// MiB with an 8 MiB window. A soft memory limit of a few windows makes the
// runtime collect and scavenge in time (measured 44 MiB peak RSS, same
// speed). The limit follows the window as it auto-tunes, and a GOMEMLIMIT
// set by the user always wins.
type MemoryPolicy struct {
	enabled bool
	window  uint64
}

// memoryBase is what the process needs beyond buffered data: runtime,
// code, stacks, the writer's queue.
const memoryBase = 24 << 20

// NewMemoryPolicy applies the limit for the default window until told more.
func NewMemoryPolicy() *MemoryPolicy {
	p := &MemoryPolicy{enabled: os.Getenv("GOMEMLIMIT") == ""}
	p.Window(8 << 20)
	return p
}

// Window sets the limit for a credit window of w bytes (0 = no news).
func (p *MemoryPolicy) Window(w uint64) {
	if !p.enabled || w == 0 || w == p.window {
		return
	}
	p.window = w
	debug.SetMemoryLimit(int64(memoryBase + 3*w))
}
