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

// Control sessions (PROTOCOL.md section 14): a follower's long session
// (LIST with SUBSCRIBE, REPORT, SWITCH), STATUS for the fleet table, and a
// one-shot node's REPORT. They carry no file data; files move in ordinary
// sessions (Fetch, FetchRequests, the mirror).

// ctl is one control session, from WELCOME to BYE.
type ctl struct {
	cfg      *Config
	sock     zmq4.Socket
	cancel   context.CancelFunc
	inbox    <-chan zsock.Inbound
	lastRecv atomic.Int64
	version  uint8
	tick     *time.Ticker
	welcomed bool // WELCOME received: heartbeats may be sent

	// waiting is the number of requests (HELLO included) the caller
	// awaits an answer to; while it is not zero, a server that sends
	// nothing but heartbeats for StallTimeout since the last answer (or
	// since waiting became non-zero) fails the session, as for data.
	waiting    int
	lastAnswer time.Time
}

// await sets the number of requests awaiting an answer; the stall clock
// starts when it becomes non-zero.
func (c *ctl) await(n int) {
	if c.waiting == 0 && n > 0 {
		c.lastAnswer = time.Now()
	}
	c.waiting = n
}

// errRetry marks session failures worth another attempt (no connection,
// connection lost, server busy or restarting).
type retryable struct{ err error }

func (r *retryable) Error() string { return r.err.Error() }
func (r *retryable) Unwrap() error { return r.err }

func retryErr(format string, args ...any) error { return &retryable{fmt.Errorf(format, args...)} }

// IsRetryable reports whether a control session failed in a way a new
// attempt may fix (the server unreachable, restarting, or the connection
// lost).
func IsRetryable(err error) bool {
	var r *retryable
	return errors.As(err, &r)
}

// dialCtl connects to the endpoint at index i of cfg.Failover, sends
// HELLO and waits for WELCOME at version 2. With one endpoint it dials
// until dialBy; with a failover list, once (bounded by PeerTimeout), so
// that the caller moves to the next endpoint promptly.
func dialCtl(ctx context.Context, cfg *Config, i int, dialBy time.Time) (*ctl, error) {
	f := cfg.Failover
	ep, name := f.dial[i], f.eps[i]
	retries := -1
	if f.Len() > 1 {
		retries = 0
		if by := time.Now().Add(cfg.PeerTimeout); by.Before(dialBy) {
			dialBy = by
		}
	}
	sockCtx, cancel := context.WithCancel(guard.WithConfig(context.WithoutCancel(ctx), cfg.guardConfig(i)))
	sock := zmq4.NewDealer(sockCtx, zmq4.WithDialerRetry(100*time.Millisecond), zmq4.WithDialerMaxRetries(retries),
		zmq4.WithLogger(discardLogger()), zmq4.WithTimeout(cfg.PeerTimeout))
	c := &ctl{cfg: cfg, sock: sock, cancel: cancel, version: protocol.Version1}
	dialed := make(chan error, 1)
	go func() { dialed <- sock.Dial(ep) }()
	timer := time.NewTimer(time.Until(dialBy))
	defer timer.Stop()
	select {
	case err := <-dialed:
		if err != nil {
			c.abort()
			return nil, retryErr("dialing %s: %v", name, err)
		}
	case <-timer.C:
		cancel()
		<-dialed
		c.abort()
		return nil, retryErr("no connection to %s", name)
	case <-ctx.Done():
		cancel()
		<-dialed
		c.abort()
		return nil, ctx.Err()
	}
	c.lastRecv.Store(time.Now().UnixNano())
	c.inbox = zsock.RecvLoop(sockCtx, sock, 16, &c.lastRecv)
	c.tick = time.NewTicker(cfg.Heartbeat / 2)
	c.send(&protocol.Hello{MinVersion: protocol.MinVersion, MaxVersion: protocol.MaxVersion,
		MaxChunk: cfg.MaxChunk, HeartbeatMS: uint32(cfg.Heartbeat / time.Millisecond), PeerID: cfg.PeerID})
	c.await(1)
	for {
		m, err := c.next(ctx, nil)
		if err != nil {
			c.abort()
			return nil, err
		}
		w, ok := m.(*protocol.Welcome)
		if !ok {
			c.abort()
			return nil, fmt.Errorf("%w: %v before WELCOME", ErrProtocol, m.Command())
		}
		if w.Version < protocol.MinVersion || w.Version > protocol.MaxVersion {
			c.abort()
			return nil, fmt.Errorf("%w: server chose version %d", ErrProtocol, w.Version)
		}
		c.version, c.welcomed = w.Version, true
		c.await(0)
		if c.version < protocol.Version2 {
			c.close()
			return nil, ErrNoTrees
		}
		return c, nil
	}
}

