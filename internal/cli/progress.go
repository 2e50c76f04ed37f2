package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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
	case errors.Is(err, receiver.ErrTooSlow):
		return ExitTooSlow
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
	lastLost string // cause of the last reconnect line printed
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
	Refetched   *int64  `json:"refetched_bytes,omitempty"`
	Endpoint    string  `json:"endpoint,omitempty"`
	Attempt     *int    `json:"attempt,omitempty"`
	RetryInMS   *int64  `json:"retry_in_ms,omitempty"`
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
				SetTemplate(pb.Full).Set("prefix", Printable(e.Name)).SetRefreshRate(200 * time.Millisecond)
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
		fmt.Fprintf(r.log, "%s  %s  %s verified (%d bytes over the wire, %d reused)\n", e.Hash, Printable(e.Path), human(e.Size), e.Wire, e.Reused)
	case receiver.EventError:
		if r.barName == e.Name {
			r.endBar()
		}
		fmt.Fprintf(r.log, "zrecv: %s\n", fileMessage(e.Name, e.Path, e.Err.Error()))
	case receiver.EventRestart:
		fmt.Fprintf(r.log, "zrecv: %s\n", fileMessage(e.Name, e.Path, e.Message))
	case receiver.EventReconnect:
		// The first failure is told at once; repeats of the same cause
		// are not (a server that is down fails every ~2s).
		cause := fmt.Sprint(e.Err)
		if e.Attempt <= 1 || cause != r.lastLost {
			fmt.Fprintf(r.log, "zrecv: %s\n", Printable(e.Message))
		}
		r.lastLost = cause
	}
}

// fileMessage is msg about the file name (at path), made Printable, with
// the name in front unless msg already starts with the name or the path:
// errors about local files name their path, and "a/b: a/b: ..." says
// nothing twice.
func fileMessage(name, path, msg string) string {
	for _, p := range []string{name, path} {
		if p != "" && strings.HasPrefix(msg, p+": ") {
			return Printable(msg)
		}
	}
	if name == "" {
		return Printable(msg)
	}
	return Printable(name + ": " + msg)
}

// Fail reports a failure that stops zrecv before any file is fetched (a
// usage error, a missing output directory, a bad endpoint): a line on the
// log and, with JSON output, an "error" event with its exit code, so that
// every failure has its event before the summary.
func (r *Reporter) Fail(err error, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.log, "zrecv: %s\n", Printable(err.Error()))
	if r.js != nil {
		r.js.Encode(JSONEvent{Event: string(receiver.EventError), Time: time.Now().UTC().Format(time.RFC3339Nano), Error: err.Error(), ExitCode: iptr(code)})
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
		j.Refetched = i64(e.Refetched)
	case receiver.EventError:
		j.Error, j.ExitCode, j.WireBytes, j.ReusedBytes = e.Err.Error(), iptr(ExitCodeFor(e.Err)), i64(e.Wire), i64(e.Reused)
		j.Refetched = i64(e.Refetched)
	case receiver.EventRestart:
		j.Reason = e.Message
	case receiver.EventReconnect:
		j.Reason, j.Endpoint, j.Attempt, j.RetryInMS = e.Message, e.Endpoint, iptr(e.Attempt), i64(e.RetryIn.Milliseconds())
		if e.Err != nil {
			j.Error = e.Err.Error()
		}
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
