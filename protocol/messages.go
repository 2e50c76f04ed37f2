package protocol

// Message is any ZSND message. Each concrete type below is one command;
// its fields are the header frame's fields in wire order.
type Message interface {
	Command() Command
	appendHeader(b []byte) []byte
	decodeHeader(d *decoder)
}

// Hello opens a session (C->S). Its layout is frozen across versions so a
// server can always read the offer; its command frame always says version 1.
type Hello struct {
	MinVersion  uint8
	MaxVersion  uint8
	MaxChunk    uint32 // largest chunk the client accepts
	HeartbeatMS uint32 // interval at which the client will send PING
	PeerID      string // operator-visible client name, may be empty
}

// Welcome accepts a session (S->C).
type Welcome struct {
	Version     uint8  // the version both sides now use
	ChunkSize   uint32 // every CHUNK but a file's last carries exactly this many bytes
	HeartbeatMS uint32 // interval at which the server will send PING
	MaxRequests uint32 // most GETs the client may have outstanding
	PeerID      string // operator-visible server name
}

// Get requests one file (C->S).
type Get struct {
	Request uint32 // client-chosen id, nonzero, unique among outstanding requests
	Offset  uint64 // resume point; the server may round it down
	Tag     Tag    // version the client holds a prefix of; zero if none
	Name    string
}

// List asks for the latest version of one tree, or of every tree when
// Tree is empty (C->S, version 2). The reply is one TREE per tree, sorted by
// name, then an END with Size = the number of TREEs and a zero hash.
type List struct {
	Request uint32 // client-chosen id, nonzero
	Flags   uint8  // ListSubscribe or 0; other bits MUST be 0
	Tree    string // a tree name, or "" for all trees
}

// ListSubscribe makes a LIST a subscription (follow mode): the server
// pushes a TREE with the LIST's request id for every new version of the
// listed trees until the session ends or the client CANCELs the request.
const ListSubscribe uint8 = 0x01

// MGet requests the manifest of a version of a tree (C->S, version 2). It
// has GET's layout: Name is the tree, Tag the first 16 octets of the wanted
// version id, or zero for the latest. The reply is FILE, CHUNK*, END whose
// hash is the version id.
type MGet Get

// VGet requests one regular file of a version of a tree (C->S, version 2).
// It has GET's layout: Name is "TREE/relative/path", Tag the first 16
// octets of the version id and never zero. The reply is FILE, CHUNK*, END
// whose hash is the file's hash in the manifest.
type VGet Get

// Tree describes the latest version of a tree (S->C, version 2).
type Tree struct {
	Request      uint32 // the LIST's request id
	Flags        uint8  // TreeBarrier or 0; other bits MUST be 0
	Seq          uint64 // the version's sequence number: only grows
	Entries      uint64 // entries in the manifest, the root included
	Bytes        uint64 // sum of the sizes of the version's regular files
	ManifestSize uint64 // length of the manifest's encoding (what MGET sends)
	Version      Hash   // the version id: BLAKE3-256 of the manifest
	Name         string // the tree's name
}

// BGet requests whole regular files of a version of a tree by their index
// in the version's manifest (C->S, version 3). Every file it names must
// be at most the session's chunk size. The reply is one or more PACKs
// carrying the files in the order asked, or an ERROR that ends it.
type BGet struct {
	Request uint32   // client-chosen id, nonzero
	Tag     Tag      // the version's tag, never zero
	Tree    string   // the tree's name
	Index   []uint32 // manifest entry indexes: 1 to MaxBatch of them
}

// Pack carries whole files answering a BGET (S->C, version 3): Files
// describe them in order, Data (the third frame, absent when every size
// is 0) is their contents one after another. Encode does not copy Data
// and Decode does not copy it.
type Pack struct {
	Request uint32
	Files   []PackFile // 1 to MaxPackFiles of them
	Data    []byte
}

// PackFile is one file of a PACK.
type PackFile struct {
	Index   uint32 // the file's index in the manifest, as the BGET named it
	Size    uint32 // its length in Data
	Mode    uint32 // permission bits (07777)
	MtimeNS int64  // modification time, nanoseconds since the Unix epoch
}