func (c *ctl) send(m protocol.Message) {
	c.sock.Send(zmq4.NewMsgFrom(protocol.Encode(c.version, m)...))
}

func (c *ctl) abort() {
	c.cancel()
	c.sock.Close()
	if c.tick != nil {
		c.tick.Stop()
	}
}

// close says BYE and closes.
func (c *ctl) close() {
	c.send(&protocol.Bye{Code: protocol.CodeOK, Reason: "done"})
	c.abort()
}

// next returns the next message that is not a heartbeat. It sends PINGs,
// answers PINGs, and fails the session when the server is silent for
// PeerTimeout, says BYE, or sends a session-level ERROR. If idle is not
// nil it is called at each tick (for periodic work) and may return an
// error to end the session.
func (c *ctl) next(ctx context.Context, idle func(time.Time) error) (protocol.Message, error) {
	return c.nextOrWake(ctx, nil, idle)
}

// nextOrWake is next that also returns (nil, nil) when wake fires.
func (c *ctl) nextOrWake(ctx context.Context, wake <-chan struct{}, idle func(time.Time) error) (protocol.Message, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
			return nil, nil
		case now := <-c.tick.C:
			if silent := now.Sub(time.Unix(0, c.lastRecv.Load())); silent > c.cfg.PeerTimeout {
				return nil, retryErr("server silent for %v", silent.Round(time.Millisecond))
			}
			if c.waiting > 0 && now.Sub(c.lastAnswer) > c.cfg.StallTimeout {
				return nil, retryErr("no answer from the server for %v (only heartbeats)", now.Sub(c.lastAnswer).Round(time.Millisecond))
			}
			if c.welcomed {
				// Not before WELCOME: a PING then would be at version 1
				// in what becomes a version 2 session (the server drops
				// it); the silence bound above still applies.
				c.send(&protocol.Ping{Token: uint64(now.UnixNano())})
			}
			if idle != nil {
				if err := idle(now); err != nil {
					return nil, err
				}
			}
		case in, ok := <-c.inbox:
			if !ok {
				return nil, retryErr("connection closed")
			}
			if in.Err != nil {
				return nil, retryErr("connection lost: %v", in.Err)
			}
			msg, _, err := protocol.Decode(in.Frames)
			if err != nil {
				c.send(&protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
				return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
			}
			switch m := msg.(type) {
			case *protocol.Ping:
				c.send(&protocol.Pong{Token: m.Token})
				continue
			case *protocol.Pong:
				continue
			case *protocol.Bye:
				err := fmt.Errorf("server closed the session: %s (%v)", m.Reason, m.Code)
				if m.Code == protocol.CodeUnavailable || m.Code == protocol.CodeTimeout {
					return nil, &retryable{err}
				}
				return nil, err
			case *protocol.Error:
				if m.Request == protocol.NoRequest {
					re := &RemoteError{Code: m.Code, Message: m.Message}
					if m.Code == protocol.CodeTooMany || m.Code == protocol.CodeUnavailable {
						return nil, &retryable{re}
					}
					return nil, re
				}
			}
			c.lastAnswer = time.Now()
			return msg, nil
		}
	}
}

