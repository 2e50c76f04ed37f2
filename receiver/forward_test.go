package receiver

import (
	"fmt"
	"testing"

	"github.com/zsend/zsend/protocol"
)

func fwd(node string, seq uint64) protocol.Forward {
	return protocol.Forward{Report: protocol.Report{Node: node, Tree: "t", Seq: seq, State: protocol.StateSwitched}, Parent: "r"}
}

// The backlog keeps order, one row per (node, tree) with the latest
// content, and a full round replaces what is queued.
func TestForwardBacklog(t *testing.T) {
	var b forwardBacklog
	b.add([]protocol.Forward{fwd("a", 1), fwd("b", 1), fwd("c", 1)}, true)
	if f, _ := b.next(); f.Node != "a" {
		t.Fatalf("first %q", f.Node)
	}
	b.add([]protocol.Forward{fwd("c", 2), fwd("a", 2), fwd("d", 1)}, false)
	var got []string
	for f, ok := b.next(); ok; f, ok = b.next() {
		got = append(got, fmt.Sprintf("%s%d", f.Node, f.Seq))
	}
	if fmt.Sprint(got) != "[b1 c2 a2 d1]" {
		t.Fatalf("drained %v", got)
	}
	b.add([]protocol.Forward{fwd("x", 1)}, false)
	b.add([]protocol.Forward{fwd("y", 1), fwd("z", 1)}, true)
	got = nil
	for f, ok := b.next(); ok; f, ok = b.next() {
		got = append(got, f.Node)
	}
	if fmt.Sprint(got) != "[y z]" {
		t.Fatalf("after a full round %v", got)
	}
}