// DataLen is the sum of the files' sizes.
func (m *Pack) DataLen() uint64 {
	var n uint64
	for _, f := range m.Files {
		n += uint64(f.Size)
	}
	return n
}

// Credit grants flow-control credit (C->S). Limit is the absolute number of
// chunk data bytes the server may have sent on this session in total.
type Credit struct {
	Limit uint64
}

// Cancel abandons a request (C->S).
type Cancel struct {
	Request uint32
}

// File describes a requested file (S->C). CHUNKs for the request follow,
// starting at Offset, then END.
type File struct {
	Request uint32
	Size    uint64
	Mode    uint32 // permission bits (07777)
	MtimeNS int64  // modification time, nanoseconds since the Unix epoch
	Offset  uint64 // first byte the following CHUNKs carry
	Tag     Tag
	Name    string
}

// Chunk carries Length bytes of a file at Offset (S->C). Data is the third
// frame; Encode does not copy it and Decode does not copy it.
type Chunk struct {
	Request uint32
	Offset  uint64
	Hash    Hash // BLAKE3-256 of Data
	Data    []byte
}

// End closes a file (S->C).
type End struct {
	Request uint32
	Size    uint64
	Hash    Hash // BLAKE3-256 of the whole file, as b3sum prints it
}

// Ping asks the peer for a Pong echoing Token.
type Ping struct{ Token uint64 }

// Pong answers a Ping.
type Pong struct{ Token uint64 }

// Bye announces the end of the session.
type Bye struct {
	Code         Code
	RetryAfterMS uint32 // with CodeUnavailable: when to reconnect; 0 = at once
	Reason       string
}

// Error reports the failure of one request, or of the session when Request
// is NoRequest.
type Error struct {
	Request uint32
	Code    Code
	Message string
}

func (*Hello) Command() Command   { return CmdHello }
func (*Welcome) Command() Command { return CmdWelcome }
func (*Get) Command() Command     { return CmdGet }
func (*List) Command() Command    { return CmdList }
func (*MGet) Command() Command    { return CmdMGet }
func (*VGet) Command() Command    { return CmdVGet }
func (*BGet) Command() Command    { return CmdBGet }
func (*Pack) Command() Command    { return CmdPack }
func (*Tree) Command() Command    { return CmdTree }
func (*Credit) Command() Command  { return CmdCredit }
func (*Cancel) Command() Command  { return CmdCancel }
func (*File) Command() Command    { return CmdFile }
func (*Chunk) Command() Command   { return CmdChunk }
func (*End) Command() Command     { return CmdEnd }
func (*Ping) Command() Command    { return CmdPing }
func (*Pong) Command() Command    { return CmdPong }
func (*Bye) Command() Command     { return CmdBye }
func (*Error) Command() Command   { return CmdError }

func (m *Hello) appendHeader(b []byte) []byte {
	b = append(b, m.MinVersion, m.MaxVersion)
	b = be32(b, m.MaxChunk)
	b = be32(b, m.HeartbeatMS)
	return appendString(b, m.PeerID)
}

func (m *Hello) decodeHeader(d *decoder) {
	m.MinVersion = d.u8()
	m.MaxVersion = d.u8()
	m.MaxChunk = d.u32()
	m.HeartbeatMS = d.u32()
	m.PeerID = d.text(MaxTextLen)
}

func (m *Welcome) appendHeader(b []byte) []byte {
	b = append(b, m.Version)
	b = be32(b, m.ChunkSize)
	b = be32(b, m.HeartbeatMS)
	b = be32(b, m.MaxRequests)
	return appendString(b, m.PeerID)
}

func (m *Welcome) decodeHeader(d *decoder) {
	m.Version = d.u8()
	m.ChunkSize = d.u32()
	m.HeartbeatMS = d.u32()
	m.MaxRequests = d.u32()
	m.PeerID = d.text(MaxTextLen)
	if m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize {
		d.fail("chunk size %d outside [%d, %d]", m.ChunkSize, MinChunkSize, MaxChunkSize)
	}
}

func (m *Get) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Offset)
	b = append(b, m.Tag[:]...)
	return appendString(b, m.Name)
}

