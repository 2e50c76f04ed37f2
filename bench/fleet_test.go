package bench

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if p := percentile(xs, 0.5); p != 3 {
		t.Errorf("p50 = %v, want 3", p)
	}
	if p := percentile(xs, 0.99); p != 5 {
		t.Errorf("p99 = %v, want 5", p)
	}
	if p := percentile([]float64{7}, 0.99); p != 7 {
		t.Errorf("p99 of one = %v", p)
	}
	// Nearest rank: of 100 values, p99 is the 99th.
	var h []float64
	for i := 1; i <= 100; i++ {
		h = append(h, float64(i))
	}
	if p := percentile(h, 0.99); p != 99 {
		t.Errorf("p99 of 1..100 = %v, want 99", p)
	}
	if xs[0] != 5 {
		t.Error("percentile sorted its argument in place")
	}
}

// The fleet's follower and root records are read from slog JSON lines, by
// their own timestamps.
func TestFleetScan(t *testing.T) {
	p, err := Start("follower", nil, "sh", "-c", `
echo 'not json' >&2
echo '{"time":"2026-12-01T01:00:00.5Z","level":"INFO","msg":"tcp://x","event":"connected"}' >&2
echo '{"time":"2026-12-01T01:00:01.25Z","level":"INFO","msg":"1 files fetched","event":"switched","tree":"t","seq":1,"version":"ab"}' >&2
echo '{"time":"2026-12-01T01:00:02Z","level":"INFO","msg":"","event":"unchanged","tree":"t","seq":1}' >&2
echo '{"time":"2026-12-01T01:00:03Z","level":"INFO","msg":"published t version 3","event":"published","name":"t","seq":3}' >&2
echo '{"time":"2026-12-01T01:00:03.5Z","level":"INFO","msg":"serving","paths":1,"endpoint":"tcp://127.0.0.1:9"}' >&2
echo '{"time":"2026-12-01T01:00:04Z","level":"INFO","msg":"2 files fetched","event":"switched","tree":"t","seq":3,"version":"cd"}' >&2
sleep 5`)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	n := &fnode{role: "follower", p: p}
	if err := n.waitUntil(time.Now().Add(10*time.Second), "version 3", func() bool { return n.onSeq >= 3 }); err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339Nano, s); return v }
	if got, ok := n.switchTime(2); !ok || !got.Equal(at("2026-12-01T01:00:04Z")) {
		t.Errorf("switch to >= 2 at %v %v", got, ok)
	}
	if got, _ := n.switchTime(1); !got.Equal(at("2026-12-01T01:00:01.25Z")) {
		t.Errorf("switch to >= 1 at %v", got)
	}
	if !n.conn.Equal(at("2026-12-01T01:00:00.5Z")) || n.latest != 3 || n.ep != "tcp://127.0.0.1:9" ||
		!n.published[3].Equal(at("2026-12-01T01:00:03Z")) {
		t.Errorf("conn %v latest %d ep %q published %v", n.conn, n.latest, n.ep, n.published)
	}
	// A bounded wait for what never comes ends with the process's tail.
	err = n.waitUntil(time.Now().Add(200*time.Millisecond), "version 9", func() bool { return n.onSeq >= 9 })
	if err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Errorf("wait for version 9: %v", err)
	}
}

func TestGrown(t *testing.T) {
	before := map[string]int64{"a": 10, "b": 5}
	after := map[string]int64{"a": 10, "b": 8, "c": 100}
	if g := grown(before, after); g != 103 {
		t.Errorf("grown = %d, want 103", g)
	}
}

// Merging a partial run into a full report replaces that scenario's
// section and target rows and keeps everything else.
func TestMergeMarkdown(t *testing.T) {
	old := "# Benchmarks\n\nintro\n\n## Targets\n\n| scenario | target | goal | measured | result |\n|---|---|---|---|---|\n" +
		"| single | a | >= 1x | 2x | **PASS** |\n| relay | new row | <= 0.1 | 0.5 | **FAIL** |\n| relay | other row | x | y | z |\n\n## How\n\ntext\n\n" +
		"## Relays: star versus tree\n\n<!-- scenario: relay -->\nold relay text\n\n## Tree\n\ntree text\n"
	r := &Results{Config: Config{Only: []string{"relay"}, Meta: map[string]string{"commit": "abc1234"}},
		Scenarios: []*Scenario{{Key: "relay", Title: "Relays: star versus tree", Desc: "new relay text"}},
		Targets:   []Target{{Scenario: "relay", What: "new row", Goal: "<= 0.1", Measured: "0.05", Pass: true}, {Scenario: "single", What: "x"}}}
	var b strings.Builder
	if err := r.MergeMarkdown(old, &b); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{"| single | a | >= 1x | 2x | **PASS** |\n| relay | other row | x | y | z |\n| relay | new row | <= 0.1 | 0.05 | **PASS** |\n\n## How",
		"new relay text", "commit abc1234", "</details>\n\n## Tree\n\ntree text\n", "intro"} {
		if !strings.Contains(got, want) {
			t.Errorf("merged report lacks %q:\n%s", want, got)
		}
	}
	for _, gone := range []string{"old relay text", "| 0.5 |", "| single | x |"} {
		if strings.Contains(got, gone) {
			t.Errorf("merged report still has %q", gone)
		}
	}
	if strings.Index(got, "## Relays") > strings.Index(got, "## Tree") {
		t.Error("the relay section moved")
	}
	// A scenario the report does not have yet is appended.
	r.Scenarios[0].Key, r.Scenarios[0].Title = "propagation", "Propagation"
	b.Reset()
	if err := r.MergeMarkdown(old, &b); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.HasSuffix(strings.TrimSpace(got), "</details>") || !strings.Contains(got, "tree text\n\n## Propagation") {
		t.Errorf("appended section:\n%s", got)
	}
}
