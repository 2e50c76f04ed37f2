package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// findListing is `find DIR/ -printf '%P %y %m %s %T@ %l'` with a BLAKE3
// per regular file, sorted. Directory sizes are left out (they depend on
// the file system's history of the directory, not on its content).
func findListing(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("find", dir+"/", "-printf", `%P\t%y\t%m\t%s\t%T@\t%l\n`).Output()
	if err != nil {
		t.Fatalf("find %s: %v", dir, err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		f := strings.Split(l, "\t")
		switch f[1] {
		case "d":
			f[3] = "-"
		case "f":
			f = append(f, b3(t, filepath.Join(dir, f[0])))
		}
		lines = append(lines, strings.Join(f, " "))
	}
	slices.Sort(lines)
	return lines
}

func sameListing(t *testing.T, what string, want, got []string) {
	t.Helper()
	if slices.Equal(want, got) {
		return
	}
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	w, g := "(end)", "(end)"
	if i < len(want) {
		w = want[i]
	}
	if i < len(got) {
		g = got[i]
	}
	t.Fatalf("%s: listings differ (%d vs %d lines) at line %d:\n  want %s\n  got  %s", what, len(want), len(got), i, w, g)
}

// trickyTree builds the fidelity tree of issue 9.
func trickyTree(t *testing.T, dir string, files int) {
	t.Helper()
	mk := func(p, content string, mode os.FileMode) {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(full, mode)
	}
	mk("etc/app.conf", "key = value\n", 0o644)
	mk("etc/secret.key", "s3cr3t", 0o600)
	mk("empty-file", "", 0o644)
	mk("dir with spaces/fïlé ünïcödé ✓.txt", "utf-8 names\n", 0o644)
	mk("bin/tool", "#!/bin/sh\necho hi\n", 0o755)
	os.MkdirAll(filepath.Join(dir, "empty/nested/dirs"), 0o755)
	os.MkdirAll(filepath.Join(dir, "private"), 0o700)
	mk("private/data", "private", 0o600)
	os.Chmod(filepath.Join(dir, "private"), 0o700)
	os.Symlink("etc/app.conf", filepath.Join(dir, "rel-link"))
	os.Symlink("/etc/hostname", filepath.Join(dir, "abs-link"))
	os.Symlink("etc", filepath.Join(dir, "dir-link"))
	os.Symlink("../../../outside/the/tree", filepath.Join(dir, "escaping-link"))
	os.Symlink("dangling-target", filepath.Join(dir, "dangling"))
	deep := "deep"
	for i := 0; i < 64; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("l%02d", i))
	}
	mk(filepath.Join(deep, "bottom.txt"), "64 levels down\n", 0o644)
	for i := 0; i < files; i++ {
		mk(fmt.Sprintf("many/d%03d/f%05d.conf", i%100, i), fmt.Sprintf("file %d\n%s", i, strings.Repeat("x", i%3000)), 0o644)
	}
	// Directory mtimes last, some fixed in the past.
	old := time.Unix(1600000000, 123456789)
	os.Chtimes(filepath.Join(dir, "empty/nested"), old, old)
	os.Chtimes(filepath.Join(dir, "etc/app.conf"), old, old)
}

func publishedTree(t *testing.T, files int) (src, ep string, zsend *exec.Cmd) {
	t.Helper()
	src = filepath.Join(t.TempDir(), "app")
	trickyTree(t, src, files)
	ep, zsend = zsendSlow(t, "--state-dir", t.TempDir(), src)
	waitTree(t, ep, "app", 0)
	return src, ep, zsend
}

// waitTree waits until the server lists tree with a sequence above seq.
func waitTree(t *testing.T, ep, tree string, seq uint64) receiver.TreeInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		trees, err := receiver.List(ctx, receiver.Config{Endpoint: ep, OutputDir: os.TempDir(), Timeout: 2 * time.Second}, tree)
		cancel()
		if err == nil && len(trees) == 1 && trees[0].Seq > seq {
			return trees[0]
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("tree %s not published above seq %d", tree, seq)
	return receiver.TreeInfo{}
}

