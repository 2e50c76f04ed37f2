package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/zsend/zsend/mirror"
	"github.com/zsend/zsend/receiver"
)

// TreeReporter draws a tree sync: one overall progress line on a terminal
// (files N/M, bytes, rate, ETA), drift and notes as lines, and NDJSON
// events when a JSON writer is set. It is safe for concurrent use.
type TreeReporter struct {
	mu       sync.Mutex
	log      io.Writer
	js       *json.Encoder
	term     bool
	quiet    bool
	start    time.Time
	last     time.Time
	lastJSON time.Time
	drawn    bool
}

// NewTreeReporter: log gets human output, jsonOut (may be nil) NDJSON.
func NewTreeReporter(log, jsonOut io.Writer, quiet bool) *TreeReporter {
	NewMemoryPolicy() // the same memory limit as file fetches (zmq4 allocates every frame)
	r := &TreeReporter{log: log, quiet: quiet, term: !quiet && IsTerminal(log), start: time.Now()}
	if jsonOut != nil {
		r.js = json.NewEncoder(jsonOut)
	}
	return r
}

// TreeJSON is one NDJSON line of a tree sync.
type TreeJSON struct {
	Event         string   `json:"event"`
	Time          string   `json:"time"`
	Tree          string   `json:"tree,omitempty"`
	Version       string   `json:"version,omitempty"`
	Seq           *uint64  `json:"seq,omitempty"`
	Path          string   `json:"path,omitempty"`
	Message       string   `json:"message,omitempty"`
	Dir           string   `json:"dir,omitempty"`
	Unchanged     *bool    `json:"unchanged,omitempty"`
	Repaired      *bool    `json:"repaired,omitempty"`
	Files         *int     `json:"files,omitempty"`
	Bytes         *int64   `json:"bytes,omitempty"`
	FilesDone     *int     `json:"files_done,omitempty"`
	BytesDone     *int64   `json:"bytes_done,omitempty"`
	FilesFetched  *int     `json:"files_fetched,omitempty"`
	BytesFetched  *int64   `json:"bytes_fetched,omitempty"`
	FilesReused   *int     `json:"files_reused,omitempty"`
	BytesReused   *int64   `json:"bytes_reused,omitempty"`
	FilesStaged   *int     `json:"files_staged,omitempty"`
	FilesRecycled *int     `json:"files_recycled,omitempty"`
	Recycled      string   `json:"recycled,omitempty"`
	ManifestBytes *int64   `json:"manifest_bytes,omitempty"`
	Drift         []string `json:"drift,omitempty"`
	Pruned        []string `json:"pruned,omitempty"`
	Error         string   `json:"error,omitempty"`
	ExitCode      *int     `json:"exit_code,omitempty"`
	Seconds       float64  `json:"seconds,omitempty"`
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// Event handles one mirror event.
func (r *TreeReporter) Event(e mirror.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.js != nil {
		j := TreeJSON{Event: string(e.Kind), Time: e.Time.UTC().Format(time.RFC3339Nano), Tree: e.Tree, Version: e.Version.String(),
			Path: e.Path, Message: e.Message}
		emit := true
		switch e.Kind {
		case mirror.EventVersion:
			j.Seq, j.Files, j.Bytes = &e.Seq, &e.FilesTotal, &e.BytesTotal
		case mirror.EventProgress:
			if e.Time.Sub(r.lastJSON) < 500*time.Millisecond {
				emit = false
			} else {
				r.lastJSON = e.Time // the last one printed: one line per 500 ms however often events come
			}
			j.Files, j.Bytes, j.FilesDone, j.BytesDone = &e.FilesTotal, &e.BytesTotal, &e.FilesDone, &e.BytesDone
		}
		if emit {
			r.js.Encode(j)
		}
	}
	if r.quiet {
		return
	}
	switch e.Kind {
	case mirror.EventProgress:
		if r.term && time.Since(r.last) >= 200*time.Millisecond {
			r.last = time.Now()
			r.draw(e)
		}
	case mirror.EventVersion:
		r.clear()
		fmt.Fprintf(r.log, "zrecv: %s: version %s (seq %d): %d files, %s\n", Printable(e.Tree), e.Version.Short(), e.Seq, e.FilesTotal, human(e.BytesTotal))
	case mirror.EventDrift:
		r.clear()
		fmt.Fprintf(r.log, "zrecv: %s: drift: %s was changed locally; fetching it again\n", Printable(e.Tree), Printable(e.Path))
	case mirror.EventNote:
		r.clear()
		fmt.Fprintf(r.log, "zrecv: %s: %s\n", Printable(e.Tree), Printable(e.Message))
	}
}

// draw writes the progress line in place.
func (r *TreeReporter) draw(e mirror.Event) {
	el := time.Since(r.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(e.BytesDone) / el
	}
	// Small files cost per file, large ones per byte: the fraction done
	// is the mean of both.
	frac := 1.0
	if e.FilesTotal > 0 && e.BytesTotal > 0 {
		frac = (float64(e.FilesDone)/float64(e.FilesTotal) + float64(e.BytesDone)/float64(e.BytesTotal)) / 2
	} else if e.FilesTotal > 0 {
		frac = float64(e.FilesDone) / float64(e.FilesTotal)
	}
	eta := "?"
	if frac > 0 && frac <= 1 {
		eta = (time.Duration(el*(1-frac)/frac) * time.Second).Round(time.Second).String()
	}
	fmt.Fprintf(r.log, "\r\x1b[K%s: files %d/%d, %s/%s, %s/s, ETA %s", Printable(e.Tree), e.FilesDone, e.FilesTotal,
		human(e.BytesDone), human(e.BytesTotal), human(int64(rate)), eta)
	r.drawn = true
}

func (r *TreeReporter) clear() {
	if r.drawn {
		fmt.Fprint(r.log, "\r\x1b[K")
		r.drawn = false
	}
}

// Done reports the end of a sync: a line on stderr, "sync" (or "error")
// in NDJSON.
func (r *TreeReporter) Done(res mirror.Result, err error, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clear()
	secs := time.Since(r.start).Seconds()
	if r.js != nil {
		j := TreeJSON{Event: "sync", Time: now(), Tree: res.Tree, Seq: &res.Seq, Dir: res.Dir, Unchanged: &res.Unchanged, Repaired: &res.Repaired,
			Files: &res.Files, Bytes: &res.Bytes, FilesFetched: &res.FilesFetched, BytesFetched: &res.BytesFetched,
			FilesReused: &res.FilesReused, BytesReused: &res.BytesReused, FilesStaged: &res.FilesStaged, FilesRecycled: &res.FilesRecycled, Recycled: res.Recycled,
			ManifestBytes: &res.ManifestBytes, Drift: res.Drift, Pruned: res.Pruned, ExitCode: &code, Seconds: secs}
		if res.Version != [32]byte{} {
			j.Version = res.Version.String()
		}
		if err != nil {
			j.Event, j.Error = "error", err.Error()
		}
		r.js.Encode(j)
	}
	if err != nil {
		fmt.Fprintf(r.log, "zrecv: %s: %s\n", Printable(res.Tree), Printable(err.Error()))
		return
	}
	if r.quiet {
		return
	}
	switch {
	case res.Unchanged:
		fmt.Fprintf(r.log, "%s: version %s (seq %d) is current; nothing to fetch\n", Printable(res.Stable), res.Version.Short(), res.Seq)
	default:
		what := "now shows"
		if res.Repaired {
			what = "repaired"
		}
		fmt.Fprintf(r.log, "%s %s version %s (seq %d): %d files fetched (%s), %d reused (%s), %d drifted, %.2fs\n",
			Printable(res.Stable), what, res.Version.Short(), res.Seq, res.FilesFetched, human(res.BytesFetched), res.FilesReused,
			human(res.BytesReused), len(res.Drift), secs)
	}
}

// TreeExitCode maps a sync error to an exit code.
func TreeExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, receiver.ErrVerify), errors.Is(err, mirror.ErrMismatch):
		return ExitVerify
	case errors.Is(err, mirror.ErrBadManifest):
		return ExitProtocol
	case errors.Is(err, mirror.ErrNotTree), errors.Is(err, receiver.ErrNoTrees):
		return ExitNotFound
	}
	return ExitCodeFor(err)
}