// FleetRow is one row of the server's fleet table.
type FleetRow struct {
	Node     string
	Tree     string
	State    protocol.NodeState
	Seq      uint64
	Version  protocol.Hash
	Behind   uint64
	Age      time.Duration // since the node was last heard from
	SyncTime time.Duration
	Error    string
	Hook     protocol.HookResult
	// Parent is the relay the row was forwarded by (PROTOCOL.md section
	// 15), "" for a node that reports to the server directly (or when
	// the server predates relays: see FleetStatus.Parents).
	Parent string
}

// FleetStatus is the server's answer to STATUS.
type FleetStatus struct {
	Trees   []TreeInfo // each tree's latest version, sorted by name
	Barrier bool       // the server coordinates switches (--barrier)
	Rows    []FleetRow // sorted by tree, then node
	// Parents: the server named each row's parent (it knows relays).
	// False for a server that predates them, which refused STATUS with
	// PARENTS; Status then asked again without it.
	Parents bool
}

// maxFleetRows bounds the rows one STATUS may return.
const maxFleetRows = 1 << 20

// Status asks the server for its fleet table (tree "" = every tree). A
// server that cannot be reached is retried for cfg.Timeout.
func Status(ctx context.Context, cfg Config, tree string) (FleetStatus, error) {
	if err := cfg.setDefaults(); err != nil {
		return FleetStatus{}, err
	}
	deadline := time.Now().Add(cfg.Timeout)
	backoff := 100 * time.Millisecond
	rot := newRotation(cfg.Failover)
	flags := protocol.StatusParents
	for {
		st, err := statusOnce(ctx, &cfg, rot.idx, tree, deadline, flags)
		var re *RemoteError
		if flags != 0 && errors.As(err, &re) && re.Code == protocol.CodeBadRequest {
			// A server that predates relays: STATUS's flags were
			// reserved (PROTOCOL.md section 15.5). Ask without them.
			flags = 0
			continue
		}
		if err == nil || !IsRetryable(err) || ctx.Err() != nil {
			return st, err
		}
		if round, _ := rot.failed(nil); !round {
			continue // the next endpoint of the list, at once
		}
		if time.Now().Add(backoff).After(deadline) {
			return st, fmt.Errorf("%w: %v (gave up after %v)", ErrUnreachable, err, cfg.Timeout)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func statusOnce(ctx context.Context, cfg *Config, i int, tree string, dialBy time.Time, flags uint8) (FleetStatus, error) {
	st := FleetStatus{Parents: flags&protocol.StatusParents != 0}
	c, err := dialCtl(ctx, cfg, i, dialBy)
	if err != nil {
		return st, err
	}
	defer c.abort()
	const req = 1
	c.send(&protocol.Status{Request: req, Flags: flags, Tree: tree})
	c.await(1)
	for {
		msg, err := c.next(ctx, nil)
		if err != nil {
			return st, err
		}
		switch m := msg.(type) {
		case *protocol.Tree:
			if m.Request != req || len(st.Trees) >= maxTrees {
				return st, fmt.Errorf("%w: unexpected TREE", ErrProtocol)
			}
			st.Barrier = m.Flags&protocol.TreeBarrier != 0
			st.Trees = append(st.Trees, TreeInfo{Name: m.Name, Seq: m.Seq, Entries: m.Entries, Bytes: m.Bytes,
				ManifestSize: m.ManifestSize, Version: m.Version})
		case *protocol.Fleet:
			if m.Request != req || len(st.Rows) >= maxFleetRows {
				return st, fmt.Errorf("%w: unexpected FLEET", ErrProtocol)
			}
			if m.HasParent != st.Parents {
				return st, fmt.Errorf("%w: FLEET row of %s with parent %v, asked %v", ErrProtocol, m.Node, m.HasParent, st.Parents)
			}
			st.Rows = append(st.Rows, FleetRow{Node: m.Node, Tree: m.Tree, State: m.State, Seq: m.Seq, Version: m.Version,
				Behind: m.Behind, Age: time.Duration(m.AgeMS) * time.Millisecond, SyncTime: time.Duration(m.SyncMS) * time.Millisecond,
				Error: m.Error, Hook: m.Hook, Parent: m.Parent})
		case *protocol.End:
			if m.Request != req || m.Size != uint64(len(st.Rows)) {
				return st, fmt.Errorf("%w: END counts %d rows, %d received", ErrProtocol, m.Size, len(st.Rows))
			}
			c.close()
			return st, nil
		case *protocol.Error:
			return st, &RemoteError{Code: m.Code, Message: m.Message}
		default:
			return st, fmt.Errorf("%w: %v in answer to STATUS", ErrProtocol, m.Command())
		}
	}
}

// Report sends node reports in one short session and waits for the
// server's answer to each. It returns the first refusal (a *RemoteError:
// 404 unknown tree, 403 name taken, 429 table full), after sending all.
func Report(ctx context.Context, cfg Config, reports ...protocol.Report) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	c, err := dialCtl(ctx, &cfg, cfg.Failover.index(), time.Now().Add(cfg.Timeout))
	if err != nil {
		return err
	}
	defer c.abort()
	for i := range reports {
		r := reports[i]
		r.Request = uint32(i + 1)
		c.send(&r)
	}
	var first error
	for acked := 0; acked < len(reports); {
		c.await(len(reports) - acked)
		msg, err := c.next(ctx, nil)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *protocol.End:
			acked++
		case *protocol.Error:
			acked++
			if first == nil {
				first = &RemoteError{Code: m.Code, Message: m.Message}
			}
		default:
			return fmt.Errorf("%w: %v in answer to REPORT", ErrProtocol, m.Command())
		}
	}
	c.close()
	return first
}

// ControlEventKind says what a ControlEvent is.
type ControlEventKind string

// Control event kinds.
const (
	ControlConnected ControlEventKind = "connected" // WELCOME received, subscriptions sent
	ControlTree      ControlEventKind = "tree"      // a TREE: Tree, Barrier
	ControlSwitch    ControlEventKind = "switch"    // a SWITCH or SWITCHAT: Tree.Name, Tree.Seq, Tree.Version, At
	ControlRefused   ControlEventKind = "refused"   // a LIST or REPORT refused: Err
)

// ControlEvent is something the server said on a follower's session.
type ControlEvent struct {
	Kind     ControlEventKind
	Endpoint string // connected: the server of this session
	Tree     TreeInfo
	Barrier  bool
	// At (switch) is when to switch, by this node's clock: the instant a
	// SWITCHAT names, bounded by its in-ms (protocol.SwitchWait); the
	// time the message was read for a SWITCH.
	At  time.Time
	Err error
}

// ControlConfig configures Control.
type ControlConfig struct {
	// Trees to subscribe to (LIST with SUBSCRIBE, one each).
	Trees []string
	// Reports returns the reports to send: all of them when all is true
	// (after connecting, and every ReportEvery so the server knows the
	// node is alive), otherwise those that changed since the last call.
	Reports func(all bool) []protocol.Report
	// Notify is signalled when Reports has something new.
	Notify <-chan struct{}
	// Events receives what the server says; called from the session's
	// goroutine, it must not block.
	Events func(ControlEvent)
	// ReportEvery re-sends every report; default 10s.
	ReportEvery time.Duration
	// Forwards, if set (a relay, PROTOCOL.md section 15.4), returns the
	// rows of the relay's own fleet table to FORWARD, like Reports: all
	// of them when all is true, otherwise those that changed (Notify
	// signals them too). A server that predates relays drops the
	// session with ERROR 501 after a FORWARD: Control then returns an
	// error matching ErrForwardUnsupported, and the caller SHOULD stop
	// forwarding to it.
	Forwards func(all bool) []protocol.Forward
}

// ErrForwardUnsupported: the server does not know FORWARD (it predates
// relays); it dropped the control session (ERROR 501).
var ErrForwardUnsupported = errors.New("server does not accept forwarded reports (it predates relays)")

// maxUnacked bounds the REPORTs in flight on a control session.
const maxUnacked = 256

// Control runs one follower session until it fails or ctx ends: HELLO,
// a LIST with SUBSCRIBE per tree, then TREE and SWITCH events as they
// come, and the node's REPORTs. It returns ctx.Err() when ctx ends and
// otherwise the reason the session ended (IsRetryable tells whether to
// try again; a follower always does, with a capped backoff). It dials for
// at most cfg.Timeout.
//
// With a failover list it uses the list's current endpoint; when the
// session fails it moves the list to the next endpoint (the next call
// starts there), and when another user of the same Config.Failover moves
// the list (a sync that found the server lying or gone) it ends the
// session within a heartbeat, so that control and data stay on one server.
func Control(ctx context.Context, cfg Config, cc ControlConfig) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if cc.ReportEvery <= 0 {
		cc.ReportEvery = 10 * time.Second
	}
	f := cfg.Failover
	i := f.index()
	err := control(ctx, &cfg, i, cc)
	if err != nil && ctx.Err() == nil && f.Len() > 1 {
		f.advance(i, nil) // a no-op if the list moved already
	}
	return err
}

