// Package cpuload decides how many threads zrecv gives a sync: more than
// one only while the machine has an idle core.
//
// A sync's heavy part is system calls (the check of every file of a
// tree): two threads halve its wall time on an idle machine, but when
// every core is already busy a second thread only time-shares with the
// first, and the Go scheduler's spinning threads and hand-offs add CPU
// the host's own work pays for. A follower is a background agent: on a
// saturated host it should take one core at most. Measured with 50
// followers sharing 2 cores (BENCHMARKS.md, propagation), one thread under
// saturation brought the last follower's switch from 3.45 s to 2.52 s
// (p50) in the same session.
//
// The signal is /proc/loadavg, read as a sync starts: the machine is
// saturated while its runnable threads (this process's own included) are
// at least as many as its CPUs, or while its one-minute load average is.
// The instant count alone misses a burst that is only beginning (50
// followers woken by one announcement read it before most of them run);
// the average keeps a host that has been busy counted as busy for a
// minute or two after. The threads are limited through
// runtime.GOMAXPROCS; a limit given by the user (the GOMAXPROCS
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

// ParseLoad returns the one-minute load average and the runnable threads
// from the content of /proc/loadavg: "0.20 0.18 0.12 3/123 4567" gives
// 0.20 and 3.
func ParseLoad(b []byte) (load1 float64, running int, err error) {
	f := bytes.Fields(b)
	if len(f) < 4 {
		return 0, 0, errors.New("loadavg: fewer than 4 fields")
	}
	load1, err = strconv.ParseFloat(string(f[0]), 64)
	if err != nil || !(load1 >= 0) {
		return 0, 0, errors.New("loadavg: bad load average")
	}
	r, _, ok := bytes.Cut(f[3], []byte("/"))
	if !ok {
		return 0, 0, errors.New("loadavg: no running/total field")
	}
	running, err = strconv.Atoi(string(r))
	if err != nil || running < 0 {
		return 0, 0, errors.New("loadavg: bad running count")
	}
	return load1, running, nil
}

// Governor sets GOMAXPROCS to 1 while the machine is saturated and back
// to the default otherwise. The zero value is not usable: see New.
type Governor struct {
	mu      sync.Mutex
	cpus    int                    // cores of the machine
	max     int                    // GOMAXPROCS when not limited
	envSet  bool                   // the user set GOMAXPROCS: restore max, not the runtime's default
	limited bool                   // GOMAXPROCS is 1 because of us
	read    func() ([]byte, error) // /proc/loadavg
	set     func(int)              // runtime.GOMAXPROCS
	reset   func()                 // runtime.SetDefaultGOMAXPROCS
}

// New returns the governor of this process.
func New() *Governor {
	_, envSet := os.LookupEnv("GOMAXPROCS")
	return &Governor{
		cpus:   runtime.NumCPU(),
		max:    runtime.GOMAXPROCS(0),
		envSet: envSet,
		read:   func() ([]byte, error) { return os.ReadFile("/proc/loadavg") },
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
	load1, running, err := ParseLoad(b)
	if err != nil {
		return g.limited
	}
	busy := running >= g.cpus || load1 >= float64(g.cpus)
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