// The mirror equals what rsync -a makes of the same source.
func TestTreeFidelityWithRsync(t *testing.T) {
	src, ep, _ := publishedTree(t, 10000)
	parent := t.TempDir()
	out := filepath.Join(parent, "out") // created by zrecv, with a message
	code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "app/")
	if code != 0 {
		t.Fatalf("zrecv exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "created the output directory") {
		t.Errorf("no message about creating -o: %s", stderr)
	}
	mirror := findListing(t, filepath.Join(out, "app"))
	sameListing(t, "mirror vs source", findListing(t, src), mirror)
	if _, err := exec.LookPath("rsync"); err != nil {
		t.Log("rsync not installed: compared with the source only (CI installs rsync)")
	} else {
		dst := filepath.Join(parent, "rsync")
		if b, err := exec.Command("rsync", "-a", src+"/", dst+"/").CombinedOutput(); err != nil {
			t.Fatalf("rsync: %v %s", err, b)
		}
		sameListing(t, "mirror vs rsync -a", findListing(t, dst), mirror)
	}
	sync := lastEvent(t, stdout, "sync")
	if sync["files_fetched"].(float64) != 10007 || sync["version"] == "" {
		t.Errorf("sync event %v", sync)
	}
	// Run again: nothing fetched.
	code, stdout, stderr = zrecv(t, "--json", "-o", out, ep, "app")
	if code != 0 {
		t.Fatalf("second zrecv exit %d: %s", code, stderr)
	}
	if ev := lastEvent(t, stdout, "sync"); ev["unchanged"] != true || ev["files_fetched"].(float64) != 0 || ev["bytes_fetched"].(float64) != 0 {
		t.Errorf("no-change sync: %v", ev)
	}
	// The first sync fetched the manifest (its bytes counted); the second
	// had it and fetched nothing.
	if mb, _ := sync["manifest_bytes"].(float64); mb <= 0 {
		t.Errorf("first sync: manifest_bytes %v", sync["manifest_bytes"])
	}
	if ev := lastEvent(t, stdout, "sync"); ev["manifest_bytes"] != float64(0) {
		t.Errorf("no-change sync: manifest_bytes %v", ev["manifest_bytes"])
	}
}

func lastEvent(t *testing.T, ndjson, kind string) map[string]any {
	t.Helper()
	var last map[string]any
	for _, line := range strings.Split(strings.TrimSpace(ndjson), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not NDJSON: %q", line)
		}
		if ev["event"] == kind {
			last = ev
		}
	}
	if last == nil {
		t.Fatalf("no %s event in %s", kind, ndjson)
	}
	return last
}

