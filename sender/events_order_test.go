package sender

import (
	"testing"
	"time"

	"github.com/zsend/zsend/protocol"
)

// Config.Events promises that an event describing a message to a peer is
// recorded before the message goes out. The callback here is slow on
// purpose: were an event recorded after its message, the message would
// arrive while the callback sleeps, and the event would be missing.
func TestEventsPrecedeTheirMessages(t *testing.T) {
	ev := &eventLog{}
	slow := func(e Event) {
		switch e.Kind {
		case "session-open", "file-start", "file-sent", "refused", "error":
			time.Sleep(100 * time.Millisecond)
		}
		ev.add(e)
	}
	cfg := Config{Paths: []string{batchTree(t)}, ChunkSize: batchChunk, Events: slow}
	srv := serveForTest(t, cfg)
	has := func(kind, name, what string) {
		t.Helper()
		for _, e := range ev.kinds(kind) {
			if e.Name == name {
				return
			}
		}
		t.Fatalf("%s arrived before its %q event for %q", what, kind, name)
	}
	c := dialBatch(t, srv.Endpoint(), protocol.Version1)
	has("session-open", "", "WELCOME")
	c.send(t, &protocol.Credit{Limit: 1 << 40})
	names := map[uint32]string{1: "etc/mid0", 2: "etc/big", 3: "etc/nope"}
	for req := uint32(1); req <= 3; req++ {
		c.send(t, &protocol.Get{Request: req, Name: names[req]})
	}
	ended := 0
	for ended < 3 {
		switch m := c.expect(t).(type) {
		case *protocol.File:
			has("file-start", names[m.Request], "FILE")
		case *protocol.Chunk:
		case *protocol.End:
			has("file-sent", names[m.Request], "END")
			ended++
		case *protocol.Error:
			if m.Request != 3 {
				t.Fatalf("ERROR %+v", m)
			}
			has("refused", names[m.Request], "ERROR")
			ended++
		default:
			t.Fatalf("unexpected %T %+v", m, m)
		}
	}
}
