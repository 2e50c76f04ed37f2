package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// The tree scenarios (issue 9): a configuration tree of TreeN files of
// 0..TreeMax bytes in TreeDirs directories, mirrored by zrecv (durable,
// verified, atomic switch) and by rsync -a (with and without --fsync), for
// a first copy, a one-file change and no change; and the peak RSS of both
// sides for a tree of TreeMemN entries.

// GenTree writes n files of 0..maxSize pseudo-random bytes spread over dirs
// directories (d000/f00000 ...) below dir, seeded, and returns the total
// size. It does not fsync.
func GenTree(dir string, n, dirs int, maxSize int64, seed uint64) (int64, error) {
	if dirs < 1 {
		dirs = 1
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	r := rand.New(src)
	buf := make([]byte, maxSize)
	var total int64
	for d := 0; d < dirs; d++ {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%03d", d)), 0o755); err != nil {
			return total, err
		}
	}
	for i := 0; i < n; i++ {
		size := r.Int64N(maxSize + 1)
		_, _ = src.Read(buf[:size])
		p := filepath.Join(dir, fmt.Sprintf("d%03d", i%dirs), fmt.Sprintf("f%05d", i))
		if err := os.WriteFile(p, buf[:size], 0o644); err != nil {
			return total, err
		}
		total += size
	}
	return total, nil
}

// TreeDigest is a digest of a tree's listing and contents: every path
// (sorted), its type, permission bits, size and, for files, BLAKE3 of the
// content; symlink targets. Two trees with equal digests have the same
// content (mtimes are not compared: rsync -a and zrecv both keep them,
// the fidelity tests check them).
func TreeDigest(dir string) (string, int, error) {
	type ent struct{ rel, line string }
	var ents []ent
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v %o %d", rel, fi.Mode().Type(), fi.Mode().Perm(), fi.Size())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", blake3.Sum256(b))
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + t
		}
		ents = append(ents, ent{rel, line})
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].rel < ents[j].rel })
	h := blake3.New()
	for _, e := range ents {
		h.Write([]byte(e.line + "\n"))
	}
	return fmt.Sprintf("%x", h.Sum(nil)), len(ents), nil
}

// MakeTree is the local floor of the tree scenario: it copies the tree at
// src into a staging directory beside out with the file-system steps a
// durable, atomic mirror cannot avoid, and nothing else (no network, no
// hashing): a directory per source directory, a file per source file
// (written, mode and mtime set), one syncfs, a rename of the staging
// directory to a version directory, a symlink renamed over out. It returns
// the bytes written.
func MakeTree(ctx context.Context, src, out string) (int64, error) {
	stage := out + ".stage"
	ver := out + ".v1"
	var total int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(stage, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(dst, fi.Mode().Perm())
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := f.Write(b); err != nil {
				f.Close()
				return err
			}
			ts := []unix.Timespec{unix.NsecToTimespec(fi.ModTime().UnixNano()), unix.NsecToTimespec(fi.ModTime().UnixNano())}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, 0); err != nil {
				f.Close()
				return err
			}
			total += int64(len(b))
			return f.Close()
		}
		return nil
	})
	if err != nil {
		return total, err
	}
	d, err := os.Open(stage)
	if err != nil {
		return total, err
	}
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if err != nil {
		return total, err
	}
	if err := os.Rename(stage, ver); err != nil {
		return total, err
	}
	if err := os.Symlink(filepath.Base(ver), out+".tmp"); err != nil {
		return total, err
	}
	return total, os.Rename(out+".tmp", out)
}

var rePublished = regexp.MustCompile(`published (\S+) version (\d+)`)

// treeServer is a zsend serving the tree with its own state directory,
// started and waited for until it has published.
type treeServer struct {
	p   *Proc
	ep  string
	seq int
}

func (s *Suite) startTreeZsend(tree, state string) (*treeServer, error) {
	p, err := Start("sender", nil, s.bin("zsend"), "-b", "tcp://127.0.0.1:0", "--state-dir", state, tree)
	if err != nil {
		return nil, err
	}
	m, err := p.WaitLine(reZsend, startTimeout)
	if err != nil {
		p.Kill()
		return nil, err
	}
	ts := &treeServer{p: p, ep: m[1]}
	pm, err := p.WaitLine(rePublished, timeoutFor(1<<30))
	if err != nil {
		p.Kill()
		return nil, err
	}
	ts.seq, _ = strconv.Atoi(pm[2])
	return ts, nil
}

