// Command zrun runs one program and records its resource usage:
//
//	zrun STATFILE PROGRAM [ARG...]
//
// It forks PROGRAM (which must be a path), forwards SIGINT, SIGTERM and SIGHUP to
// it, reaps it with wait4 and writes one line to STATFILE:
//
//	wall_ns user_us sys_us maxrss_kib exit_code signal
//
// then exits with PROGRAM's exit code (128+N if it died of signal N).
//
// It exists because Linux charges a process's ru_maxrss with the resident
// size of the image it replaced at execve: a child started directly by the
// harness (a Go process of a dozen MiB) would never report less than the
// harness. zrun is kept tiny (no dependencies beyond the runtime), so the
// floor it imposes is its own small size, which the harness measures and
// reports by running /bin/true through it.
package main

import (
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		os.Stderr.WriteString("usage: zrun STATFILE PROGRAM [ARG...]\n")
		os.Exit(125)
	}
	statPath, prog, argv := os.Args[1], os.Args[2], os.Args[2:]
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	t0 := time.Now()
	pid, err := syscall.ForkExec(prog, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		os.Stderr.WriteString("zrun: " + prog + ": " + err.Error() + "\n")
		os.Exit(127)
	}
	go func() {
		for s := range sigs {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	var ws syscall.WaitStatus
	var ru syscall.Rusage
	for {
		_, err = syscall.Wait4(pid, &ws, 0, &ru)
		if err != syscall.EINTR {
			break
		}
	}
	wall := time.Since(t0)
	if err != nil {
		os.Stderr.WriteString("zrun: wait4: " + err.Error() + "\n")
		os.Exit(125)
	}
	code, sig := ws.ExitStatus(), 0
	if ws.Signaled() {
		sig = int(ws.Signal())
		code = 128 + sig
	}
	line := strconv.FormatInt(int64(wall), 10) + " " +
		strconv.FormatInt(ru.Utime.Sec*1e6+ru.Utime.Usec, 10) + " " +
		strconv.FormatInt(ru.Stime.Sec*1e6+ru.Stime.Usec, 10) + " " +
		strconv.FormatInt(ru.Maxrss, 10) + " " +
		strconv.Itoa(code) + " " + strconv.Itoa(sig) + "\n"
	if err := os.WriteFile(statPath, []byte(line), 0o644); err != nil {
		os.Stderr.WriteString("zrun: " + err.Error() + "\n")
		os.Exit(125)
	}
	os.Exit(code)
}
