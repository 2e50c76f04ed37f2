package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// MergeMarkdown writes old (a report from an earlier run) with this run's
// scenarios merged in: each scenario's section replaces the section of the
// same scenario (marked "<!-- scenario: KEY -->", or with the same title)
// or is appended at the end, and the rows of the targets table for those
// scenarios are replaced by this run's. A section merged in says which run
// it comes from, since the rest of the report comes from another one.
func (r *Results) MergeMarkdown(old string, w io.Writer) error {
	chunks := splitSections(old)
	keys := map[string]bool{}
	for _, sc := range r.Scenarios {
		keys[sc.Key] = true
		b := &strings.Builder{}
		p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
		r.writeScenario(p, sc)
		sec := strings.TrimPrefix(b.String(), "\n")
		// The run's provenance, after the section's marker line.
		note := fmt.Sprintf("*From a separate run (`%s`), started %s, which took %s, at commit %s; the machine is the one described above.*\n\n",
			r.Config.command(), r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second), r.Config.Meta["commit"])
		if r.Quick {
			note = "*QUICK=1 smoke run: indicative only.* " + note
		}
		title, id := sc.heading()
		marker := fmt.Sprintf("<!-- scenario: %s -->\n", id)
		sec = strings.Replace(sec, marker, marker+note, 1)
		done := false
		for i, c := range chunks {
			if strings.Contains(c, marker) || strings.HasPrefix(c, "## "+title+"\n") {
				chunks[i], done = sec, true
				if i < len(chunks)-1 {
					chunks[i] = strings.TrimRight(sec, "\n") + "\n\n"
				}
				break
			}
		}
		if !done {
			if n := len(chunks); n > 0 && !strings.HasSuffix(chunks[n-1], "\n\n") {
				chunks[n-1] = strings.TrimRight(chunks[n-1], "\n") + "\n\n"
			}
			chunks = append(chunks, sec)
		}
	}
	for i, c := range chunks {
		if strings.HasPrefix(c, "## Targets\n") {
			chunks[i] = r.mergeTargets(c, keys)
		}
	}
	_, err := io.WriteString(w, strings.Join(chunks, ""))
	return err
}

// splitSections cuts a Markdown document before every "## " heading.
func splitSections(doc string) []string {
	var out []string
	start := 0
	for i := 0; i < len(doc); {
		j := strings.IndexByte(doc[i:], '\n')
		end := len(doc)
		if j >= 0 {
			end = i + j + 1
		}
		if strings.HasPrefix(doc[i:], "## ") && i > start {
			out = append(out, doc[start:i])
			start = i
		}
		i = end
	}
	return append(out, doc[start:])
}

// mergeTargets replaces the rows of the targets section that this run
// measured again (same scenario and target; the other rows stay in place)
// and appends this run's rows for its scenarios after the table's last
// row.
func (r *Results) mergeTargets(sec string, keys map[string]bool) string {
	lines := strings.Split(sec, "\n")
	var kept []string
	last := -1
	again := map[[2]string]bool{}
	for _, t := range r.Targets {
		if keys[t.Scenario] {
			again[[2]string{t.Scenario, t.What}] = true
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "| ") {
			f := strings.Split(l, "|")
			if len(f) > 3 && again[[2]string{strings.TrimSpace(f[1]), strings.TrimSpace(f[2])}] {
				continue
			}
		}
		kept = append(kept, l)
		if strings.HasPrefix(l, "|") {
			last = len(kept) - 1
		}
	}
	var rows []string
	for _, t := range r.Targets {
		if !keys[t.Scenario] {
			continue
		}
		st := t.Status()
		if st != "n/a" {
			st = "**" + st + "**"
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s |", t.Scenario, t.What, t.Goal, mdEscape(t.Measured), st))
	}
	if last < 0 {
		return sec
	}
	out := append(append(append([]string{}, kept[:last+1]...), rows...), kept[last+1:]...)
	return strings.Join(out, "\n")
}

// heading is a scenario's section title and the id of its marker: the
// relay scenario's include the number of nodes, so that runs at different
// scales each keep their section.
func (sc *Scenario) heading() (string, string) {
	if sc.Key == "relay" {
		for _, r := range sc.Runs {
			if f := r.Fleet; f != nil && f.Nodes > 0 {
				return fmt.Sprintf("%s, %d nodes, %s", sc.Title, f.Nodes, f.Rate), fmt.Sprintf("relay-%d-%s", f.Nodes, strings.Fields(f.Rate)[0])
			}
		}
	}
	return sc.Title, sc.Key
}

// command is the scripts/bench.sh command line of a partial run, with the
// knobs of the fleet scenarios it ran.
func (c Config) command() string {
	var kv []string
	for _, k := range c.Only {
		switch k {
		case "relay":
			kv = append(kv, fmt.Sprintf("RELAY_N=%d", c.RelayN))
			if c.RelayRelays > 0 {
				kv = append(kv, fmt.Sprintf("RELAY_RELAYS=%d", c.RelayRelays))
			}
			kv = append(kv, "RELAY_RATE="+c.RelayRate, "RELAY_MB="+strings.ReplaceAll(FormatSize(c.RelayMB), " MiB", "M"),
				fmt.Sprintf("RELAY_FILES=%d", c.RelayFiles))
			if len(c.RelayPayloads) > 0 {
				kv = append(kv, "RELAY_PAYLOADS="+strings.Join(c.RelayPayloads, ","))
			}
			if len(c.RelayTopologies) > 0 {
				kv = append(kv, "RELAY_TOPOLOGIES="+strings.Join(c.RelayTopologies, ","))
			}
		case "propagation":
			kv = append(kv, fmt.Sprintf("PROP_N=%d", c.PropN), fmt.Sprintf("PROP_FILES=%d", c.PropFiles), fmt.Sprintf("PROP_CHANGES=%d", c.PropChanges),
				fmt.Sprintf("PROP_BULK=%d", c.PropBulk))
			if !c.PropBarrier {
				kv = append(kv, "PROP_BARRIER=0")
			}
		}
	}
	return strings.Join(append(append([]string{"MERGE=1"}, kv...), "ONLY="+strings.Join(c.Only, ","), "scripts/bench.sh"), " ")
}