// republish sends SIGHUP and waits for the next version to be published.
func (t *treeServer) republish() error {
	if err := syscall.Kill(t.p.PID(), syscall.SIGHUP); err != nil {
		return err
	}
	want := regexp.MustCompile(fmt.Sprintf(`published (\S+) version %d\b`, t.seq+1))
	if _, err := t.p.WaitLine(want, 2*time.Minute); err != nil {
		return err
	}
	t.seq++
	return nil
}

func (s *Suite) zrecvTree(ep, out string, timeout time.Duration) (ProcStat, error) {
	cli, err := Start("receiver", nil, s.bin("zrecv"), "-q", "-o", out, ep, "tree")
	if err != nil {
		return ProcStat{}, err
	}
	defer cli.Kill()
	return cli.Wait(timeout)
}

func (s *Suite) verifyTree(out string) error {
	// The stable path is a symlink to the version directory.
	real, err := filepath.EvalSymlinks(out)
	if err != nil {
		return err
	}
	got, n, err := TreeDigest(real)
	if err != nil {
		return fmt.Errorf("digest of the copy: %w", err)
	}
	want, m, err := TreeDigest(filepath.Join(s.src, "tree"))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("copy differs from the source (%d entries vs %d)", n, m)
	}
	return nil
}

// changeOne rewrites one file of the source tree with new content.
func (s *Suite) changeOne(round int) error {
	p := filepath.Join(s.src, "tree", "d000", "f00000")
	b := make([]byte, 4096)
	for i := range b {
		b[i] = byte(round*31 + i)
	}
	return os.WriteFile(p, b, 0o644)
}