func (m *Get) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Offset = d.u64()
	d.bytes(m.Tag[:])
	m.Name = d.text(MaxNameLen)
	if m.Request == NoRequest {
		d.fail("request id 0 is reserved")
	}
}

func (m *List) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, m.Flags)
	return appendString(b, m.Tree)
}

func (m *List) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Flags = d.u8()
	m.Tree = d.text(MaxNameLen)
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case m.Flags&^ListSubscribe != 0:
		d.fail("flags %#02x has reserved bits set", m.Flags)
	}
}

func (m *MGet) appendHeader(b []byte) []byte { return (*Get)(m).appendHeader(b) }
func (m *MGet) decodeHeader(d *decoder)      { (*Get)(m).decodeHeader(d) }
func (m *VGet) appendHeader(b []byte) []byte { return (*Get)(m).appendHeader(b) }

func (m *VGet) decodeHeader(d *decoder) {
	(*Get)(m).decodeHeader(d)
	if m.Tag == (Tag{}) {
		d.fail("VGET needs a version tag")
	}
}

func (m *BGet) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, m.Tag[:]...)
	b = appendString(b, m.Tree)
	b = be16(b, uint16(len(m.Index)))
	for _, i := range m.Index {
		b = be32(b, i)
	}
	return b
}

func (m *BGet) decodeHeader(d *decoder) {
	m.Request = d.u32()
	d.bytes(m.Tag[:])
	m.Tree = d.text(MaxNameLen)
	n := int(d.u16())
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case m.Tag == (Tag{}):
		d.fail("BGET needs a version tag")
	case n < 1 || n > MaxBatch:
		d.fail("BGET of %d files, want 1 to %d", n, MaxBatch)
	case len(d.b) != 4*n:
		d.fail("BGET says %d indexes in %d octets", n, len(d.b))
	}
	if d.err != "" {
		return
	}
	m.Index = make([]uint32, n)
	for i := range m.Index {
		m.Index[i] = d.u32()
	}
}

func (m *Pack) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be16(b, uint16(len(m.Files)))
	for _, f := range m.Files {
		b = be32(b, f.Index)
		b = be32(b, f.Size)
		b = be32(b, f.Mode)
		b = be64(b, uint64(f.MtimeNS))
	}
	return b
}

// packFileLen is the length of one PackFile in the header.
const packFileLen = 20

func (m *Pack) decodeHeader(d *decoder) {
	m.Request = d.u32()
	n := int(d.u16())
	switch {
	case m.Request == NoRequest:
		d.fail("request id 0 is reserved")
	case n < 1 || n > MaxPackFiles:
		d.fail("PACK of %d files, want 1 to %d", n, MaxPackFiles)
	case len(d.b) != packFileLen*n:
		d.fail("PACK says %d files in %d octets", n, len(d.b))
	}
	if d.err != "" {
		return
	}
	m.Files = make([]PackFile, n)
	var total uint64
	for i := range m.Files {
		f := &m.Files[i]
		f.Index, f.Size, f.Mode, f.MtimeNS = d.u32(), d.u32(), d.u32(), int64(d.u64())
		if f.Mode&^0o7777 != 0 {
			d.fail("mode %#o has bits beyond 07777", f.Mode)
		}
		total += uint64(f.Size)
	}
	if total > MaxChunkSize {
		d.fail("PACK of %d data octets exceeds %d", total, MaxChunkSize)
	}
	d.chunkLen = uint32(total)
}

func (m *Tree) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = append(b, m.Flags)
	b = be64(b, m.Seq)
	b = be64(b, m.Entries)
	b = be64(b, m.Bytes)
	b = be64(b, m.ManifestSize)
	b = append(b, m.Version[:]...)
	return appendString(b, m.Name)
}

func (m *Tree) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Flags = d.u8()
	m.Seq = d.u64()
	m.Entries = d.u64()
	m.Bytes = d.u64()
	m.ManifestSize = d.u64()
	d.bytes(m.Version[:])
	m.Name = d.text(MaxNameLen)
	if m.Flags&^TreeBarrier != 0 {
		d.fail("flags %#02x has reserved bits set", m.Flags)
	}
}

