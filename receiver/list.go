package receiver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zsock"
	"github.com/zsend/zsend/protocol"
)

// TreeInfo is one tree a server publishes, as its TREE message says.
type TreeInfo struct {
	Name         string
	Seq          uint64        // the version's sequence number (only grows)
	Entries      uint64        // entries in the version's manifest
	Bytes        uint64        // sum of its file sizes
	ManifestSize uint64        // length of the encoded manifest
	Version      protocol.Hash // the version id (BLAKE3 of the manifest)
}

// maxTrees bounds how many TREE messages one LIST may return: a server
// cannot make the client grow without bound.
const maxTrees = 1 << 16

// needVersion fails a session whose version cannot carry the requests.
func (c *client) needVersion(v uint8) error {
	if v >= protocol.Version2 {
		return nil
	}
	for _, t := range c.tasks {
		if t.rq != nil && t.rq.Kind != KindGet && !t.done {
			return ErrNoTrees
		}
	}
	return nil
}

// List asks the server which trees it publishes (tree "" = all of them)
// and returns their latest versions, sorted by name as the server sends
// them. A tree the server does not publish is ErrNotFound; a server that
// speaks only version 1 is ErrNoTrees. A lost connection is retried for
// cfg.Timeout.
func List(ctx context.Context, cfg Config, tree string) ([]TreeInfo, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if tree != "" {
		if err := protocol.ValidName(tree); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRefused, err)
		}
	}
	// The same clock as Fetch: give up when no attempt connected within
	// Timeout; say at once that we are connecting, and name the cause.
	// With a failover list, the next endpoint is tried at once and the
	// backoff waited once per round (failover.go).
	deadline := time.Now().Add(cfg.Timeout)
	backoff := 100 * time.Millisecond
	rot := newRotation(cfg.Failover)
	for attempt := 1; ; attempt++ {
		trees, err, retry := listOnce(ctx, &cfg, rot, tree)
		// A refusal of the LIST itself (no such tree) is the answer; any
		// other final failure is the server's, and the next endpoint of a
		// failover list is asked.
		var re *RemoteError
		answer := errors.As(err, &re) && (re.Code == protocol.CodeNotFound || re.Code == protocol.CodeRefused)
		if err == nil || ctx.Err() != nil || (!retry && (rot.f.Len() == 1 || answer)) {
			if ctx.Err() != nil && err != nil {
				return nil, ctx.Err()
			}
			return trees, err
		}
		failedAt := rot.endpoint()
		var drop error
		if !retry {
			drop = err
		}
		round, more := rot.failed(drop)
		if !more {
			return nil, rot.allDropped()
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w: %v (gave up after %v%s)", ErrUnreachable, err, cfg.Timeout, rot.droppedNote())
		}
		var wait time.Duration
		if round {
			wait = min(backoff, left)
			backoff = min(2*backoff, 2*time.Second)
		}
		if cfg.Progress != nil {
			cfg.Progress(Event{Kind: EventReconnect, Time: time.Now(), Endpoint: failedAt, Attempt: attempt, RetryIn: wait, Err: err,
				Message: fmt.Sprintf("connecting to %s: %v; retrying for up to %v%s", failedAt, err, left.Round(100*time.Millisecond), rot.nextNote(failedAt))})
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
			}
		}
	}
}

