package receiver

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/zsend/zsend/internal/endpoint"
	"github.com/zsend/zsend/internal/zsock"
)

// Failover (README "Failover", PROTOCOL.md section 8): Config.Endpoint
// may list several servers that serve the same content, a root and its
// relays or the relays of one tier: "tcp://relay1:5555,tcp://relay2:5555".
//
//   - Every call starts at the list's current endpoint: the first, unless
//     the Failover is shared (Config.Failover) and an earlier call moved
//     it.
//   - A failed dial, a failed handshake, a server silent beyond
//     PeerTimeout, a lost connection or a session the server ended moves
//     the call to the next endpoint, wrapping around, at once. The
//     reconnect backoff is waited once per full round of the list, not per
//     endpoint, so a live second endpoint is used without delay.
//   - An endpoint that fails in a way retrying cannot fix (the server key
//     does not match, our key is refused, another protocol version,
//     repeated protocol violations) is dropped for the rest of the call;
//     the call fails when every endpoint is dropped, with every
//     endpoint's error (errors.Is matches each).
//   - The budgets and clocks are the call's, whatever endpoint serves it:
//     Timeout counts from the last verified data, so moving to the next
//     endpoint is a reconnect like any other and restarts no clock.
//   - Data is verified against the same hashes whoever sends it, and a
//     resumed file carries its version tag, so a file begun on one server
//     and finished on another is either the one asked for or started over.

// Failover is an ordered list of endpoints and the one in use. Calls given
// the same *Failover (through copies of one Config) share the current
// endpoint: after one call moved to the second server, the next call
// starts there. It is safe for concurrent use.
type Failover struct {
	eps  []string // as given, for messages
	dial []string // the guarded forms, for Dial

	mu  sync.Mutex
	cur int
}

// NewFailover parses an endpoint or a comma-separated list of them (see
// endpoint.Split: a comma starts a new endpoint where a scheme follows
// it). Each must be tcp://HOST:PORT, ipc://PATH or inproc://NAME; an
// endpoint listed twice is refused. Errors wrap endpoint.ErrInvalid.
func NewFailover(list string) (*Failover, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("no endpoint")
	}
	eps := endpoint.Split(list)
	f := &Failover{eps: eps, dial: make([]string, len(eps))}
	seen := map[string]bool{}
	for i, ep := range eps {
		d, err := zsock.Endpoint(ep)
		if err != nil {
			if len(eps) > 1 {
				return nil, fmt.Errorf("in the list %q: %w", list, err)
			}
			return nil, err
		}
		if seen[ep] {
			return nil, fmt.Errorf("%w %q: listed twice in %q", endpoint.ErrInvalid, ep, list)
		}
		seen[ep] = true
		f.dial[i] = d
	}
	return f, nil
}

// Endpoints returns the list, in order.
func (f *Failover) Endpoints() []string { return append([]string(nil), f.eps...) }

// Len is the number of endpoints.
func (f *Failover) Len() int { return len(f.eps) }

// Current returns the endpoint in use.
func (f *Failover) Current() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.eps[f.cur]
}

// Next moves on from endpoint from, if it is still the current one (a
// caller that found it lying or gone), and returns the endpoint now in
// use. Several callers that saw the same server fail move the list once.
func (f *Failover) Next(from string) string {
	for i, ep := range f.eps {
		if ep == from {
			return f.eps[f.advance(i, nil)]
		}
	}
	return f.Current()
}

// index returns the index of the endpoint in use.
func (f *Failover) index() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

// advance moves the current endpoint past from if it is still from, then
// past any endpoint skip names (dropped by the caller), and returns it.
func (f *Failover) advance(from int, skip []error) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.eps)
	if f.cur == from {
		f.cur = (from + 1) % n
	}
	for i := 0; i < n && skip != nil && skip[f.cur] != nil; i++ {
		f.cur = (f.cur + 1) % n
	}
	return f.cur
}

// rotation is one call's walk over a Failover.
type rotation struct {
	f       *Failover
	idx     int     // the endpoint of the current attempt
	dropped []error // per endpoint: why it was dropped (nil: in rotation)
	tried   int     // failed attempts in this round
}

func newRotation(f *Failover) *rotation {
	return &rotation{f: f, idx: f.index(), dropped: make([]error, f.Len())}
}

func (r *rotation) endpoint() string { return r.f.eps[r.idx] }
func (r *rotation) dialAddr() string { return r.f.dial[r.idx] }

func (r *rotation) live() int {
	n := 0
	for _, e := range r.dropped {
		if e == nil {
			n++
		}
	}
	return n
}

// failed records that the attempt at the current endpoint failed (for
// good if drop is not nil) and moves to the next endpoint. round is true
// when every endpoint still in rotation failed since the round began: the
// caller waits its backoff. more is false when every endpoint is dropped.
func (r *rotation) failed(drop error) (round, more bool) {
	if drop != nil {
		r.dropped[r.idx] = drop
	} else {
		r.tried++
	}
	live := r.live()
	if live == 0 {
		return false, false
	}
	if r.tried >= live {
		round, r.tried = true, 0
	}
	r.idx = r.f.advance(r.idx, r.dropped)
	return round, true
}

// progressed starts a new round: the current endpoint served data.
func (r *rotation) progressed() { r.tried = 0 }

// allDropped is the error of a call whose every endpoint was dropped:
// the only one's error as it is, or each endpoint's, all matched by
// errors.Is.
func (r *rotation) allDropped() error {
	if len(r.dropped) == 1 {
		return r.dropped[0]
	}
	return r.listErrors("every endpoint failed")
}

// listErrors joins the errors of the dropped endpoints after prefix.
func (r *rotation) listErrors(prefix string) error {
	format, args := prefix, []any{}
	for i, e := range r.dropped {
		if e != nil {
			format += "; %s: %w"
			args = append(args, r.f.eps[i], e)
		}
	}
	return fmt.Errorf(format, args...)
}

// droppedNote describes the dropped endpoints for an ErrUnreachable
// message ("" if none).
func (r *rotation) droppedNote() string {
	var b strings.Builder
	for i, e := range r.dropped {
		if e != nil {
			fmt.Fprintf(&b, "; %s dropped: %v", r.f.eps[i], e)
		}
	}
	return b.String()
}

// nextNote says where the next attempt goes, when that is not where the
// last one went.
func (r *rotation) nextNote(prev string) string {
	if ep := r.endpoint(); ep != prev {
		return "; trying " + ep + " next"
	}
	return ""
}