func (m *Credit) appendHeader(b []byte) []byte { return be64(b, m.Limit) }
func (m *Credit) decodeHeader(d *decoder)      { m.Limit = d.u64() }

func (m *Cancel) appendHeader(b []byte) []byte { return be32(b, m.Request) }
func (m *Cancel) decodeHeader(d *decoder)      { m.Request = d.u32() }

func (m *File) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Size)
	b = be32(b, m.Mode)
	b = be64(b, uint64(m.MtimeNS))
	b = be64(b, m.Offset)
	b = append(b, m.Tag[:]...)
	return appendString(b, m.Name)
}

func (m *File) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Size = d.u64()
	m.Mode = d.u32()
	m.MtimeNS = int64(d.u64())
	m.Offset = d.u64()
	d.bytes(m.Tag[:])
	m.Name = d.text(MaxNameLen)
	switch {
	case m.Mode&^07777 != 0:
		d.fail("mode %#o has bits outside 07777", m.Mode)
	case m.Offset > m.Size:
		d.fail("offset %d beyond size %d", m.Offset, m.Size)
	case m.Size > 1<<62:
		d.fail("size %d too large", m.Size)
	}
}

func (m *Chunk) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Offset)
	b = be32(b, uint32(len(m.Data)))
	return append(b, m.Hash[:]...)
}

// decodeHeader reads the length into a placeholder; Decode checks it
// against the data frame.
func (m *Chunk) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Offset = d.u64()
	d.chunkLen = d.u32()
	d.bytes(m.Hash[:])
	if d.chunkLen == 0 || d.chunkLen > MaxChunkSize {
		d.fail("chunk length %d outside [1, %d]", d.chunkLen, MaxChunkSize)
	}
}

func (m *End) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be64(b, m.Size)
	return append(b, m.Hash[:]...)
}

func (m *End) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Size = d.u64()
	d.bytes(m.Hash[:])
}

func (m *Ping) appendHeader(b []byte) []byte { return be64(b, m.Token) }
func (m *Ping) decodeHeader(d *decoder)      { m.Token = d.u64() }
func (m *Pong) appendHeader(b []byte) []byte { return be64(b, m.Token) }
func (m *Pong) decodeHeader(d *decoder)      { m.Token = d.u64() }

func (m *Bye) appendHeader(b []byte) []byte {
	b = be16(b, uint16(m.Code))
	b = be32(b, m.RetryAfterMS)
	return appendString(b, m.Reason)
}

func (m *Bye) decodeHeader(d *decoder) {
	m.Code = Code(d.u16())
	m.RetryAfterMS = d.u32()
	m.Reason = d.text(MaxTextLen)
}

func (m *Error) appendHeader(b []byte) []byte {
	b = be32(b, m.Request)
	b = be16(b, uint16(m.Code))
	return appendString(b, m.Message)
}

func (m *Error) decodeHeader(d *decoder) {
	m.Request = d.u32()
	m.Code = Code(d.u16())
	m.Message = d.text(MaxTextLen)
}

func newMessage(c Command) Message {
	switch c {
	case CmdHello:
		return new(Hello)
	case CmdWelcome:
		return new(Welcome)
	case CmdGet:
		return new(Get)
	case CmdList:
		return new(List)
	case CmdMGet:
		return new(MGet)
	case CmdVGet:
		return new(VGet)
	case CmdTree:
		return new(Tree)
	case CmdCredit:
		return new(Credit)
	case CmdCancel:
		return new(Cancel)
	case CmdFile:
		return new(File)
	case CmdChunk:
		return new(Chunk)
	case CmdEnd:
		return new(End)
	case CmdPing:
		return new(Ping)
	case CmdPong:
		return new(Pong)
	case CmdBye:
		return new(Bye)
	case CmdError:
		return new(Error)
	case CmdReport:
		return new(Report)
	case CmdStatus:
		return new(Status)
	case CmdFleet:
		return new(Fleet)
	case CmdSwitch:
		return new(Switch)
	case CmdSwitchAt:
		return new(SwitchAt)
	case CmdForward:
		return new(Forward)
	case CmdAccess:
		return new(Access)
	case CmdBGet:
		return new(BGet)
	case CmdPack:
		return new(Pack)
	}
	return nil
}
