// Package protocol is the wire encoding of ZSND, the zsend/zrecv file
// transfer protocol (see PROTOCOL.md at the repository root, which is the
// normative contract; this package is its executable form).
//
// Every ZSND message is one ZeroMQ multipart message:
//
//	frame 0  command frame: "ZSND" | version (1 octet) | command (1 octet)
//	frame 1  header frame: the command's fixed binary fields, big-endian
//	frame 2  data frame: CHUNK only, the chunk's bytes, never copied into frame 1
//
// The package is pure: no sockets, goroutines, files or clocks. Encoding
// appends to caller-supplied buffers and never copies chunk data; decoding
// validates every length against the limits in this file before it slices
// anything, and never panics on any input (the fuzz targets enforce that).
package protocol

import "fmt"

// Signature opens every command frame.
const Signature = "ZSND"

// Protocol versions this implementation speaks.
const (
	Version1   uint8 = 1
	Version2   uint8 = 2 // adds trees and versions (LIST, MGET, VGET, TREE, code 410), the fleet (REPORT, STATUS, SWITCH, FLEET) and relays (FORWARD)
	Version3   uint8 = 3 // adds BGET and PACK: many small files of a version in few messages
	Version4   uint8 = 4 // adds SWITCHAT: the barrier's switch at a set time
	MinVersion       = Version1
	MaxVersion       = Version4
)

// Limits that every decoder enforces before allocating or slicing.
const (
	CommandFrameLen = 6            // len(Signature) + version + command
	MaxHeaderLen    = 8 << 10      // largest header frame accepted
	MaxNameLen      = 4096         // largest file name, in bytes
	MaxComponentLen = 255          // largest single path component, in bytes
	MaxTextLen      = 1024         // largest free-text field (error message, peer id)
	MaxNodeLen      = 255          // largest node name in REPORT and FLEET
	MaxHookNameLen  = 16           // largest hook name in REPORT and FLEET
	MaxHookOutput   = 4096         // largest hook output in REPORT and FLEET
	MinChunkSize    = 4 << 10      // smallest chunk size a peer may negotiate
	MaxChunkSize    = 4 << 20      // largest chunk size a peer may negotiate
	MaxFrameSize    = MaxChunkSize // no frame of a valid session is larger than this
	TagLen          = 16           // length of a file version tag
	HashLen         = 32           // BLAKE3-256
	MaxFrames       = 3            // the most frames any message has
	DefaultChunk    = 1 << 20      // the chunk size a sender proposes by default
	NoRequest       = uint32(0)    // request id meaning "the whole session"
	MaxBatch        = 1000         // most files one BGET asks for
	MaxPackFiles    = 256          // most files one PACK carries
)

// Command identifies a message type; it is octet 5 of the command frame.
type Command uint8

// Commands. Client-to-server commands are below 0x10, server-to-client
// commands from 0x10, and commands either side may send from 0x20.
const (
	CmdHello    Command = 0x01 // C->S open a session, offer versions
	CmdGet      Command = 0x02 // C->S request one file
	CmdCredit   Command = 0x03 // C->S grant credit (absolute byte offset)
	CmdCancel   Command = 0x04 // C->S abandon a request
	CmdList     Command = 0x05 // C->S (v2) list served trees and their latest versions
	CmdMGet     Command = 0x06 // C->S (v2) request a tree version's manifest
	CmdVGet     Command = 0x07 // C->S (v2) request one file of a tree version
	CmdReport   Command = 0x08 // C->S (v2) a node's state of one tree, for the fleet table
	CmdStatus   Command = 0x09 // C->S (v2) request the fleet table
	CmdForward  Command = 0x0A // C->S (v2) a relay passes up a row of its fleet table
	CmdAccess   Command = 0x0B // C->S (v2) a relay asks which trees a client key may fetch
	CmdBGet     Command = 0x0C // C->S (v3) request small files of a tree version by manifest index
	CmdWelcome  Command = 0x10 // S->C accept a session
	CmdFile     Command = 0x11 // S->C metadata of a requested file
	CmdChunk    Command = 0x12 // S->C one chunk of file data
	CmdEnd      Command = 0x13 // S->C end of a file, whole-file hash
	CmdTree     Command = 0x14 // S->C (v2) one tree's latest version, answering LIST
	CmdSwitch   Command = 0x15 // S->C (v2) switch a staged version now (barrier)
	CmdFleet    Command = 0x16 // S->C (v2) one row of the fleet table, answering STATUS
	CmdPack     Command = 0x17 // S->C (v3) whole small files answering a BGET
	CmdSwitchAt Command = 0x18 // S->C (v4) switch a staged version at a set time (barrier)
	CmdPing     Command = 0x20 // both: heartbeat request
	CmdPong     Command = 0x21 // both: heartbeat reply
	CmdBye      Command = 0x22 // both: the session is ending
	CmdError    Command = 0x23 // both: a request or the session failed
)

