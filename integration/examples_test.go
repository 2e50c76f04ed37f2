package integration

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/zsend/zsend/internal/endpoint"
)

// The examples in README.md and in each command's --help are run, on
// loopback, as a new user would run them: every zrecv example fetches
// names that a zsend example of the same document serves (serving
// /etc/hosts is fetched as "hosts"), and it works. Paths are made in a
// temporary directory, endpoints are moved to loopback or a temporary
// socket, and -o to a temporary directory.

type example struct {
	line  string
	bind  string   // zsend -b (default tcp://127.0.0.1:5555)
	paths []string // zsend PATHs
	ep    string   // zrecv ENDPOINT
	out   string   // zrecv -o
	names []string // zrecv NAMEs
	json  bool
	flags []string // zsend flags passed through as written (--rate-limit)
	// curve: a CURVE example (--keygen, keys); those are run with real
	// keys by TestCurveCLI, not here.
	curve bool
}

func parseExample(t *testing.T, line string) example {
	t.Helper()
	ex := example{line: line, bind: "tcp://127.0.0.1:5555"}
	fields := strings.Fields(line)
	var pos []string
	for i := 1; i < len(fields); i++ {
		f := strings.Trim(fields[i], `'"`)
		switch f {
		case "-b", "--bind":
			i++
			ex.bind = strings.Trim(fields[i], `'"`)
		case "-o", "--output":
			i++
			ex.out = fields[i]
		case "--json":
			ex.json = true
		case "--keygen", "--server-key", "--curve-secret", "--allow", "--acl":
			ex.curve = true
			i++
		case "--allow-any":
			ex.curve = true
		case "--watch": // zsend: publishing options, no effect on what is served
		case "--state-dir", "--keep-versions":
			i++
		case "--rate-limit":
			i++
			ex.flags = append(ex.flags, f, strings.Trim(fields[i], `'"`))
		case ">", "|":
			i = len(fields) // redirection: the rest is the shell's
		default:
			if strings.HasPrefix(f, "-") {
				t.Fatalf("example %q: flag %s unknown to this test", line, f)
			}
			pos = append(pos, f)
		}
	}
	if ex.curve {
		return ex // zrecv --keygen PATH has no endpoint
	}
	if fields[0] == "zsend" {
		ex.paths = pos
	} else {
		ex.ep, ex.names = pos[0], pos[1:]
	}
	return ex
}

// examplesIn returns the zsend and zrecv command lines of a help text
// (indented lines after "Examples", up to a blank line; the description
// follows two spaces) or of README's ```sh blocks (comments after #).
func examplesIn(t *testing.T, text string, readme bool) (sends, recvs []example) {
	t.Helper()
	in := false
	for _, line := range strings.Split(text, "\n") {
		switch {
		case readme && strings.HasPrefix(line, "```"):
			in = line == "```sh"
			continue
		case !readme && strings.HasPrefix(line, "Examples"):
			in = true
			continue
		case !readme && strings.TrimSpace(line) == "":
			in = false
			continue
		}
		if !in {
			continue
		}
		cmd := strings.TrimSpace(line)
		if readme {
			cmd, _, _ = strings.Cut(cmd, "#")
		} else if i := regexp.MustCompile(`\S\s{2,}\S`).FindStringIndex(cmd); i != nil {
			cmd = cmd[:i[0]+1]
		}
		cmd = strings.TrimSpace(cmd)
		var ex example
		if strings.HasPrefix(cmd, "zsend ") || strings.HasPrefix(cmd, "zrecv ") {
			ex = parseExample(t, cmd)
			if ex.curve {
				continue
			}
		}
		switch {
		case strings.HasPrefix(cmd, "zsend "):
			sends = append(sends, ex)
		case strings.HasPrefix(cmd, "zrecv "):
			recvs = append(recvs, ex)
		}
	}
	return sends, recvs
}

// serves reports whether a zsend serving paths serves name.
func serves(paths []string, name string) bool {
	for _, p := range paths {
		base := filepath.Base(p)
		if name == base || strings.HasPrefix(name, base+"/") {
			return true
		}
	}
	return false
}