// Delta, drift, --list and --rollback through the binaries.
func TestTreeDeltaDriftRollbackCLI(t *testing.T) {
	src, ep, zs := publishedTree(t, 200)
	out := t.TempDir()
	if code, _, stderr := zrecv(t, "-q", "-o", out, ep, "app"); code != 0 {
		t.Fatalf("zrecv exit %d: %s", code, stderr)
	}
	code, stdout, _ := zrecv(t, "--list", ep)
	if code != 0 || !strings.Contains(stdout, "app") || !strings.Contains(stdout, "SEQ") {
		t.Errorf("--list: %d %q", code, stdout)
	}
	// Change one file, republish (SIGHUP).
	os.WriteFile(filepath.Join(src, "many/d007/f00007.conf"), []byte("changed\n"), 0o644)
	first := waitTree(t, ep, "app", 0)
	zs.Process.Signal(syscall.SIGHUP)
	waitTree(t, ep, "app", first.Seq)
	// Drift too: a file edited by hand in the mirror.
	os.WriteFile(filepath.Join(out, "app/etc/secret.key"), []byte("tampered"), 0o600)
	code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "app")
	if code != 0 {
		t.Fatalf("delta zrecv exit %d: %s", code, stderr)
	}
	ev := lastEvent(t, stdout, "sync")
	if ev["files_fetched"].(float64) != 2 || !strings.Contains(fmt.Sprint(ev["drift"]), "etc/secret.key") {
		t.Errorf("delta sync: want 2 files fetched (changed + drifted), drift etc/secret.key: %v", ev)
	}
	sameListing(t, "after delta", findListing(t, src), findListing(t, filepath.Join(out, "app")))
	// A second zrecv on the same tree while one holds the lock: a clear
	// failure, or a bounded wait with --lock-wait.
	lock, err := os.OpenFile(filepath.Join(out, ".zsnd/app/lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := zrecv(t, "-o", out, ep, "app"); code != 1 || !strings.Contains(stderr, "another zrecv is syncing this tree") {
		t.Errorf("sync of a locked tree: exit %d, %s", code, stderr)
	}
	go func() { time.Sleep(500 * time.Millisecond); lock.Close() }()
	if code, _, stderr := zrecv(t, "--lock-wait", "20s", "-o", out, ep, "app"); code != 0 {
		t.Errorf("sync waiting for the lock: exit %d, %s", code, stderr)
	}
	if code, _, stderr := zrecv(t, "--rollback", "-o", out, "app"); code != 0 {
		t.Fatalf("rollback exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "app/many/d007/f00007.conf")); string(b) == "changed\n" {
		t.Errorf("rollback did not restore the previous version")
	}
}

// kill -9 at random moments: the stable path always shows one complete
// version; a rerun completes.
func TestTreeKill9(t *testing.T) {
	src, ep, zs := publishedTree(t, 600)
	writeRandom(t, src, "big.bin", 24<<20)
	snapshots := map[string][]string{} // version listing by seq
	snap := func() uint64 {
		prev := waitTree(t, ep, "app", 0)
		zs.Process.Signal(syscall.SIGHUP)
		info := waitTree(t, ep, "app", prev.Seq)
		snapshots[fmt.Sprint(info.Seq)] = findListing(t, src)
		return info.Seq
	}
	snap()
	out := t.TempDir()
	stable := filepath.Join(out, "app")
	// How long a full sync takes here, to aim the kills.
	start := time.Now()
	if code, _, stderr := zrecv(t, "-q", "-o", out, ep, "app"); code != 0 {
		t.Fatalf("zrecv exit %d: %s", code, stderr)
	}
	full := time.Since(start)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	oldShown, newShown := 0, 0
	for i := 0; i < 20; i++ {
		// A new version: some files changed, the big one every other time.
		for k := 0; k < 60; k++ {
			p := filepath.Join(src, fmt.Sprintf("many/d%03d/f%05d.conf", (i*60+k)%100, (i*60+k)%600))
			os.WriteFile(p, []byte(fmt.Sprintf("round %d file %d\n", i, k)), 0o644)
		}
		if i%2 == 0 {
			writeRandom(t, src, "big.bin", 24<<20+int64(i))
		}
		snap()
		cmd := exec.Command(filepath.Join(binDir, "zrecv"), "-q", "-o", out, ep, "app")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(full) + 1)))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		got := findListing(t, stable)
		matched := ""
		for seq, want := range snapshots {
			if slices.Equal(want, got) {
				matched = seq
			}
		}
		if matched == "" {
			t.Fatalf("round %d: the stable path shows no complete published version (%d entries)", i, len(got))
		}
		if slices.Equal(got, findListing(t, src)) {
			newShown++
		} else {
			oldShown++
		}
	}
	t.Logf("20 kills: the stable path showed old versions %d times, the new one %d times", oldShown, newShown)
	code, _, stderr := zrecv(t, "-q", "-o", out, ep, "app")
	if code != 0 {
		t.Fatalf("completing run exit %d: %s", code, stderr)
	}
	// A kill once files are staged: the rerun uses them after checking.
	for k := 0; k < 600; k += 3 {
		p := filepath.Join(src, fmt.Sprintf("many/d%03d/f%05d.conf", k%100, k))
		os.WriteFile(p, []byte(fmt.Sprintf("final %d\n", k)), 0o644)
	}
	writeRandom(t, src, "big.bin", 40<<20)
	snap()
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), "-q", "-o", out, ep, "app")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(out, ".zsnd/app/stage/app/many/d099/f00099.conf")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile(staged); err == nil && strings.HasPrefix(string(b), "final") {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	code, stdout, stderr := zrecv(t, "--json", "-o", out, ep, "app")
	if code != 0 {
		t.Fatalf("rerun exit %d: %s", code, stderr)
	}
	ev := lastEvent(t, stdout, "sync")
	t.Logf("rerun: fetched %v files, reused %v, of which %v left staged by the killed run", ev["files_fetched"], ev["files_reused"], ev["files_staged"])
	if ev["files_staged"] == nil || ev["files_staged"].(float64) == 0 {
		t.Errorf("the rerun used nothing the killed run had staged: %v", ev)
	}
	sameListing(t, "after the rerun", findListing(t, src), findListing(t, stable))
}

