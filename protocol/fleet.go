package protocol

import "time"

// Follow mode and the fleet table (version 2, PROTOCOL.md section 14).

// TreeBarrier is TREE's flag bit 0: the server coordinates switches
// (zsend --barrier). A follower that already shows a version of the tree
// stages the announced version, REPORTs it staged, and switches only when
// a SWITCH for it arrives.
const TreeBarrier uint8 = 0x01

// NodeState is a node's state of one tree in REPORT and FLEET.
type NodeState uint8

// Node states. StateLost appears only in FLEET: the server derives it from
// a node's silence.
const (
	StateSyncing  NodeState = 1 // fetching or staging a version
	StateStaged   NodeState = 2 // a version is staged and checked, waiting to switch
	StateSwitched NodeState = 3 // the stable path shows the reported version
	StateFailed   NodeState = 4 // the last sync, check or hook failed
	StateLost     NodeState = 5 // FLEET only: not heard from within the server's bound
)

var stateNames = [...]string{"", "syncing", "staged", "switched", "failed", "lost"}

func (s NodeState) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return "invalid"
}

// HookResult is a node's last hook run, in REPORT and FLEET. Name ""
// means no hook ran; Exit is the exit status, -1 when it was killed
// (timeout) or could not start; a hook succeeded when Name != "" and
// Exit == 0.
type HookResult struct {
	Name       string // "check", "exec" or "rollback"; at most MaxHookNameLen octets
	Exit       int32
	DurationMS uint32
	Output     string // captured output, at most MaxHookOutput octets
}

// Report is a node's state of one tree (C->S, version 2). The server
// answers END (Request, size 0) when the fleet table took it, or ERROR
// (Request, code) when it refused it: 400 invalid, 403 name bound to
// another key, 404 unknown tree, 429 table full. Either way the session
// continues.
type Report struct {
	Request uint32
	State   NodeState // 1..4
	Seq     uint64    // sequence of the version the node shows (0: none)
	SyncMS  uint32    // duration of the last sync
	Version Hash      // id of the version the node shows (zero: none)
	Node    string    // node name, 1..MaxNodeLen octets
	Tree    string    // tree name, one name component
	Error   string    // last error, "" if none
	Hook    HookResult
}

// Status asks for the fleet table (C->S, version 2). The reply is one
// TREE per tree (its latest version), one FLEET per (node, tree) row,
// then END with Size = the number of FLEET rows.
type Status struct {
	Request uint32
	Flags   uint8  // StatusParents or 0; other bits MUST be 0
	Tree    string // a tree name, or "" for every tree
}

// StatusParents is STATUS's flag bit 0 (PROTOCOL.md section 15): every
// FLEET of the reply carries the row's parent. A server that predates
// relays refuses the flag (ERROR 400, session dropped); a client then
// asks again without it.
const StatusParents uint8 = 0x01

// Forward is a relay passing up one row of its own fleet table (C->S,
// version 2, PROTOCOL.md section 15): REPORT's fields, then Parent, the
// node name of the relay whose table the row came from. It is answered
// exactly like REPORT (END, or ERROR 400/403/404/429, request-level).
type Forward struct {
	Report
	Parent string // 1..MaxNodeLen octets
}

// Fleet is one row of the fleet table (S->C, version 2).
type Fleet struct {
	Request uint32
	State   NodeState // 1..5 (lost)
	Seq     uint64
	Behind  uint64 // versions behind the tree's latest
	AgeMS   uint64 // time since the node was last heard from
	SyncMS  uint32
	Version Hash
	Node    string
	Tree    string
	Error   string
	Hook    HookResult
	// HasParent: the row carries Parent (the STATUS asked with
	// StatusParents). Parent is the node name of the relay the row was
	// forwarded by, "" for a node that reports to this server directly.
	HasParent bool
	Parent    string
}

// Switch tells a follower to switch a staged version now (S->C, version
// 2): the barrier of zsend --barrier. Request is the follower's LIST
// SUBSCRIBE request id.
type Switch struct {
	Request uint32
	Seq     uint64
	Version Hash
	Tree    string
}

// SwitchAt tells a follower to switch a staged version at a set time
// (S->C, version 4, PROTOCOL.md section 17): the barrier's decision,
// timed so that every node switches at one instant. AtNS is that instant
// on the server's clock (nanoseconds since 1970-01-01T00:00:00Z); InMS is
// how long until it, measured by the server when it sent the message. A
// node waits SwitchWait(now, m) from when it read the message.
type SwitchAt struct {
	Request uint32
	Seq     uint64
	AtNS    int64
	InMS    uint32
	Version Hash
	Tree    string
}

// MaxSwitchInMS bounds SwitchAt.InMS: no node waits longer than this for
// a switch it was told about.
const MaxSwitchInMS = 10000

// SwitchWait is how long a node that reads m when its clock says nowNS
// waits before it switches: until m's instant by its own clock, but never
// longer than m.InMS and never less than 0. A node whose clock agrees
// with the server's switches at the instant; one whose clock is behind
// waits InMS from reading the message (at most what the server meant);
// one whose clock is ahead switches early, at once at worst. A wrong
// clock can make a node switch early, never hold it back.
func SwitchWait(nowNS int64, m *SwitchAt) time.Duration {
	in := time.Duration(m.InMS) * time.Millisecond
	switch left := m.AtNS - nowNS; {
	case m.AtNS <= nowNS:
		return 0
	case left < 0 || left > int64(in): // left < 0: the difference overflowed
		return in
	default:
		return time.Duration(left)
	}
}

