// Package bench is the benchmark harness of zsend/zrecv: a process runner
// that measures each process separately (wall time, user and system CPU,
// peak RSS from wait4), the baseline tools it compares against (a raw zmq4
// ROUTER->DEALER stream, a plain TCP copy, a delay proxy), the scenarios of
// scripts/bench.sh, and the renderer of BENCHMARKS.md.
//
// Everything runs on 127.0.0.1, every wait is bounded, and every process the
// harness starts is put in its own process group so that it (and anything it
// forks, such as an rsync daemon's per-connection children) can be killed.
package bench

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcStat is what the runner measured for one process.
type ProcStat struct {
	Role     string  `json:"role"`
	Wall     float64 `json:"wall_s"`   // start to exit, seconds
	User     float64 `json:"user_s"`   // user CPU seconds (including waited-for children)
	Sys      float64 `json:"sys_s"`    // system CPU seconds (including waited-for children)
	MaxRSS   int64   `json:"maxrss_b"` // peak resident set, bytes (max over the process and its waited-for children)
	ExitCode int     `json:"exit"`
}

// CPU is user+system seconds.
func (p ProcStat) CPU() float64 { return p.User + p.Sys }

// Proc is a process started by the runner.
type Proc struct {
	Role string

	cmd   *exec.Cmd
	start time.Time
	done  chan struct{} // closed when the process has been reaped
	end   time.Time
	werr  error

	statFile string // zrun's report, when started through the Launcher

	mu     sync.Mutex
	lines  []string // every stderr line (bounded)
	gone   int      // lines dropped from the front of lines to keep it bounded
	waitCh chan struct{}
	eof    chan struct{} // closed when stderr reached EOF
}

const maxKeptLines = 5000

// live holds every process that has not been reaped yet, for KillAll.
var (
	liveMu sync.Mutex
	live   = map[*Proc]struct{}{}
)

// Launcher, when Path is set, is the zrun binary (bench/cmd/zrun) through
// which every process is started; it writes each process's wait4 figures
// to a file in Dir. Without it the runner reaps processes itself, and every
// process's ru_maxrss is at least the harness's own resident size (Linux
// carries the replaced image's peak over execve).
var Launcher struct{ Path, Dir string }

var statSeq struct {
	sync.Mutex
	n int
}

// Start runs name with args. Its stderr is collected line by line (see
// WaitLine and Stderr); its stdout goes to stdout if not nil, else to
// /dev/null. The process gets its own process group and is killed if the
// harness dies (PR_SET_PDEATHSIG).
func Start(role string, stdout *os.File, name string, args ...string) (*Proc, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	p := &Proc{Role: role, done: make(chan struct{}), waitCh: make(chan struct{}, 1), eof: make(chan struct{})}
	if Launcher.Path != "" {
		statSeq.Lock()
		statSeq.n++
		p.statFile = fmt.Sprintf("%s/%06d.stat", Launcher.Dir, statSeq.n)
		statSeq.Unlock()
		args = append([]string{p.statFile, path}, args...)
		path = Launcher.Path
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout = stdout // nil means /dev/null
	cmd.Stderr = w      // an *os.File: no copying goroutine, so Wait returns at exit
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd = cmd
	liveMu.Lock()
	defer liveMu.Unlock()
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	w.Close()
	live[p] = struct{}{}
	go p.readLines(r)
	go func() {
		p.werr = cmd.Wait()
		p.end = time.Now()
		liveMu.Lock()
		delete(live, p)
		liveMu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *Proc) readLines(r *os.File) {
	defer close(p.eof)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		if len(p.lines) >= maxKeptLines {
			copy(p.lines, p.lines[1:])
			p.lines = p.lines[:len(p.lines)-1]
			p.gone++
		}
		p.lines = append(p.lines, sc.Text())
		p.mu.Unlock()
		select {
		case p.waitCh <- struct{}{}:
		default:
		}
	}
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stderr returns the last n lines the process wrote to stderr.
func (p *Proc) Stderr(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// tail is the last stderr lines as an error suffix ("" if none).
func (p *Proc) tail() string {
	if t := strings.TrimSpace(p.Stderr(20)); t != "" {
		return "\n" + t
	}
	return ""
}

// WaitLine waits until a stderr line matches re and returns its submatches.
// It fails if the process exits first or timeout passes.
func (p *Proc) WaitLine(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		// seen counts lines since the start; lines may have been dropped
		// from the front meanwhile (a chatty process).
		seen = max(seen, p.gone)
		for ; seen < p.gone+len(p.lines); seen++ {
			if m := re.FindStringSubmatch(p.lines[seen-p.gone]); m != nil {
				p.mu.Unlock()
				return m, nil
			}
		}
		p.mu.Unlock()
		select {
		case <-p.waitCh:
		case <-p.done:
			// Give the reader a moment to deliver the last lines.
			select {
			case <-p.eof:
			case <-time.After(200 * time.Millisecond):
			}
			p.mu.Lock()
			seen = max(seen, p.gone)
			for ; seen < p.gone+len(p.lines); seen++ {
				if m := re.FindStringSubmatch(p.lines[seen-p.gone]); m != nil {
					p.mu.Unlock()
					return m, nil
				}
			}
			p.mu.Unlock()
			return nil, fmt.Errorf("%s exited before printing /%s/: %v%s", p.Role, re, p.werr, p.tail())
		case <-deadline.C:
			return nil, fmt.Errorf("%s: no line matching /%s/ within %v%s", p.Role, re, timeout, p.tail())
		}
	}
}

// ErrTimeout is wrapped by Wait when a process had to be killed.
var ErrTimeout = errors.New("timed out")

// Wait waits up to timeout for the process to exit on its own; after that it
// kills the whole process group. It returns the measurements and an error
// if the process timed out or exited with a non-zero status.
func (p *Proc) Wait(timeout time.Duration) (ProcStat, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.stat()
	case <-t.C:
		p.Kill()
		<-p.done
		st, _ := p.stat()
		return st, fmt.Errorf("%s: %w after %v (killed)%s", p.Role, ErrTimeout, timeout.Round(time.Millisecond), p.tail())
	}
}

// WaitUntil is Wait with an absolute deadline, for groups of processes
// that share one bound.
func (p *Proc) WaitUntil(deadline time.Time) (ProcStat, error) {
	return p.Wait(max(time.Until(deadline), time.Millisecond))
}

// Stop sends sig to the process (not its group), then waits up to timeout
// before killing the group. A process ended by sig is not an error.
func (p *Proc) Stop(sig syscall.Signal, timeout time.Duration) (ProcStat, error) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
	st, err := p.Wait(timeout)
	if err != nil && !errors.Is(err, ErrTimeout) && p.signaled(sig) {
		err = nil
	}
	return st, err
}