// zsendSlow is zsendProc for a server that publishes a large tree before
// it listens (it may take longer than zsendProc waits).
func zsendSlow(t *testing.T, args ...string) (string, *exec.Cmd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "zsend"), append([]string{"-b", "tcp://127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	epc := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stderr)
		re := regexp.MustCompile(`on (tcp://\S+)`)
		for lines.Scan() {
			if m := re.FindStringSubmatch(lines.Text()); m != nil {
				epc <- m[1]
			}
		}
	}()
	t.Cleanup(func() {
		defer cancel()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	select {
	case ep := <-epc:
		return ep, cmd
	case <-time.After(2 * time.Minute):
		t.Fatal("zsend did not report its endpoint within 2 minutes")
	}
	return "", nil
}

// The source edited and republished during a fetch, with the server
// keeping only its latest version: the fetch of the dropped version gets
// 410 gone, moves to the latest, and the stable path shows exactly one
// published version.
func TestTreeSourceEditedDuringFetch(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	trickyTree(t, src, 2000)
	writeRandom(t, src, "big.bin", 32<<20)
	ep, zs := zsendSlow(t, "--state-dir", t.TempDir(), "--keep-versions", "1", src)
	first := waitTree(t, ep, "app", 0)
	snapshots := [][]string{findListing(t, src)}
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), "--json", "-o", out, ep, "app")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Once the fetch is under way, edit and republish.
	staged := filepath.Join(out, ".zsnd/app/stage/app")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(staged); err == nil {
			break
		}
	}
	// Hold zrecv still while the server moves on (it drops the version
	// zrecv is fetching: --keep-versions 1).
	cmd.Process.Signal(syscall.SIGSTOP)
	for k := 0; k < 2000; k += 7 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("many/d%03d/f%05d.conf", k%100, k)), []byte(fmt.Sprintf("edited %d\n", k)), 0o644)
	}
	zs.Process.Signal(syscall.SIGHUP)
	waitTree(t, ep, "app", first.Seq)
	snapshots = append(snapshots, findListing(t, src))
	cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("zrecv: %v\n%s", err, stdout.String())
	}
	got := findListing(t, filepath.Join(out, "app"))
	if !slices.EqualFunc(snapshots[:1], [][]string{got}, slices.Equal) && !slices.Equal(snapshots[1], got) {
		t.Fatalf("the stable path shows no published version")
	}
	ev := lastEvent(t, stdout.String(), "sync")
	t.Logf("synced seq %v (first was %d); fetched %v files", ev["seq"], first.Seq, ev["files_fetched"])
	if ev["seq"].(float64) == float64(first.Seq) {
		t.Logf("the fetch of seq %d completed before the server dropped it (no 410 exercised)", first.Seq)
	}
	// A second run ends on the latest version.
	if code, _, stderr := zrecv(t, "-q", "-o", out, ep, "app"); code != 0 {
		t.Fatalf("second run: %d %s", code, stderr)
	}
	sameListing(t, "latest", snapshots[1], findListing(t, filepath.Join(out, "app")))
}

