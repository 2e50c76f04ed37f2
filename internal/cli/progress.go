package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/zsend/zsend/receiver"
)

// ExitCodeFor maps a fetch error to the documented exit code.
func ExitCodeFor(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, receiver.ErrNotFound), errors.Is(err, receiver.ErrRefused):
		return ExitNotFound
	case errors.Is(err, receiver.ErrUnreachable):
		return ExitUnreachable
	case errors.Is(err, receiver.ErrVerify):
		return ExitVerify
	case errors.Is(err, receiver.ErrProtocol):
		return ExitProtocol
	case errors.Is(err, receiver.ErrServerKey):
		return ExitServerKey
	case errors.Is(err, receiver.ErrKeyRefused):
		return ExitKeyRefused
	}
	return ExitFailure
}

// Reporter draws receiver events: a pb/v3 bar per file on a terminal, a
// line per finished file otherwise (unless quiet), and NDJSON on its JSON
// writer when one is set. It is safe for concurrent use.
type Reporter struct {
	mu       sync.Mutex
	log      io.Writer // human output (stderr)
	js       *json.Encoder
	bars     bool
	quiet    bool
	bar      *pb.ProgressBar
	barName  string
	lastJSON time.Time
	memory   *MemoryPolicy
}

// NewReporter: log gets human output, jsonOut (may be nil) NDJSON.
func NewReporter(log, jsonOut io.Writer, quiet bool) *Reporter {
	r := &Reporter{log: log, quiet: quiet, bars: !quiet && IsTerminal(log), memory: NewMemoryPolicy()}
	if jsonOut != nil {
		r.js = json.NewEncoder(jsonOut)
	}
	return r
}

// JSONEvent is one NDJSON line. Fields that do not apply are omitted.
type JSONEvent struct {
	Event       string  `json:"event"`
	Time        string  `json:"time"`
	Name        string  `json:"name,omitempty"`
	Path        string  `json:"path,omitempty"`
	Size        *int64  `json:"size,omitempty"`
	BytesDone   *int64  `json:"bytes_done,omitempty"`
	WireBytes   *int64  `json:"wire_bytes,omitempty"`
	ReusedBytes *int64  `json:"reused_bytes,omitempty"`
	BLAKE3      string  `json:"blake3,omitempty"`
	Error       string  `json:"error,omitempty"`
	ExitCode    *int    `json:"exit_code,omitempty"`
	Reason      string  `json:"reason,omitempty"`
	Files       *int    `json:"files,omitempty"`
	Failed      *int    `json:"failed,omitempty"`
	Seconds     float64 `json:"seconds,omitempty"`
}

func i64(v int64) *int64 { return &v }
func iptr(v int) *int    { return &v }

// Event handles one receiver event.
func (r *Reporter) Event(e receiver.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.memory.Window(e.Window)
	r.json(e)
	if r.quiet && e.Kind != receiver.EventError {
		return // errors are always told
	}
	switch e.Kind {
	case receiver.EventStart:
		r.endBar()
		if r.bars {
			r.bar = pb.New64(e.Size).Set(pb.Bytes, true).SetWriter(r.log).
				SetTemplate(pb.Full).Set("prefix", e.Name).SetRefreshRate(200 * time.Millisecond)
			r.bar.SetCurrent(e.Done)
			r.bar.Start()
			r.barName = e.Name
		}
	case receiver.EventProgress:
		if r.bar != nil && r.barName == e.Name {
			r.bar.SetCurrent(e.Done)
		}
	case receiver.EventDone:
		if r.bar != nil && r.barName == e.Name {
			r.bar.SetCurrent(e.Size)
			r.endBar()
		}
		fmt.Fprintf(r.log, "%s  %s  %s verified (%d bytes over the wire, %d reused)\n", e.Hash, e.Path, human(e.Size), e.Wire, e.Reused)
	case receiver.EventError:
		if r.barName == e.Name {
			r.endBar()
		}
		fmt.Fprintf(r.log, "zrecv: %s: %v\n", e.Name, e.Err)
	case receiver.EventRestart:
		fmt.Fprintf(r.log, "zrecv: %s: %s\n", e.Name, e.Message)
	case receiver.EventReconnect:
		fmt.Fprintf(r.log, "zrecv: %s\n", e.Message)
	}
}

func (r *Reporter) endBar() {
	if r.bar != nil {
		r.bar.Finish()
		r.bar = nil
		r.barName = ""
	}
}

func (r *Reporter) json(e receiver.Event) {
	if r.js == nil {
		return
	}
	if e.Kind == receiver.EventProgress {
		if e.Time.Sub(r.lastJSON) < 500*time.Millisecond {
			return
		}
		r.lastJSON = e.Time
	}
	j := JSONEvent{Event: string(e.Kind), Time: e.Time.UTC().Format(time.RFC3339Nano), Name: e.Name, Path: e.Path}
	switch e.Kind {
	case receiver.EventStart:
		j.Size, j.ReusedBytes, j.BytesDone = i64(e.Size), i64(e.Reused), i64(e.Done)
	case receiver.EventProgress:
		j.Size, j.BytesDone, j.WireBytes = i64(e.Size), i64(e.Done), i64(e.Wire)
	case receiver.EventDone:
		j.Size, j.WireBytes, j.ReusedBytes, j.BLAKE3 = i64(e.Size), i64(e.Wire), i64(e.Reused), e.Hash.String()
	case receiver.EventError:
		j.Error, j.ExitCode, j.WireBytes, j.ReusedBytes = e.Err.Error(), iptr(ExitCodeFor(e.Err)), i64(e.Wire), i64(e.Reused)
	case receiver.EventRestart, receiver.EventReconnect:
		j.Reason = e.Message
	}
	r.js.Encode(j)
}

// Summary writes the closing line: NDJSON "summary" and, on a terminal,
// nothing more (each file already printed its line).
func (r *Reporter) Summary(results []receiver.Result, elapsed time.Duration, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.endBar()
	if r.js == nil {
		return
	}
	failed := 0
	var bytes, wire int64
	for _, res := range results {
		if res.Err != nil {
			failed++
		}
		bytes += res.Size
		wire += res.Wire
	}
	r.js.Encode(JSONEvent{Event: "summary", Time: time.Now().UTC().Format(time.RFC3339Nano), Files: iptr(len(results)),
		Failed: iptr(failed), BytesDone: i64(bytes), WireBytes: i64(wire), Seconds: elapsed.Seconds(), ExitCode: iptr(code)})
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
