package cli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/zsend/zsend/sender"
)

// ServerBars draws zsend's progress on a terminal: one pb/v3 bar per
// transfer in progress (bytes, rate, ETA), labelled with the receiver and
// the file, redrawn in place below the log. A finished bar is printed once
// more as a permanent line and leaves the block; log lines go above it.
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

// redraw moves up over the bars on screen, prints above (a finished bar
// or a log line, if any), then the bars in progress.
func (b *ServerBars) redraw(above string) {
	if b.drawn > 0 {
		fmt.Fprintf(b.w, "\r\033[%dA", b.drawn)
	}
	if above != "" {
		fmt.Fprintf(b.w, "%s\033[K\n", above)
	}
	for _, s := range b.order {
		fmt.Fprintf(b.w, "%s\033[K\n", b.bars[s].String())
	}
	b.drawn = len(b.order)
	fmt.Fprint(b.w, "\033[J") // clear what a longer block left below
}

// Event updates the bars. It reports whether the event is shown by them,
// in which case the caller need not print a line for it.
func (b *ServerBars) Event(e sender.Event) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e.Kind {
	case "file-start":
		b.finish(e.Session)
		bar := pb.New64(e.Size).Set(pb.Bytes, true).Set(pb.Static, true).SetTemplate(pb.Full).
			Set("prefix", e.Peer+" "+e.Name).SetWidth(100)
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
	case "file-sent":
		if bar := b.bars[e.Session]; bar != nil {
			bar.SetCurrent(e.Size)
		}
		b.finish(e.Session)
		return true
	case "session-close":
		b.finish(e.Session)
	}
	return false
}

// Log prints a line above the bars.
func (b *ServerBars) Log(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.redraw(line)
}

// finish prints a session's bar for the last time and drops it.
func (b *ServerBars) finish(session string) {
	bar := b.bars[session]
	if bar == nil {
		return
	}
	delete(b.bars, session)
	for i, s := range b.order {
		if s == session {
			b.order = append(b.order[:i], b.order[i+1:]...)
			break
		}
	}
	b.redraw(bar.String())
}

// Stop draws the final state and stops redrawing.
func (b *ServerBars) Stop() {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.order) > 0 {
		b.finish(b.order[0])
	}
}
