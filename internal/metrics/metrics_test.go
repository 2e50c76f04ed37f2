package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/zsend/zsend/sender"
)

// TestBarrierOutcomes: zsend_barriers_total counts decided barriers by
// tree and outcome, "timeout" for the server's timed-out message.
func TestBarrierOutcomes(t *testing.T) {
	reg := NewRegistry()
	m := NewSender(reg, func() *sender.Server { return nil })
	m.Event(sender.Event{Kind: "barrier", Name: "app", Message: "barrier of app v2: every live node staged"})
	m.Event(sender.Event{Kind: "barrier", Name: "app", Message: "barrier of app v3 timed out: switching 2 staged nodes; not staged: n2"})
	m.Event(sender.Event{Kind: "barrier", Name: "app", Message: "barrier of app v4 timed out: switching 0 staged nodes; not staged: n1"})
	want := `
# HELP zsend_barriers_total Barriers decided, by outcome (all, timeout).
# TYPE zsend_barriers_total counter
zsend_barriers_total{outcome="all",tree="app"} 1
zsend_barriers_total{outcome="timeout",tree="app"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "zsend_barriers_total"); err != nil {
		t.Error(err)
	}
}