// zsendTree measures zrecv mirroring the tree: mode "first" (empty
// destination), "change" (one file changed since the last sync, published
// with SIGHUP before the timed run; the destination has synced three
// versions), "change-second" (the same, as the second version synced) or
// "none" (nothing changed).
func (s *Suite) zsendTree(ctx context.Context, mode string, round *int) (Run, error) {
	out, err := s.outDir("zrecv")
	if err != nil {
		return Run{}, err
	}
	state, err := s.outDir("zsend-state")
	if err != nil {
		return Run{}, err
	}
	srv, err := s.startTreeZsend(filepath.Join(s.src, "tree"), state)
	if err != nil {
		return Run{}, err
	}
	defer srv.p.Kill()
	to := timeoutFor(s.treeBytes) + time.Duration(s.cfg.TreeN)*10*time.Millisecond
	if mode != "first" {
		if _, err := s.zrecvTree(srv.ep, out, to); err != nil {
			return Run{}, fmt.Errorf("initial sync: %w", err)
		}
	}
	if mode == "change" {
		// Steady state: two more versions synced (untimed), so the
		// destination has pruned one and recycles it, as a node that
		// has followed the tree for a while does. "change-second" times
		// the second version instead (nothing pruned yet).
		for k := 0; k < 2; k++ {
			*round++
			if err := s.changeOne(*round); err != nil {
				return Run{}, err
			}
			if err := srv.republish(); err != nil {
				return Run{}, err
			}
			if _, err := s.zrecvTree(srv.ep, out, to); err != nil {
				return Run{}, fmt.Errorf("untimed sync %d: %w", k+2, err)
			}
		}
	}
	var bytes int64
	if mode == "change" || mode == "change-second" {
		*round++
		if err := s.changeOne(*round); err != nil {
			return Run{}, err
		}
		if err := srv.republish(); err != nil {
			return Run{}, err
		}
		bytes = 4096
	} else if mode == "first" {
		bytes = s.treeBytes
	}
	cst, cerr := s.zrecvTree(srv.ep, out, to)
	sst, serr := stopServer(srv.p)
	run := Run{Bytes: bytes, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	return run, s.verifyTree(filepath.Join(out, "tree"))
}

// rsyncTree measures rsync -a of the tree from a fresh daemon, in the same
// modes as zsendTree (the untimed preparation uses the same daemon).
func (s *Suite) rsyncTree(ctx context.Context, mode string, fsync bool, round *int) (Run, error) {
	out, err := s.outDir("rsync")
	if err != nil {
		return Run{}, err
	}
	d, port, err := s.startRsyncd()
	if err != nil {
		return Run{}, err
	}
	defer d.Kill()
	args := []string{"-a"}
	if fsync {
		args = append(args, "--fsync")
	}
	args = append(args, fmt.Sprintf("rsync://127.0.0.1:%d/bench/tree/", port), filepath.Join(out, "tree")+"/")
	to := timeoutFor(s.treeBytes) + time.Duration(s.cfg.TreeN)*10*time.Millisecond
	if mode != "first" {
		p, err := Start("receiver", nil, "rsync", args...)
		if err != nil {
			return Run{}, err
		}
		if _, err := p.Wait(to); err != nil {
			return Run{}, fmt.Errorf("initial rsync: %w", err)
		}
	}
	var bytes int64
	switch mode {
	case "change":
		*round++
		if err := s.changeOne(*round); err != nil {
			return Run{}, err
		}
		bytes = 4096
	case "first":
		bytes = s.treeBytes
	}
	cli, err := Start("receiver", nil, "rsync", args...)
	if err != nil {
		return Run{}, err
	}
	defer cli.Kill()
	cst, cerr := cli.Wait(to)
	deadline := time.Now().Add(10 * time.Second)
	for len(d.Children()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sst, serr := stopServer(d)
	run := Run{Bytes: bytes, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}
	if err := errors.Join(cerr, serr); err != nil {
		return run, err
	}
	return run, s.verifyTree(filepath.Join(out, "tree"))
}

// treeFloor runs zbench mktree: the file-system work of a first sync alone.
func (s *Suite) treeFloor(ctx context.Context) (Run, error) {
	out, err := s.outDir("floor")
	if err != nil {
		return Run{}, err
	}
	p, err := Start("receiver", nil, s.bin("zbench"), "mktree", filepath.Join(s.src, "tree"), filepath.Join(out, "tree"))
	if err != nil {
		return Run{}, err
	}
	defer p.Kill()
	st, err := p.Wait(timeoutFor(s.treeBytes) + time.Duration(s.cfg.TreeN)*10*time.Millisecond)
	return Run{Bytes: s.treeBytes, Wall: st.Wall, Procs: []ProcStat{st}}, err
}

// zsendTreeMem: peak RSS of both sides for the TreeMemN-entry tree.
func (s *Suite) zsendTreeMem(ctx context.Context) (Run, error) {
	out, err := s.outDir("zrecv")
	if err != nil {
		return Run{}, err
	}
	state, err := s.outDir("zsend-state")
	if err != nil {
		return Run{}, err
	}
	cli := func(ep string) (ProcStat, error) {
		p, err := Start("receiver", nil, s.bin("zrecv"), "-q", "-o", out, ep, "memtree")
		if err != nil {
			return ProcStat{}, err
		}
		defer p.Kill()
		return p.Wait(timeoutFor(s.memTreeBytes) + time.Duration(s.cfg.TreeMemN)*10*time.Millisecond)
	}
	p, err := Start("sender", nil, s.bin("zsend"), "-b", "tcp://127.0.0.1:0", "--state-dir", state, filepath.Join(s.src, "memtree"))
	if err != nil {
		return Run{}, err
	}
	defer p.Kill()
	m, err := p.WaitLine(reZsend, startTimeout)
	if err != nil {
		return Run{}, err
	}
	if _, err := p.WaitLine(rePublished, timeoutFor(1<<30)+time.Duration(s.cfg.TreeMemN)*10*time.Millisecond); err != nil {
		return Run{}, err
	}
	cst, cerr := cli(m[1])
	sst, serr := stopServer(p)
	return Run{Bytes: s.memTreeBytes, Wall: cst.Wall, Procs: []ProcStat{sst, cst}}, errors.Join(cerr, serr)
}

// startRsyncd starts an rsync daemon serving the sources on a free port.
func (s *Suite) startRsyncd() (*Proc, int, error) {
	conf := filepath.Join(s.cfg.Work, "rsyncd.conf")
	if _, err := os.Stat(conf); err != nil {
		text := fmt.Sprintf("use chroot = no\nuid = %d\ngid = %d\nlog file = /dev/stderr\nnumeric ids = yes\n\n[bench]\n  path = %s\n  read only = yes\n",
			os.Getuid(), os.Getgid(), s.src)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, 0, err
		}
	}
	port, err := FreePort()
	if err != nil {
		return nil, 0, err
	}
	d, err := Start("sender", nil, "rsync", "--daemon", "--no-detach", "--address=127.0.0.1",
		"--port="+strconv.Itoa(port), "--config="+conf)
	if err != nil {
		return nil, 0, err
	}
	if _, err := d.WaitLine(reRsync, startTimeout); err != nil {
		d.Kill()
		return nil, 0, err
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), d, startTimeout); err != nil {
		d.Kill()
		return nil, 0, err
	}
	return d, port, nil
}

