package cli

import (
	"fmt"
	"hash/fnv"
	"io"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/zsend/zsend/sender"
)

// ClientName names a receiver for zsend's terminal and log lines: its peer
// id (which it chose, so it is made Printable and need not be unique) and
// a short id of its session, which tells apart two clients with the same
// peer id and follows one session from "connected" to "disconnected".
func ClientName(peer, session string) string {
	return Printable(peer) + "[" + ShortSession(session) + "]"
}

// ShortSession is an 8-hex-digit digest of a session id (the ROUTER
// identity in hex, which is long: zmq4 and libzmq pick random ones).
func ShortSession(session string) string {
	h := fnv.New32a()
	h.Write([]byte(session))
	return fmt.Sprintf("%08x", h.Sum32())
}

// ServerBars draws zsend's progress on a terminal: one line per client
// with a transfer in progress (client, file, bytes, rate), redrawn in
// place below the log. When the transfer ends the line goes away (the
// caller logs a line for the file), so nothing is left frozen on screen
// however many files and clients come and go; Stop clears the block.
//
// pb/v3's own Pool is not used: it cannot drop finished bars (a server
// would redraw every transfer it ever made), and it switches the terminal's
// echo off, which a long-running server should not do.
type ServerBars struct {
	mu    sync.Mutex
	w     io.Writer
	bars  map[string]*pb.ProgressBar // by session: one transfer at a time each
	order []string                   // sessions in the order their bars appeared
	drawn int                        // lines of bars currently on screen
	stop  chan struct{}
	done  chan struct{}
}

// NewServerBars draws on w, which should be a terminal, until Stop.
func NewServerBars(w io.Writer) *ServerBars {
	b := &ServerBars{w: w, bars: map[string]*pb.ProgressBar{}, stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b
}

func (b *ServerBars) loop() {
	defer close(b.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.mu.Lock()
			b.redraw("")
			b.mu.Unlock()
		}
	}
}

// redraw moves up over the bars on screen, prints above (a log line, if
// any), then the bars in progress, and clears what a longer block left.
func (b *ServerBars) redraw(above string) {
	if b.drawn > 0 {
		fmt.Fprintf(b.w, "\r\033[%dA", b.drawn)
	}
	if above != "" {
		fmt.Fprintf(b.w, "\r%s\033[K\n", above)
	}
	for _, s := range b.order {
		fmt.Fprintf(b.w, "\r%s\033[K\n", b.bars[s].String())
	}
	b.drawn = len(b.order)
	fmt.Fprint(b.w, "\033[J")
}

// Event updates the bars. It reports whether the event is shown by them,
// in which case the caller need not print a line for it.
func (b *ServerBars) Event(e sender.Event) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e.Kind {
	case "file-start":
		b.remove(e.Session)
		bar := pb.New64(e.Size).Set(pb.Bytes, true).Set(pb.Static, true).SetTemplate(pb.Full).
			Set("prefix", ClientName(e.Peer, e.Session)+" "+Printable(e.Name)).SetWidth(100)
		bar.Start()
		bar.SetCurrent(e.Offset)
		b.bars[e.Session] = bar
		b.order = append(b.order, e.Session)
		b.redraw("")
		return true
	case "progress":
		if bar := b.bars[e.Session]; bar != nil {
			bar.SetCurrent(e.Sent)
		}
		return true
	case "file-sent", "error", "session-close":
		// The caller logs a line; the bar goes.
		if b.remove(e.Session) {
			b.redraw("")
		}
	}
	return false
}

// Log prints a line above the bars.
func (b *ServerBars) Log(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.redraw(line)
}

// remove drops a session's bar; it reports whether there was one.
func (b *ServerBars) remove(session string) bool {
	bar := b.bars[session]
	if bar == nil {
		return false
	}
	bar.Finish()
	delete(b.bars, session)
	for i, s := range b.order {
		if s == session {
			b.order = append(b.order[:i], b.order[i+1:]...)
			break
		}
	}
	return true
}

// Stop stops redrawing and clears the bars from the screen.
func (b *ServerBars) Stop() {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.order) > 0 {
		b.remove(b.order[0])
	}
	b.redraw("")
}