// --keep 1: each sync's JSON names the version directory it pruned (the
// one switched away from), and only the current one stays.
//
// The version pruned is kept as the spare, which the next sync recycles:
// its JSON names it (recycled) and counts the files it left in place.
func TestTreeJSONPruned(t *testing.T) {
	src := filepath.Join(t.TempDir(), "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	writeFile(t, filepath.Join(src, "static.conf"), "never changes")
	ep, srv := publishingServer(t, sender.Config{Paths: []string{src}})
	out := t.TempDir()
	var dirs []string
	for v := 1; v <= 3; v++ {
		if v > 1 {
			writeFile(t, filepath.Join(src, "app.conf"), fmt.Sprintf("v%d", v))
			publishNow(t, srv)
		}
		code, stdout, stderr := zrecv(t, "--json", "--keep", "1", "-o", out, ep, "app")
		if code != 0 {
			t.Fatalf("sync %d: exit %d: %s", v, code, stderr)
		}
		ev := lastEvent(t, stdout, "sync")
		dirs = append(dirs, ev["dir"].(string))
		pruned, _ := ev["pruned"].([]any)
		switch {
		case v == 1 && len(pruned) != 0:
			t.Errorf("first sync pruned %v", pruned)
		case v > 1 && (len(pruned) != 1 || !strings.HasSuffix(dirs[v-2], "/"+pruned[0].(string))):
			t.Errorf("sync %d pruned %v, want the previous version %s", v, pruned, dirs[v-2])
		}
		recycled, _ := ev["recycled"].(string)
		switch {
		case v < 3 && recycled != "":
			t.Errorf("sync %d recycled %q with no spare", v, recycled)
		case v == 3 && (recycled != filepath.Base(dirs[0]) || ev["files_recycled"] != float64(1)):
			t.Errorf("sync 3 recycled %q (%v files), want %s (1 file)", recycled, ev["files_recycled"], filepath.Base(dirs[0]))
		}
	}
	vs, _ := os.ReadDir(filepath.Join(out, ".zsnd", "app", "v"))
	if len(vs) != 1 || !strings.HasSuffix(dirs[2], vs[0].Name()) {
		t.Errorf("kept versions %v, want only %s", vs, dirs[2])
	}
}

// A node that mirrors a tree skips the probe LIST; if the server then
// serves a file of that name instead (the tree gone), zrecv still
// fetches it as a file, as it would after a probe.
func TestTreeNameBecomesFile(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "a", "app")
	writeFile(t, filepath.Join(src, "app.conf"), "v1")
	ep, _ := publishingServer(t, sender.Config{Paths: []string{src}})
	out := t.TempDir()
	if code, _, stderr := zrecv(t, "-q", "-o", out, ep, "app"); code != 0 {
		t.Fatalf("tree sync: exit %d: %s", code, stderr)
	}
	fileSrc := filepath.Join(base, "b", "app")
	writeFile(t, fileSrc, "a plain file now")
	ep2, _ := serve(t, sender.Config{Paths: []string{fileSrc}})
	out2 := filepath.Join(out, "sub")
	os.MkdirAll(filepath.Join(out2, ".zsnd", "app"), 0o755) // as if app had been mirrored here
	code, _, stderr := zrecv(t, "-q", "-o", out2, ep2, "app")
	if code != 0 {
		t.Fatalf("file fetch after the tree: exit %d: %s", code, stderr)
	}
	if b, err := os.ReadFile(filepath.Join(out2, "app")); err != nil || string(b) != "a plain file now" {
		t.Fatalf("got %q, %v", b, err)
	}
}