func (s *Suite) generateTrees() error {
	c := s.cfg
	if s.want("tree") {
		t0 := time.Now()
		n, err := GenTree(filepath.Join(s.src, "tree"), c.TreeN, c.TreeDirs, c.TreeMax, 7)
		if err != nil {
			return err
		}
		s.treeBytes = n
		s.logf("generated a tree of %d files in %d directories, %s, in %.1fs", c.TreeN, c.TreeDirs, FormatSize(n), time.Since(t0).Seconds())
	}
	if s.want("treemem") {
		t0 := time.Now()
		n, err := GenTree(filepath.Join(s.src, "memtree"), c.TreeMemN, max(c.TreeMemN/100, 1), 256, 8)
		if err != nil {
			return err
		}
		s.memTreeBytes = n
		s.logf("generated a tree of %d files, %s, in %.1fs", c.TreeMemN, FormatSize(n), time.Since(t0).Seconds())
	}
	return nil
}

func (s *Suite) buildTrees() {
	c := s.cfg
	if s.want("tree") {
		var zr, rr int
		treeDesc := fmt.Sprintf("%d files of 0-%s in %d directories (%s).", c.TreeN, FormatSize(c.TreeMax), c.TreeDirs, FormatSize(s.treeBytes))
		first := &Scenario{Key: "tree", Sources: []string{"tree"}, Rounds: c.TreeRounds, Bytes: s.treeBytes,
			Title: "Tree, first sync: " + treeDesc,
			Desc: "zrecv mirrors the published tree into an empty directory (every file verified, fsynced, staged, version id recomputed, " +
				"atomic symlink switch); rsync -a from a daemon on 127.0.0.1 (with and without --fsync). Time is the receiving process's wall time. " +
				"zsend has published the tree before the timed run (its scan and store copy are not timed; rsync's daemon does no such work). " +
				"Every run writes into a new directory and the outputs are deleted only when the scenario ends, and before every run the harness syncs and waits 6 s: " +
				"this machine's ext4 has no journal, and such a file system skips, for every new inode, the inodes of its group freed in the last 60 s " +
				"(300 s while not written back), so a run right after a deletion of many files pays for it (runs made that way varied by up to 2x, for every contender).",
			Settle: 6 * time.Second, KeepOutputs: true}
		first.Contenders = []Contender{
			{Name: "zsend -> zrecv, first sync", run: func(ctx context.Context) (Run, error) { return s.zsendTree(ctx, "first", nil) }},
			{Name: "rsync -a", run: func(ctx context.Context) (Run, error) { return s.rsyncTree(ctx, "first", false, nil) }},
			{Name: "rsync -a --fsync", run: func(ctx context.Context) (Run, error) { return s.rsyncTree(ctx, "first", true, nil) }},
			{Name: "local floor: copy the tree", Note: "zbench mktree: no network, no hashing; a file per file, one syncfs, rename, symlink switch",
				run: func(ctx context.Context) (Run, error) { return s.treeFloor(ctx) }},
		}
		change := &Scenario{Key: "tree-change", Sources: []string{"tree"}, Rounds: c.TreeRounds, Bytes: s.treeBytes, KeepOutputs: true,
			Title: "Tree, one changed file and no change: " + treeDesc,
			Desc: "The destination already holds the previous version (synced before the timed run, untimed); one 4 KiB file changes at the source " +
				"(zsend republishes on SIGHUP before the timed run); then one sync is timed. \"one change\" is a destination that has synced three versions " +
				"before (untimed), as a node following the tree for a while: it has pruned one, which the timed sync recycles (README, Recycling); " +
				"\"one change, second version\" is a destination that has synced only the first version (no pruned version to recycle: every file is linked). " +
				"\"no change\" times a sync when nothing changed."}
		change.Contenders = []Contender{
			{Name: "zsend -> zrecv, one change", run: func(ctx context.Context) (Run, error) { return s.zsendTree(ctx, "change", &zr) }},
			{Name: "zsend -> zrecv, one change, second version", run: func(ctx context.Context) (Run, error) { return s.zsendTree(ctx, "change-second", &zr) }},
			{Name: "rsync -a, one change", run: func(ctx context.Context) (Run, error) { return s.rsyncTree(ctx, "change", false, &rr) }},
			{Name: "zsend -> zrecv, no change", run: func(ctx context.Context) (Run, error) { return s.zsendTree(ctx, "none", nil) }},
			{Name: "rsync -a, no change", run: func(ctx context.Context) (Run, error) { return s.rsyncTree(ctx, "none", false, nil) }},
		}
		s.Scenarios = append(s.Scenarios, first, change)
	}
	if s.want("treemem") {
		sc := &Scenario{Key: "treemem", Sources: []string{"memtree"}, Rounds: 1, Bytes: s.memTreeBytes,
			Title: fmt.Sprintf("Tree memory: %d entries", c.TreeMemN),
			Desc:  "Peak RSS (ru_maxrss) of zsend (publishing and serving) and zrecv (first sync) for a tree of that many small files."}
		sc.Contenders = []Contender{
			{Name: "zsend -> zrecv", run: func(ctx context.Context) (Run, error) { return s.zsendTreeMem(ctx) }},
		}
		s.Scenarios = append(s.Scenarios, sc)
	}
}