func (*Report) Command() Command   { return CmdReport }
func (*Status) Command() Command   { return CmdStatus }
func (*Fleet) Command() Command    { return CmdFleet }
func (*Switch) Command() Command   { return CmdSwitch }
func (*SwitchAt) Command() Command { return CmdSwitchAt }
func (*Forward) Command() Command  { return CmdForward }
func (*Access) Command() Command   { return CmdAccess }

// Access asks which trees a client key may fetch (C->S, version 2,
// PROTOCOL.md section 15.8): a relay asks its parent about a child's
// CURVE key, so that the root's access control decides. Answered like
// LIST: one TREE per tree that Key may fetch whole (and the asking session
// may see), then END with Size = their number.
type Access struct {
	Request uint32
	Key     [32]byte // the client's CURVE public key
}

func (m *Access) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	return append(b, m.Key[:]...)
}

func (m *Access) decodeHeader(d *decoder) {
	m.Request = d.u32()
	d.bytes(m.Key[:])
	if m.Request == NoRequest {
		d.fail("request id 0 is reserved")
	}
}

func (h *HookResult) append(b []byte) []byte {
	b = appendString(b, h.Name)
	b = be32(b, uint32(h.Exit))
	b = be32(b, h.DurationMS)
	return appendString(b, h.Output)
}

func (h *HookResult) decode(d *decoder) {
	h.Name = d.text(MaxHookNameLen)
	h.Exit = int32(d.u32())
	h.DurationMS = d.u32()
	h.Output = d.text(MaxHookOutput)
	if h.Name == "" && (h.Exit != 0 || h.DurationMS != 0 || h.Output != "") {
		d.fail("hook result without a hook name")
	}
}

func (m *Report) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, uint8(m.State))
	b = be64(b, m.Seq)
	b = be32(b, m.SyncMS)
	b = append(b, m.Version[:]...)
	b = appendString(b, m.Node)
	b = appendString(b, m.Tree)
	b = appendString(b, m.Error)
	return m.Hook.append(b)
}

func (m *Report) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.State = NodeState(d.u8())
	m.Seq = d.u64()
	m.SyncMS = d.u32()
	d.bytes(m.Version[:])
	m.Node = d.text(MaxNodeLen)
	m.Tree = d.text(MaxComponentLen)
	m.Error = d.text(MaxTextLen)
	m.Hook.decode(d)
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case m.State < StateSyncing || m.State > StateFailed:
		d.fail("state %d is not one a node reports", m.State)
	case m.Node == "":
		d.fail("empty node name")
	case m.Tree == "":
		d.fail("empty tree name")
	}
}

func (m *Status) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, m.Flags)
	return appendString(b, m.Tree)
}

func (m *Status) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Flags = d.u8()
	m.Tree = d.text(MaxComponentLen)
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case m.Flags&^StatusParents != 0:
		d.fail("flags %#02x has reserved bits set", m.Flags)
	}
}

func (m *Forward) appendHeader(b []byte) []byte {
	b = m.Report.appendHeader(b)
	return appendString(b, m.Parent)
}

func (m *Forward) decodeHeader(d *decoder) {
	m.Report.decodeHeader(d)
	m.Parent = d.text(MaxNodeLen)
	if m.Parent == "" {
		d.fail("empty parent")
	}
}

func (m *Fleet) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, uint8(m.State))
	b = be64(b, m.Seq)
	b = be64(b, m.Behind)
	b = be64(b, m.AgeMS)
	b = be32(b, m.SyncMS)
	b = append(b, m.Version[:]...)
	b = appendString(b, m.Node)
	b = appendString(b, m.Tree)
	b = appendString(b, m.Error)
	b = m.Hook.append(b)
	if m.HasParent {
		b = appendString(b, m.Parent)
	}
	return b
}

// decodeHeader reads the layout with a parent when octets follow the
// hook (the reply to a STATUS with StatusParents), without one otherwise;
// the two are told apart by the frame's length, since every field before
// is self-delimiting.
func (m *Fleet) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.State = NodeState(d.u8())
	m.Seq = d.u64()
	m.Behind = d.u64()
	m.AgeMS = d.u64()
	m.SyncMS = d.u32()
	d.bytes(m.Version[:])
	m.Node = d.text(MaxNodeLen)
	m.Tree = d.text(MaxComponentLen)
	m.Error = d.text(MaxTextLen)
	m.Hook.decode(d)
	if d.err == "" && len(d.b) > 0 {
		m.HasParent = true
		m.Parent = d.text(MaxNodeLen)
	}
	if m.State < StateSyncing || m.State > StateLost {
		d.fail("state %d unknown", m.State)
	}
}

func (m *Switch) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Seq)
	b = append(b, m.Version[:]...)
	return appendString(b, m.Tree)
}

func (m *Switch) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Seq = d.u64()
	d.bytes(m.Version[:])
	m.Tree = d.text(MaxComponentLen)
	if m.Tree == "" {
		d.fail("empty tree name")
	}
}

func (m *SwitchAt) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Seq)
	b = be64(b, uint64(m.AtNS))
	b = be32(b, m.InMS)
	b = append(b, m.Version[:]...)
	return appendString(b, m.Tree)
}

func (m *SwitchAt) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Seq = d.u64()
	m.AtNS = int64(d.u64())
	m.InMS = d.u32()
	d.bytes(m.Version[:])
	m.Tree = d.text(MaxComponentLen)
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case m.Tree == "":
		d.fail("empty tree name")
	case m.InMS > MaxSwitchInMS:
		d.fail("in-ms %d over %d", m.InMS, MaxSwitchInMS)
	}
}
