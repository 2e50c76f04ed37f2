// Package hooks runs a node's --check and --exec commands: through
// /bin/sh -c, with the version's facts in the environment, output captured
// up to a bound, and the whole process group killed after a timeout.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Env is what a hook is told about the version, as environment variables.
type Env struct {
	Tree        string // ZSND_TREE
	Version     string // ZSND_VERSION: version id, hex
	Seq         uint64 // ZSND_SEQ
	Path        string // ZSND_PATH: the stable path (or the staged directory for --check)
	PrevVersion string // ZSND_PREV_VERSION: "" on the first sync
	PrevSeq     uint64 // ZSND_PREV_SEQ
	Phase       string // ZSND_PHASE: "check", "exec" or "rollback"
}

func (e Env) vars() []string {
	return []string{
		"ZSND_TREE=" + e.Tree,
		"ZSND_VERSION=" + e.Version,
		fmt.Sprintf("ZSND_SEQ=%d", e.Seq),
		"ZSND_PATH=" + e.Path,
		"ZSND_PREV_VERSION=" + e.PrevVersion,
		fmt.Sprintf("ZSND_PREV_SEQ=%d", e.PrevSeq),
		"ZSND_PHASE=" + e.Phase,
	}
}

// Result of one run.
type Result struct {
	Exit     int // exit status; -1 when killed (timeout, signal) or not started
	Output   string
	Duration time.Duration
	TimedOut bool
	Err      error // nil when the command ran and exited 0
}

// OK reports success.
func (r Result) OK() bool { return r.Err == nil }

// ErrTimeout: the hook ran longer than its timeout and was killed.
var ErrTimeout = errors.New("hook timed out")

// boundedBuffer keeps the first max bytes written and counts the rest.
type boundedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.max - b.buf.Len()
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("%s\n...(%d more bytes dropped)", b.buf.String(), b.dropped)
	}
	return b.buf.String()
}

// Run runs cmd with /bin/sh -c in dir, stdout and stderr captured together
// up to maxOutput bytes. After timeout (or when ctx ends) the whole process
// group gets SIGKILL; Run returns once the shell has exited and its output
// pipe is closed or a short grace period has passed, so a hook that leaves
// a child holding the pipe cannot hold Run.
func Run(ctx context.Context, cmd string, dir string, env Env, timeout time.Duration, maxOutput int) Result {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if maxOutput <= 0 {
		maxOutput = 4096
	}
	start := time.Now()
	out := &boundedBuffer{max: maxOutput}
	c := exec.Command("/bin/sh", "-c", cmd)
	c.Dir = dir
	c.Env = append(os.Environ(), env.vars()...)
	c.Stdout, c.Stderr = out, out
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.WaitDelay = time.Second
	if err := c.Start(); err != nil {
		return Result{Exit: -1, Err: fmt.Errorf("starting hook: %w", err), Duration: time.Since(start)}
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var res Result
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		res.TimedOut = true
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		err = <-done
	case <-ctx.Done():
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		err = <-done
	}
	// Children left behind in the group go too.
	_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	res.Duration = time.Since(start)
	res.Output = out.String()
	res.Exit = -1
	if c.ProcessState != nil && c.ProcessState.Exited() {
		res.Exit = c.ProcessState.ExitCode()
	}
	switch {
	case res.TimedOut:
		res.Err = fmt.Errorf("%w after %v", ErrTimeout, timeout)
	case ctx.Err() != nil && err != nil:
		res.Err = fmt.Errorf("hook interrupted: %w", ctx.Err())
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) && res.Exit >= 0 {
			res.Err = fmt.Errorf("hook exited with status %d", res.Exit)
		} else {
			res.Err = fmt.Errorf("hook: %w", err)
		}
	}
	return res
}
