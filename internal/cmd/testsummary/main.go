// Command testsummary reads `go test -json` on stdin and prints what a
// person (and a CI log) needs: go test's own per-package lines (ok, FAIL,
// build errors), the full output of every failed test, and every skipped
// test with its reason, so that a skip is seen rather than passed over.
//
//	go test -race -json ./... | go run ./internal/cmd/testsummary
//
// It exits 1 if any test or build failed, else 0; scripts/test.sh keeps go
// test's own exit status.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	os.Exit(summarize(os.Stdin, os.Stdout))
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type skip struct{ pkg, test, reason string }

// summarize copies the summary of the event stream r to w and returns the
// exit status: 1 if anything failed.
func summarize(r io.Reader, w io.Writer) int {
	type key struct{ pkg, test string }
	outputs := map[key][]string{} // output of tests still running
	running := map[string][]key{} // per package, tests started
	var skips []skip
	passed, failed := 0, 0
	status := 0

	printTest := func(k key) {
		for _, line := range outputs[k] {
			if !isNoise(line) {
				fmt.Fprint(w, line)
			}
		}
		delete(outputs, k)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(w, sc.Text()) // not an event: pass it through
			continue
		}
		k := key{e.Package, e.Test}
		switch {
		case e.Action == "build-output":
			fmt.Fprint(w, e.Output)
		case e.Action == "build-fail":
			status = 1
		case e.Test == "" && e.Action == "output":
			if e.Output != "PASS\n" && !isNoise(e.Output) {
				fmt.Fprint(w, e.Output) // ok / FAIL / "no test files" lines
			}
		case e.Test == "" && e.Action == "fail":
			status = 1
			// A crash or timeout ends the package with tests unfinished:
			// their output is the only clue.
			for _, t := range running[e.Package] {
				if _, ok := outputs[t]; ok {
					printTest(t)
				}
			}
			delete(running, e.Package)
		case e.Test == "" && (e.Action == "pass" || e.Action == "skip"):
			delete(running, e.Package)
		case e.Action == "run":
			running[e.Package] = append(running[e.Package], k)
			outputs[k] = nil
		case e.Action == "output":
			outputs[k] = append(outputs[k], e.Output)
		case e.Action == "pass":
			passed++
			delete(outputs, k)
		case e.Action == "fail":
			failed++
			status = 1
			printTest(k)
		case e.Action == "skip":
			skips = append(skips, skip{e.Package, e.Test, skipReason(outputs[k])})
			delete(outputs, k)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(w, "testsummary: reading go test -json: %v\n", err)
		status = 1
	}
	sort.Slice(skips, func(i, j int) bool {
		if skips[i].pkg != skips[j].pkg {
			return skips[i].pkg < skips[j].pkg
		}
		return skips[i].test < skips[j].test
	})
	fmt.Fprintf(w, "\n%d tests passed, %d failed, %d skipped\n", passed, failed, len(skips))
	for _, s := range skips {
		fmt.Fprintf(w, "SKIP %s %s: %s\n", s.pkg, s.test, s.reason)
	}
	return status
}

// isNoise reports go test -v's progress lines, which the plain output
// does not have.
func isNoise(line string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// skipReason is what a skipped test logged: the t.Skip message and any
// log lines before it, on one line.
func skipReason(lines []string) string {
	var parts []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || isNoise(l) || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " / ")
}