var commandNames = map[Command]string{
	CmdHello: "HELLO", CmdGet: "GET", CmdCredit: "CREDIT", CmdCancel: "CANCEL",
	CmdWelcome: "WELCOME", CmdFile: "FILE", CmdChunk: "CHUNK", CmdEnd: "END",
	CmdPing: "PING", CmdPong: "PONG", CmdBye: "BYE", CmdError: "ERROR",
	CmdList: "LIST", CmdMGet: "MGET", CmdVGet: "VGET", CmdTree: "TREE",
	CmdReport: "REPORT", CmdStatus: "STATUS", CmdSwitch: "SWITCH", CmdFleet: "FLEET",
	CmdForward: "FORWARD", CmdAccess: "ACCESS", CmdBGet: "BGET", CmdPack: "PACK", CmdSwitchAt: "SWITCHAT",
}

// Since is the first protocol version that has command c: a frame marked
// with an older version that carries c is an unknown command (501).
func (c Command) Since() uint8 {
	switch c {
	case CmdList, CmdMGet, CmdVGet, CmdTree, CmdReport, CmdStatus, CmdSwitch, CmdFleet, CmdForward, CmdAccess:
		return Version2
	case CmdBGet, CmdPack:
		return Version3
	case CmdSwitchAt:
		return Version4
	}
	return Version1
}

func (c Command) String() string {
	if s, ok := commandNames[c]; ok {
		return s
	}
	return fmt.Sprintf("CMD(0x%02x)", uint8(c))
}

// Known reports whether c is a command of this protocol.
func (c Command) Known() bool { _, ok := commandNames[c]; return ok }

// Code is an error or close reason carried by ERROR and BYE. The values
// follow HTTP's where the meaning matches, so they read naturally in logs.
type Code uint16

// Codes.
const (
	CodeOK             Code = 200 // BYE: normal close
	CodeBadRequest     Code = 400 // malformed message or protocol violation; session dropped
	CodeRefused        Code = 403 // name refused: traversal, absolute, outside the served set; REPORT: node name bound to another key
	CodeNotFound       Code = 404 // no such name is served
	CodeTimeout        Code = 408 // BYE: peer silent longer than the liveness bound
	CodeChanged        Code = 409 // source changed while being sent
	CodeGone           Code = 410 // (v2) the requested tree version is no longer kept
	CodeTooMany        Code = 429 // session or request limit reached
	CodeInternal       Code = 500 // server-side I/O failure reading the source
	CodeUnknownCommand Code = 501 // command not known; session dropped
	CodeUnavailable    Code = 503 // BYE: server shutting down or restarting, retry later
	CodeVersion        Code = 505 // no common protocol version; session dropped
)

var codeNames = map[Code]string{
	CodeOK: "ok", CodeBadRequest: "bad request", CodeRefused: "refused",
	CodeNotFound: "not found", CodeTimeout: "timeout", CodeChanged: "source changed", CodeGone: "gone",
	CodeTooMany: "too many", CodeInternal: "internal error",
	CodeUnknownCommand: "unknown command", CodeUnavailable: "unavailable",
	CodeVersion: "unsupported version",
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code %d", uint16(c))
}

// Tag is an opaque file version tag chosen by the sender. Two FILE messages
// for the same name carry the same tag only if the content is the same
// version. The zero tag means "no version known".
type Tag [TagLen]byte

// Hash is a BLAKE3-256 digest.
type Hash [HashLen]byte

func (h Hash) String() string { return fmt.Sprintf("%x", h[:]) }
