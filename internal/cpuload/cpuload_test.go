package cpuload

import (
	"errors"
	"os"
	"runtime"
	"testing"
)

func TestParseRunning(t *testing.T) {
	good := map[string]int{
		"0.20 0.18 0.12 3/123 4567\n": 3,
		"52.01 40.00 9.5 57/803 99":   57,
		"0.00 0.00 0.00 0/1 1":        0,
	}
	for in, want := range good {
		got, err := ParseRunning([]byte(in))
		if err != nil || got != want {
			t.Errorf("ParseRunning(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0.1 0.2 0.3", "0.1 0.2 0.3 7 1", "0.1 0.2 0.3 x/9 1", "0.1 0.2 0.3 -1/9 1"} {
		if n, err := ParseRunning([]byte(in)); err == nil {
			t.Errorf("ParseRunning(%q) = %d, want an error", in, n)
		}
	}
}

// fake is a governor over a scripted load, recording what it set.
type fake struct {
	g    *Governor
	load string
	err  error
	sets []int // GOMAXPROCS values set; 0 for a reset to the default
}

func newFake(cpus, max int, envSet bool) *fake {
	f := &fake{}
	f.g = &Governor{cpus: cpus, max: max, envSet: envSet,
		read:  func() ([]byte, error) { return []byte(f.load), f.err },
		set:   func(n int) { f.sets = append(f.sets, n) },
		reset: func() { f.sets = append(f.sets, 0) },
	}
	return f
}

func (f *fake) step(t *testing.T, load string, wantLimited bool, wantSets ...int) {
	t.Helper()
	f.load, f.sets = load, nil
	if got := f.g.Adjust(); got != wantLimited {
		t.Errorf("load %q: limited %v, want %v", load, got, wantLimited)
	}
	if len(f.sets) != len(wantSets) || (len(wantSets) == 1 && f.sets[0] != wantSets[0]) {
		t.Errorf("load %q: set %v, want %v", load, f.sets, wantSets)
	}
}

func TestAdjustLimitsOnlyWhileSaturated(t *testing.T) {
	f := newFake(2, 2, false)
	f.step(t, "0 0 0 1/100 1", false)    // idle: nothing to do
	f.step(t, "0 0 0 2/100 1", true, 1)  // both cores busy: one thread
	f.step(t, "0 0 0 51/100 1", true)    // still busy: not set again
	f.step(t, "0 0 0 1/100 1", false, 0) // idle again: the runtime's default
	f.step(t, "0 0 0 1/100 1", false)    // no change
	f.err = errors.New("no /proc")
	f.step(t, "", false) // unreadable: unchanged
}

func TestAdjustRestoresTheUsersLimit(t *testing.T) {
	f := newFake(8, 4, true)
	f.step(t, "0 0 0 9/100 1", true, 1)
	f.step(t, "0 0 0 3/100 1", false, 4) // GOMAXPROCS=4 given by the user, not the default
}

func TestAdjustNeverRaisesASingleThread(t *testing.T) {
	f := newFake(2, 1, true)
	f.step(t, "0 0 0 9/100 1", false)
	f.step(t, "0 0 0 0/100 1", false)
}

// The real governor on this machine: whatever the load, GOMAXPROCS ends
// at 1 when it reports limited and is restored after.
func TestAdjustRuntime(t *testing.T) {
	g := New("/proc/loadavg")
	if g.max <= 1 {
		t.Skip("GOMAXPROCS is already 1")
	}
	g.read = func() ([]byte, error) { return []byte("0 0 0 999/1000 1"), nil }
	if !g.Adjust() {
		t.Fatal("not limited under a saturated load")
	}
	if n := runtimeProcs(); n != 1 {
		t.Fatalf("GOMAXPROCS %d while limited, want 1", n)
	}
	g.read = func() ([]byte, error) { return []byte("0 0 0 0/1000 1"), nil }
	if g.Adjust() {
		t.Fatal("limited on an idle machine")
	}
	if n := runtimeProcs(); n != g.max {
		t.Fatalf("GOMAXPROCS %d after restoring, want %d", n, g.max)
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string]int{"0-1\n": 2, "0": 1, "0-3,6,8-9": 7, "5-5": 1} {
		if n, err := ParseCPUList([]byte(in)); err != nil || n != want {
			t.Errorf("ParseCPUList(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "x", "3-1", "0-", "-1", "0,,1"} {
		if n, err := ParseCPUList([]byte(in)); err == nil {
			t.Errorf("ParseCPUList(%q) = %d, want an error", in, n)
		}
	}
}

// The whole machine's CPUs, not this process's share: loadavg counts the
// whole machine's threads.
func TestHostCPUs(t *testing.T) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		t.Skip("no /sys/devices/system/cpu/online")
	}
	want, err := ParseCPUList(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := hostCPUs(); got != want || got < runtime.NumCPU() {
		t.Fatalf("hostCPUs() = %d, want %d (NumCPU %d)", got, want, runtime.NumCPU())
	}
}