// listOnce runs one session: HELLO, LIST, TREE* END, BYE.
// One dial attempt, bounded by PeerTimeout, so that its cause is known.
func listOnce(ctx context.Context, cfg *Config, rot *rotation, tree string) (_ []TreeInfo, _ error, retry bool) {
	ep := rot.dialAddr()
	sockCtx, cancel := context.WithCancel(guard.WithConfig(context.WithoutCancel(ctx), cfg.guardConfig(rot.idx)))
	defer cancel()
	sock := zmq4.NewDealer(sockCtx, zmq4.WithDialerMaxRetries(0),
		zmq4.WithLogger(discardLogger()), zmq4.WithTimeout(cfg.PeerTimeout))
	defer sock.Close()
	dialed := make(chan error, 1)
	go func() { dialed <- sock.Dial(ep) }()
	timer := time.NewTimer(cfg.PeerTimeout)
	defer timer.Stop()
	select {
	case err := <-dialed:
		if err != nil {
			if errors.Is(err, guard.ErrServerKey) || errors.Is(err, guard.ErrClientRefused) || errors.Is(err, guard.ErrMechanism) {
				// CURVE: final, as for Fetch (wrong key, key refused, or a
				// mechanism on one side only).
				c := &client{cfg: *cfg, rot: rot, helloDrops: make([]int, rot.f.Len())}
				return nil, c.dialError(err).err, false
			}
			return nil, errors.New(dialCause(err)), true
		}
	case <-timer.C:
		cancel()
		<-dialed
		return nil, fmt.Errorf("no connection established within %v", cfg.PeerTimeout), true
	case <-ctx.Done():
		cancel()
		<-dialed
		return nil, ctx.Err(), false
	}
	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	inbox := zsock.RecvLoop(sockCtx, sock, 4, &lastRecv)
	version := protocol.Version1
	send := func(m protocol.Message) {
		sock.Send(zmq4.NewMsgFrom(protocol.Encode(version, m)...))
	}
	send(&protocol.Hello{MinVersion: protocol.MinVersion, MaxVersion: protocol.MaxVersion,
		MaxChunk: cfg.MaxChunk, HeartbeatMS: uint32(cfg.Heartbeat / time.Millisecond), PeerID: cfg.PeerID})
	const req = 1
	welcomed := false
	var trees []TreeInfo
	// HELLO, then LIST, await an answer: a server that sends only
	// heartbeats for StallTimeout since the last answer fails the session.
	lastAnswer := time.Now()
	tick := time.NewTicker(cfg.Heartbeat / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err(), false
		case now := <-tick.C:
			if silent := now.Sub(time.Unix(0, lastRecv.Load())); silent > cfg.PeerTimeout {
				return nil, fmt.Errorf("server silent for %v", silent.Round(time.Millisecond)), true
			}
			if waited := now.Sub(lastAnswer); waited > cfg.StallTimeout {
				return nil, fmt.Errorf("no answer from the server for %v (only heartbeats)", waited.Round(time.Millisecond)), true
			}
			if welcomed {
				send(&protocol.Ping{Token: uint64(now.UnixNano())})
			}
		case in, ok := <-inbox:
			if !ok {
				return nil, errors.New("connection closed"), true
			}
			if in.Err != nil {
				return nil, fmt.Errorf("connection lost: %v", in.Err), true
			}
			msg, _, err := protocol.Decode(in.Frames)
			if err != nil {
				send(&protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
				return nil, fmt.Errorf("%w: %v", ErrProtocol, err), false
			}
			if c := msg.Command(); c != protocol.CmdPing && c != protocol.CmdPong {
				lastAnswer = time.Now()
			}
			switch m := msg.(type) {
			case *protocol.Welcome:
				if welcomed {
					return nil, fmt.Errorf("%w: a second WELCOME", ErrProtocol), false
				}
				if m.Version < protocol.MinVersion || m.Version > protocol.MaxVersion {
					return nil, fmt.Errorf("%w: server chose version %d", ErrProtocol, m.Version), false
				}
				version, welcomed = m.Version, true
				if version < protocol.Version2 {
					send(&protocol.Bye{Code: protocol.CodeOK, Reason: "done"})
					return nil, ErrNoTrees, false
				}
				send(&protocol.List{Request: req, Tree: tree})
			case *protocol.Tree:
				if !welcomed || m.Request != req {
					return nil, fmt.Errorf("%w: TREE for request %d", ErrProtocol, m.Request), false
				}
				if len(trees) >= maxTrees {
					return nil, fmt.Errorf("%w: more than %d trees listed", ErrProtocol, maxTrees), false
				}
				if err := protocol.ValidName(m.Name); err != nil || (tree != "" && m.Name != tree) {
					return nil, fmt.Errorf("%w: TREE names %q", ErrProtocol, m.Name), false
				}
				trees = append(trees, TreeInfo{Name: m.Name, Seq: m.Seq, Entries: m.Entries, Bytes: m.Bytes,
					ManifestSize: m.ManifestSize, Version: m.Version})
			case *protocol.End:
				if !welcomed || m.Request != req {
					return nil, fmt.Errorf("%w: END for request %d", ErrProtocol, m.Request), false
				}
				if m.Size != uint64(len(trees)) {
					return nil, fmt.Errorf("%w: END counts %d trees, %d received", ErrProtocol, m.Size, len(trees)), false
				}
				send(&protocol.Bye{Code: protocol.CodeOK, Reason: "done"})
				return trees, nil, false
			case *protocol.Error:
				re := &RemoteError{Code: m.Code, Message: m.Message}
				switch {
				case m.Request == req:
					return nil, re, false
				case m.Code == protocol.CodeTooMany || m.Code == protocol.CodeUnavailable || m.Code == protocol.CodeBadRequest:
					return nil, re, true
				}
				return nil, re, false
			case *protocol.Bye:
				retry := m.Code == protocol.CodeUnavailable || m.Code == protocol.CodeTimeout
				return nil, fmt.Errorf("server closed the session: %s (%v)", m.Reason, m.Code), retry
			case *protocol.Ping:
				send(&protocol.Pong{Token: m.Token})
			case *protocol.Pong:
			default:
				send(&protocol.Error{Code: protocol.CodeBadRequest, Message: "unexpected " + msg.Command().String()})
				return nil, fmt.Errorf("%w: %v is not a command a server may send", ErrProtocol, msg.Command()), false
			}
		}
	}
}
