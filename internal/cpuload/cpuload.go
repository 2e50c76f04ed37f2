// Package cpuload decides how many threads zrecv gives a sync: more than
// one only while the machine has an idle core.
//
// A sync's heavy part is system calls (the check of every file of a
// tree): two threads halve its wall time on an idle machine, but when
// every core is already busy a second thread only time-shares with the
// first, and the Go scheduler's spinning threads and hand-offs add CPU
// the host's own work pays for. A follower is a background agent: on a
// saturated host it should take one core at most. Measured: a follower
// of a 10,000-file tree beside two CPU burners spent 146-176 ms of CPU per
// one-file version with two threads, 110-127 ms with one (README, "CPU on
// a busy host").
//
// The signal is /proc/loadavg's count of runnable threads, read as a sync
// starts (this process's own included): at least as many as there are
// CPUs means no core is idle now. The load averages are not used: they
// lag by minutes, and a one-shot sync on a machine that was busy a moment
// ago but is idle now should have both cores. The threads are limited
// through runtime.GOMAXPROCS; a limit given by the user (the GOMAXPROCS
// environment variable) is never exceeded.
package cpuload

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strconv"
	"sync"
)

// ParseRunning returns the runnable threads from the content of
// /proc/loadavg: "0.20 0.18 0.12 3/123 4567" gives 3.
func ParseRunning(b []byte) (int, error) {
	f := bytes.Fields(b)
	if len(f) < 4 {
		return 0, errors.New("loadavg: fewer than 4 fields")
	}
	r, _, ok := bytes.Cut(f[3], []byte("/"))
	if !ok {
		return 0, errors.New("loadavg: no running/total field")
	}
	n, err := strconv.Atoi(string(r))
	if err != nil || n < 0 {
		return 0, errors.New("loadavg: bad running count")
	}
	return n, nil
}

// ParseCPUList counts the CPUs of a kernel CPU list such as
// /sys/devices/system/cpu/online's "0-3,6,8-9" (7).
func ParseCPUList(b []byte) (int, error) {
	n := 0
	for _, part := range bytes.Split(bytes.TrimSpace(b), []byte(",")) {
		lo, hi, isRange := bytes.Cut(part, []byte("-"))
		a, err := strconv.Atoi(string(lo))
		if err != nil || a < 0 {
			return 0, errors.New("cpu list: bad number")
		}
		z := a
		if isRange {
			if z, err = strconv.Atoi(string(hi)); err != nil || z < a {
				return 0, errors.New("cpu list: bad range")
			}
		}
		n += z - a + 1
	}
	return n, nil
}

// hostCPUs is the number of online CPUs of the machine: what
// /proc/loadavg's count is to be compared with. runtime.NumCPU counts
// only the CPUs this process may run on (a container pinned to two
// CPUs of a large host would count itself saturated whenever two
// threads anywhere on the host are runnable).
func hostCPUs() int {
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if n, err := ParseCPUList(b); err == nil && n > 0 {
			return n
		}
	}
	return runtime.NumCPU()
}

// Governor sets GOMAXPROCS to 1 while the machine is saturated and back
// to the default otherwise. The zero value is not usable: see New.
type Governor struct {
	mu      sync.Mutex
	cpus    int                    // online CPUs of the machine
	max     int                    // GOMAXPROCS when not limited
	envSet  bool                   // the user set GOMAXPROCS: restore max, not the runtime's default
	limited bool                   // GOMAXPROCS is 1 because of us
	read    func() ([]byte, error) // /proc/loadavg
	set     func(int)              // runtime.GOMAXPROCS
	reset   func()                 // runtime.SetDefaultGOMAXPROCS
}

// New returns the governor of this process, reading loadavg (normally
// /proc/loadavg).
func New(loadavg string) *Governor {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	return &Governor{
		cpus:   hostCPUs(),
		max:    runtime.GOMAXPROCS(0),
		envSet: envSet,
		read:   func() ([]byte, error) { return os.ReadFile(loadavg) },
		set:    func(n int) { runtime.GOMAXPROCS(n) },
		reset:  runtime.SetDefaultGOMAXPROCS,
	}
}

// Adjust samples the machine's load and limits or restores GOMAXPROCS;
// call it as a sync starts. It reports whether this process is now
// limited to one thread. Without a readable load (not Linux) it changes
// nothing.
func (g *Governor) Adjust() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.max <= 1 {
		return false
	}
	b, err := g.read()
	if err != nil {
		return g.limited
	}
	running, err := ParseRunning(b)
	if err != nil {
		return g.limited
	}
	busy := running >= g.cpus
	switch {
	case busy && !g.limited:
		g.set(1)
	case !busy && g.limited && g.envSet:
		g.set(g.max)
	case !busy && g.limited:
		g.reset()
	}
	g.limited = busy
	return busy
}