func wallTarget(sc *Scenario, what, goal string, num, den string, min float64) Target {
	return ratioTarget(keyOf(sc, "tree"), what, goal, medianWall(sc, den)/medianWall(sc, num), min)
}

func keyOf(sc *Scenario, def string) string {
	if sc == nil {
		return def
	}
	return sc.Key
}

// treeTargets are issue 9's goals, as ratios of wall times in the same run.
func treeTargets(scs []*Scenario) []Target {
	first := find(scs, "tree")
	change := find(scs, "tree-change")
	ts := []Target{
		wallTarget(first, "first sync: rsync -a time / zrecv time", ">= 1x", "zsend -> zrecv, first sync", "rsync -a", 1),
		wallTarget(first, "first sync: rsync -a --fsync time / zrecv time", ">= 5x", "zsend -> zrecv, first sync", "rsync -a --fsync", 5),
	}
	t := wallTarget(change, "one changed file: rsync -a time / zrecv time", ">= 5x", "zsend -> zrecv, one change", "rsync -a, one change", 5)
	t.Scenario = "tree-change"
	ts = append(ts, t)
	nc := Target{Scenario: "tree-change", What: "no change: zrecv wall time", Goal: "< 50 ms"}
	if v := medianWall(change, "zsend -> zrecv, no change"); math.IsNaN(v) {
		nc.Missing, nc.Measured = true, "not measured"
	} else {
		nc.Value, nc.Measured, nc.Pass = v*1000, fmt.Sprintf("%.1f ms", v*1000), v < 0.050
	}
	ts = append(ts, nc)
	mem := find(scs, "treemem")
	for _, role := range []string{"sender", "receiver"} {
		t := Target{Scenario: "treemem", What: map[string]string{"sender": "zsend", "receiver": "zrecv"}[role] + " peak RSS, large tree", Goal: "<= 64 MiB"}
		if mem != nil {
			if a := summarize(mem, "zsend -> zrecv"); a.failed == 0 && a.ok > 0 {
				t.Value = maxOf(a.rss[role])
				t.Measured, t.Pass = fmt.Sprintf("%.1f MiB", t.Value), t.Value <= 64
			} else {
				t.Missing, t.Measured = true, "not measured"
			}
		} else {
			t.Missing, t.Measured = true, "not measured"
		}
		ts = append(ts, t)
	}
	return ts
}