func control(ctx context.Context, cfg *Config, i int, cc ControlConfig) error {
	f := cfg.Failover
	c, err := dialCtl(ctx, cfg, i, time.Now().Add(cfg.Timeout))
	if err != nil {
		return err
	}
	defer c.abort()
	subs := map[uint32]string{}
	listed := map[uint32]bool{} // subscriptions whose first END has not come
	for i, t := range cc.Trees {
		req := uint32(i + 1)
		subs[req] = t
		listed[req] = true
		c.send(&protocol.List{Request: req, Flags: protocol.ListSubscribe, Tree: t})
	}
	emit := func(e ControlEvent) {
		if cc.Events != nil {
			cc.Events(e)
		}
	}
	emit(ControlEvent{Kind: ControlConnected, Endpoint: f.eps[i]})
	nextReq := uint32(len(cc.Trees) + 1)
	unacked := map[uint32]string{}
	forwarded := false
	// A relay may forward more rows than maxUnacked: the rest wait in
	// the backlog (the latest of each row) and go as acknowledgements
	// come back.
	var backlog forwardBacklog
	var reqID func() uint32
	flush := func() {
		for len(unacked) < maxUnacked {
			fw, ok := backlog.next()
			if !ok {
				return
			}
			fw.Request = reqID()
			unacked[fw.Request] = fw.Tree
			c.send(&fw)
			forwarded = true
		}
	}
	reqID = func() uint32 {
		nextReq++
		if nextReq == 0 {
			nextReq = uint32(len(cc.Trees) + 1)
		}
		return nextReq
	}
	send := func(all bool) {
		if cc.Reports != nil {
			for _, r := range cc.Reports(all) {
				if len(unacked) >= maxUnacked {
					return // the server is not answering; the liveness check ends the session
				}
				r.Request = reqID()
				unacked[r.Request] = r.Tree
				c.send(&r)
			}
		}
		if cc.Forwards != nil {
			backlog.add(cc.Forwards(all), all)
			flush()
		}
	}
	send(true)
	lastAll := time.Now()
	inner, stop := context.WithCancel(ctx)
	defer stop()
	// Notifications arrive while next() waits; a goroutine turns them
	// into a wake-up the loop checks at each message or tick.
	var pending atomic.Bool
	wake := make(chan struct{}, 1)
	if cc.Notify != nil {
		go func() {
			for {
				select {
				case <-inner.Done():
					return
				case <-cc.Notify:
					pending.Store(true)
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	for {
		if pending.Swap(false) {
			send(false)
		}
		// Subscriptions not yet listed and reports not yet acknowledged
		// must be answered (a stall otherwise); announcements may take
		// any time.
		c.await(len(listed) + len(unacked))
		msg, err := c.nextOrWake(ctx, wake, func(now time.Time) error {
			if cur := f.index(); cur != i {
				c.close()
				return retryErr("moving from %s to %s", f.eps[i], f.eps[cur])
			}
			if now.Sub(lastAll) >= cc.ReportEvery {
				lastAll = now
				send(true)
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				c.close()
				return ctx.Err()
			}
			var re *RemoteError
			if forwarded && errors.As(err, &re) && re.Code == protocol.CodeUnknownCommand {
				return &retryable{fmt.Errorf("%w: %v", ErrForwardUnsupported, err)}
			}
			return err
		}
		if msg == nil {
			continue // woken by Notify
		}
		switch m := msg.(type) {
		case *protocol.Tree:
			t, ok := subs[m.Request]
			if !ok || (t != "" && m.Name != t) || protocol.ValidName(m.Name) != nil {
				return fmt.Errorf("%w: TREE %q for request %d", ErrProtocol, m.Name, m.Request)
			}
			emit(ControlEvent{Kind: ControlTree, Barrier: m.Flags&protocol.TreeBarrier != 0,
				Tree: TreeInfo{Name: m.Name, Seq: m.Seq, Entries: m.Entries, Bytes: m.Bytes, ManifestSize: m.ManifestSize, Version: m.Version}})
		case *protocol.Switch:
			if _, ok := subs[m.Request]; !ok {
				return fmt.Errorf("%w: SWITCH for request %d", ErrProtocol, m.Request)
			}
			emit(ControlEvent{Kind: ControlSwitch, Tree: TreeInfo{Name: m.Tree, Seq: m.Seq, Version: m.Version}, At: time.Now()})
		case *protocol.SwitchAt:
			if _, ok := subs[m.Request]; !ok {
				return fmt.Errorf("%w: SWITCHAT for request %d", ErrProtocol, m.Request)
			}
			now := time.Now()
			emit(ControlEvent{Kind: ControlSwitch, Tree: TreeInfo{Name: m.Tree, Seq: m.Seq, Version: m.Version},
				At: now.Add(protocol.SwitchWait(now.UnixNano(), m))})
		case *protocol.End:
			delete(unacked, m.Request) // a LIST's END or a REPORT's acknowledgement
			delete(listed, m.Request)
			flush()
		case *protocol.Error:
			re := &RemoteError{Code: m.Code, Message: m.Message}
			if t, ok := subs[m.Request]; ok {
				delete(listed, m.Request)
				emit(ControlEvent{Kind: ControlRefused, Tree: TreeInfo{Name: t}, Err: fmt.Errorf("subscribing to %s: %w", t, re)})
			} else if t, ok := unacked[m.Request]; ok {
				delete(unacked, m.Request)
				emit(ControlEvent{Kind: ControlRefused, Tree: TreeInfo{Name: t}, Err: fmt.Errorf("report of %s: %w", t, re)})
				flush()
			}
		default:
			return fmt.Errorf("%w: %v is not a command a server may send here", ErrProtocol, m.Command())
		}
	}
}

// forwardBacklog holds the rows a relay has yet to FORWARD, in order, at
// most one per (node, tree): the latest.
type forwardBacklog struct {
	rows []protocol.Forward
	head int               // rows[:head] are sent
	at   map[[2]string]int // (node, tree) -> index in rows, for rows not sent
}

// add queues rows; a full round (all) replaces what is queued, since it
// holds every row.
func (b *forwardBacklog) add(rows []protocol.Forward, all bool) {
	if all || b.at == nil || b.head == len(b.rows) {
		b.rows, b.head = b.rows[:0], 0
		if all || b.at == nil {
			b.at = map[[2]string]int{}
		}
	}
	for _, f := range rows {
		k := [2]string{f.Node, f.Tree}
		if i, ok := b.at[k]; ok {
			b.rows[i] = f
			continue
		}
		b.at[k] = len(b.rows)
		b.rows = append(b.rows, f)
	}
}

// next takes the first queued row.
func (b *forwardBacklog) next() (protocol.Forward, bool) {
	if b.head >= len(b.rows) {
		return protocol.Forward{}, false
	}
	f := b.rows[b.head]
	b.rows[b.head] = protocol.Forward{}
	b.head++
	delete(b.at, [2]string{f.Node, f.Tree})
	return f, true
}
