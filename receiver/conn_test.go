package receiver

import (
	"errors"
	"testing"
	"time"

	"github.com/zsend/zsend/credit"
)

// A write error applied while submit waits for room in the writer's queue
// fails the file, which waits (drainTask) for the file's operations. The
// operation being submitted is not queued yet and must not be waited for.
// This deadlocked once in three runs of the full-disk test.
func TestSubmitDoesNotWaitForItself(t *testing.T) {
	w := &writer{ops: make(chan op), res: make(chan result, 1)}
	c := &client{byReq: map[uint32]*task{}}
	s := &conn{c: c, w: w, window: credit.NewWindow(1<<20, 1<<20)}
	s.window.Start(time.Now())
	tk := &task{name: "f", open: true}
	c.tasks = []*task{tk}

	// One earlier write of tk is in flight and comes back failed...
	tk.inflight, s.inflight = 1, 1
	w.res <- result{kind: opWrite, t: tk, n: 1, err: errors.New("no space left on device")}
	// ...and the writer takes no new operation for a while, so submit must
	// apply that result first.
	go func() {
		time.Sleep(50 * time.Millisecond)
		for o := range w.ops {
			w.res <- result{kind: o.kind, t: o.t, n: len(o.data)}
		}
	}()
	done := make(chan struct{})
	go func() {
		s.submit(op{kind: opWrite, t: tk, data: []byte{1}})
		s.drain()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("submit deadlocked waiting for its own operation")
	}
	close(w.ops)
	if !tk.done || tk.err == nil {
		t.Fatalf("the failed file was not failed: done %v, err %v", tk.done, tk.err)
	}
	if tk.inflight != 0 || s.inflight != 0 {
		t.Fatalf("in flight after drain: task %d, session %d", tk.inflight, s.inflight)
	}
}