func (p *Proc) signaled(sig syscall.Signal) bool {
	if p.statFile != "" {
		if f, err := p.readStat(); err == nil {
			return f[5] == int64(sig)
		}
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// readStat parses zrun's line: wall_ns user_us sys_us maxrss_kib exit signal.
func (p *Proc) readStat() ([6]int64, error) {
	var f [6]int64
	b, err := os.ReadFile(p.statFile)
	if err != nil {
		return f, err
	}
	fields := strings.Fields(string(b))
	if len(fields) != 6 {
		return f, fmt.Errorf("%s: malformed %q", p.statFile, b)
	}
	for i, s := range fields {
		if f[i], err = strconv.ParseInt(s, 10, 64); err != nil {
			return f, err
		}
	}
	return f, nil
}

// Kill sends SIGKILL to the process group (harmless if it is gone).
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// Running reports whether the process has not been reaped yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Children returns the pids of the program's current children (through
// /proc/PID/task/PID/children; empty if unavailable). With the Launcher,
// the program is zrun's child, so these are zrun's grandchildren.
func (p *Proc) Children() []string {
	kids := children(p.PID())
	if p.statFile == "" {
		return kids
	}
	var out []string
	for _, k := range kids {
		out = append(out, children(k)...)
	}
	return out
}

// children lists the children of every thread of pid: a child is listed
// under the thread that forked it, which for a Go program (zrun) need not
// be the main one.
func children(pid any) []string {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%v/task/*/children", pid))
	var out []string
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err == nil {
			out = append(out, strings.Fields(string(b))...)
		}
	}
	return out
}

func (p *Proc) stat() (ProcStat, error) {
	ps := p.cmd.ProcessState
	st := ProcStat{Role: p.Role, Wall: p.end.Sub(p.start).Seconds(), ExitCode: ps.ExitCode()}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		st.User = time.Duration(ru.Utime.Nano()).Seconds()
		st.Sys = time.Duration(ru.Stime.Nano()).Seconds()
		st.MaxRSS = ru.Maxrss * 1024 // Linux reports KiB
	}
	if p.statFile != "" {
		f, err := p.readStat()
		if err != nil {
			// zrun itself was killed: only its own figures are known.
			return st, fmt.Errorf("%s: no resource figures (%v): %v%s", p.Role, err, p.werr, p.tail())
		}
		st.Wall = time.Duration(f[0]).Seconds()
		st.User = float64(f[1]) / 1e6
		st.Sys = float64(f[2]) / 1e6
		st.MaxRSS = f[3] * 1024
		st.ExitCode = int(f[4])
	}
	if p.werr != nil {
		return st, fmt.Errorf("%s: %v%s", p.Role, p.werr, p.tail())
	}
	return st, nil
}

// Started is when the process was started.
func (p *Proc) Started() time.Time { return p.start }

// Ended is when the process was reaped (zero while it runs).
func (p *Proc) Ended() time.Time {
	select {
	case <-p.done:
		return p.end
	default:
		return time.Time{}
	}
}

// KillAll kills the process groups of every process not yet reaped.
func KillAll() {
	liveMu.Lock()
	ps := make([]*Proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		p.Kill()
	}
}

// LinesFrom returns the stderr lines from index i on (counted from the
// process's first line) and the index after the last one returned. Lines
// dropped from the rolling window before i was read are skipped.
func (p *Proc) LinesFrom(i int) ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i = max(i, p.gone)
	end := p.gone + len(p.lines)
	if i >= end {
		return nil, end
	}
	return append([]string(nil), p.lines[i-p.gone:]...), end
}

// ProgramPID is the pid of the measured program itself: zrun's child when
// started through the Launcher (0 if it is gone), else the process's own.
func (p *Proc) ProgramPID() int {
	if p.statFile == "" {
		return p.PID()
	}
	kids := children(p.PID())
	if len(kids) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(kids[0])
	return pid
}