func TestExamplesWork(t *testing.T) {
	help := func(bin string) string {
		out, err := exec.Command(filepath.Join(binDir, bin), "--help").Output()
		if err != nil {
			t.Fatalf("%s --help: %v", bin, err)
		}
		return string(out)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string][2][]example{}
	s, _ := examplesIn(t, help("zsend"), false)
	_, r := examplesIn(t, help("zrecv"), false)
	docs["--help"] = [2][]example{s, r}
	s, r = examplesIn(t, string(readme), true)
	docs["README.md"] = [2][]example{s, r}

	for doc, d := range docs {
		sends, recvs := d[0], d[1]
		if len(sends) < 3 || len(recvs) < 3 {
			t.Fatalf("%s: found %d zsend and %d zrecv examples", doc, len(sends), len(recvs))
		}
		// The endpoints as written are valid (they are moved to loopback
		// to run).
		for _, sx := range sends {
			if err := endpoint.Check(sx.bind, true); err != nil {
				t.Errorf("%s: %q: %v", doc, sx.line, err)
			}
		}
		for _, rx := range recvs {
			if err := endpoint.Check(rx.ep, false); err != nil {
				t.Errorf("%s: %q: %v", doc, rx.line, err)
			}
		}
		used := map[int]bool{}
		for _, rx := range recvs {
			var sx *example
			for i := range sends {
				ok := true
				for _, n := range rx.names {
					ok = ok && serves(sends[i].paths, n)
				}
				if ok {
					sx = &sends[i]
					used[i] = true
					break
				}
			}
			if sx == nil {
				t.Errorf("%s: %q fetches names that no zsend example serves", doc, rx.line)
				continue
			}
			t.Run(doc+"/"+rx.line, func(t *testing.T) { runExample(t, *sx, rx) })
		}
		// A zsend example no zrecv example fetches from must still start.
		for i, sx := range sends {
			if !used[i] {
				t.Run(doc+"/"+sx.line, func(t *testing.T) { runExample(t, sx, example{}) })
			}
		}
	}
}

func runExample(t *testing.T, sx, rx example) {
	root := t.TempDir()
	// The served paths, under root: a directory where a name goes below
	// the path's base name, a file otherwise.
	var paths []string
	for _, p := range sx.paths {
		local := filepath.Join(root, "src", p)
		isDir := false
		for _, n := range rx.names {
			if rel, ok := strings.CutPrefix(n, filepath.Base(p)+"/"); ok {
				isDir = true
				if err := os.MkdirAll(filepath.Dir(filepath.Join(local, rel)), 0o755); err != nil {
					t.Fatal(err)
				}
				writeRandom(t, filepath.Dir(filepath.Join(local, rel)), filepath.Base(rel), 5000)
			}
		}
		if !isDir {
			if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
				t.Fatal(err)
			}
			writeRandom(t, filepath.Dir(local), filepath.Base(local), 5000)
		}
		paths = append(paths, local)
	}
	bind := "tcp://127.0.0.1:0"
	switch {
	case strings.HasPrefix(sx.bind, "ipc://"):
		dir, err := os.MkdirTemp("", "zs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		bind = "ipc://" + filepath.Join(dir, "s")
	case strings.Contains(sx.bind, "[::1]"):
		if l, err := net.Listen("tcp", "[::1]:0"); err == nil {
			l.Close()
			bind = "tcp://[::1]:0"
		}
	}
	ep, _ := zsendJSONOn(t, bind, append(sx.flags, paths...)...)
	if rx.line == "" {
		return // zsendJSONOn checked that it listens
	}
	out := filepath.Join(root, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"-t", "10s"}
	if rx.json {
		args = append(args, "--json")
	}
	if rx.out != "" {
		args = append(args, "-o", out)
	}
	args = append(args, ep)
	args = append(args, rx.names...)
	cmd := exec.Command(filepath.Join(binDir, "zrecv"), args...)
	cmd.Dir = out // without -o, into the current directory
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%q (as zrecv %s): %v\n%s", rx.line, strings.Join(args, " "), err, errb.String())
	}
	for _, n := range rx.names {
		if _, err := os.Stat(filepath.Join(out, n)); err != nil {
			t.Errorf("%q did not fetch %s: %v", rx.line, n, err)
		}
	}
}
