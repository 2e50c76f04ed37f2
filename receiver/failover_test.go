package receiver

import (
	"errors"
	"strings"
	"testing"

	"github.com/zsend/zsend/internal/endpoint"
)

func TestNewFailover(t *testing.T) {
	f, err := NewFailover("tcp://a:1, tcp://b:2,ipc:///x,y.sock")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Endpoints(), "|"); got != "tcp://a:1|tcp://b:2|ipc:///x,y.sock" {
		t.Fatalf("endpoints %q", got)
	}
	if f.Current() != "tcp://a:1" {
		t.Fatalf("starts at %s", f.Current())
	}
	for _, bad := range []string{"", "tcp://a:1,tcp://a:1", "nope,tcp://a:1", "tcp://a:1,tcp://b"} {
		if _, err := NewFailover(bad); err == nil || (bad != "" && !errors.Is(err, endpoint.ErrInvalid)) {
			t.Errorf("NewFailover(%q): %v", bad, err)
		}
	}
}

// The rotation moves to the next endpoint on each failure, says a round
// is complete once per pass over the endpoints still in rotation, skips
// dropped ones, and ends when all are dropped.
func TestRotation(t *testing.T) {
	f, _ := NewFailover("tcp://a:1,tcp://b:2,tcp://c:3")
	r := newRotation(f)
	var got []string
	var rounds []bool
	step := func(drop error) bool {
		got = append(got, r.endpoint())
		round, more := r.failed(drop)
		rounds = append(rounds, round)
		return more
	}
	step(nil) // a
	step(nil) // b
	step(nil) // c: round
	step(nil) // a
	r.progressed()
	step(nil)                                 // b: a new round begins
	step(errors.New("key"))                   // c dropped
	step(nil)                                 // a
	step(nil)                                 // b: round (a, b are the live ones)
	if more := step(errors.New("x")); !more { // a dropped
		t.Fatal("ended with b left")
	}
	if more := step(errors.New("y")); more { // b dropped
		t.Fatal("not ended with every endpoint dropped")
	}
	if want := "tcp://a:1 tcp://b:2 tcp://c:3 tcp://a:1 tcp://b:2 tcp://c:3 tcp://a:1 tcp://b:2 tcp://a:1 tcp://b:2"; strings.Join(got, " ") != want {
		t.Fatalf("order %q, want %q", strings.Join(got, " "), want)
	}
	if want := "false false true false false false true false true false"; fmtBools(rounds) != want {
		t.Fatalf("rounds %s, want %s", fmtBools(rounds), want)
	}
	err := r.allDropped()
	if !strings.Contains(err.Error(), "tcp://c:3: key") || !strings.Contains(err.Error(), "tcp://b:2: y") {
		t.Fatalf("allDropped: %v", err)
	}
}

func fmtBools(bs []bool) string {
	var s []string
	for _, b := range bs {
		if b {
			s = append(s, "true")
		} else {
			s = append(s, "false")
		}
	}
	return strings.Join(s, " ")
}

// Calls sharing a Failover start where the last one moved it; Next moves
// it once however many callers saw the same server fail.
func TestFailoverShared(t *testing.T) {
	f, _ := NewFailover("tcp://a:1,tcp://b:2")
	r := newRotation(f)
	r.failed(nil)
	if newRotation(f).endpoint() != "tcp://b:2" {
		t.Fatal("a second call does not start at the endpoint found")
	}
	if f.Next("tcp://a:1") != "tcp://b:2" || f.Next("tcp://a:1") != "tcp://b:2" {
		t.Fatal("Next from a stale endpoint moved the list")
	}
	if f.Next("tcp://b:2") != "tcp://a:1" {
		t.Fatal("Next does not wrap around")
	}
	one, _ := NewFailover("tcp://a:1")
	if round, more := newRotation(one).failed(nil); !round || !more {
		t.Fatal("one endpoint: every failure ends a round (the backoff as before)")
	}
}
