// Package receiver is the zrecv side of ZSND: a ZeroMQ DEALER that fetches
// files from a zsend server, verifies every chunk and every file, and puts
// each file in place atomically.
//
// # Data flow
//
// A goroutine receives messages (zmq4's Recv has no context) and stamps
// their arrival time. The session loop decodes each message and, for a
// CHUNK, checks it against the credit granted, the expected offset and
// length, and its BLAKE3-256; only then does it pwrite the bytes into a
// hidden partial file beside the destination and feed the whole-file
// hasher. Write-back is started every few MiB (sync_file_range) so the
// final fsync is short. Consumed bytes return credit to the sender once
// half the window is used (credit.Window), so memory stays bounded by the
// window. At END the whole-file hash must match; the file is fsynced, its
// mode and mtime restored, and it is renamed over the destination, and the
// directory is fsynced. Until that rename the destination is untouched.
//
// # Session state machine
//
//	DIAL --connected--> HELLO sent --WELCOME--> OPEN --all files done--> BYE
//	OPEN: GETs are pipelined; the server answers them in order, one at a
//	time: FILE -> CHUNK* -> END | ERROR. A FILE out of that order is a
//	protocol violation.
//	Any of: connection error, silence beyond PeerTimeout, BYE 503, a
//	corrupt stream => the session is closed, the partial files stay, and a
//	new session is dialled; each GET then carries the verified length and
//	the version tag, so the transfer resumes. Reconnecting gives up when
//	Timeout passes without verified data (see budget.go for every bound).
//	With a failover list (Config.Endpoint "EP1,EP2,...", failover.go) the
//	new session goes to the next endpoint, at once; the reconnect delay is
//	waited once per round of the list, and the clocks are the fetch's.
//
// # Partial state
//
// For destination DIR/NAME, the partial data is DIR/.zrecv-HASH.part and
// its description (version tag, size, mode, mtime) DIR/.zrecv-HASH.state,
// where HASH is 32 hex digits of the BLAKE3 of NAME (PartialPaths): short
// whatever NAME's length. Both are removed when the file is in place, when
// it is started over (the source changed, or the whole file failed
// verification), or at the start of a fetch with NoResume. They are kept
// when the fetch is interrupted (cancelled context, lost or slow server,
// local write error, a chunk failing verification beyond its budget) so
// that the same fetch run again resumes from the verified data.
//
// # Planted files
//
// Every file in the output directory is opened, created, renamed and
// removed relative to directory descriptors, never following a symlink
// (internal/safefs). A symlinked directory on the way to a destination is
// an error. A partial file is resumed from only if it is a regular file
// with one link, owned by this user and writable by no one else; a fresh
// partial or state file is always a new file (whatever is at its name is
// unlinked first). The state file is read only if it is a regular file of
// at most 4 KiB.
package receiver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/protocol"
)

// Config configures Fetch. Zero values take the documented defaults.
type Config struct {
	// Endpoint of the server: tcp://HOST:PORT or ipc://PATH, or a
	// comma-separated list of them, servers of the same content tried in
	// turn (failover.go; an endpoint listed twice is an error).
	Endpoint string
	// Failover, if set, is used instead of Endpoint and shared by every
	// call made with a copy of this Config: each starts at its current
	// endpoint and moves it on failover (NewFailover). Nil: each call
	// parses Endpoint and starts at its first endpoint.
	Failover *Failover
	// OutputDir receives the files; default ".". It must exist.
	OutputDir string
	// Timeout bounds how long the server may stay lost before Fetch gives
	// up with ErrUnreachable; default 30s. The clock starts at the start of
	// the fetch and again with the last message of every session that
	// verified data, so a transfer of any length survives a server restart
	// or a cut connection; a session that verifies nothing does not
	// restart it.
	Timeout time.Duration
	// Heartbeat is the PING interval; default 2s.
	Heartbeat time.Duration
	// PeerTimeout: a server silent this long is considered gone; default 10s.
	PeerTimeout time.Duration
	// StallTimeout: a server that holds credit and requests but sends no
	// file data for this long is considered gone, even if it answers
	// heartbeats; default 30s (a server may hash a large file's resumed
	// prefix before its END, so this is longer than PeerTimeout).
	StallTimeout time.Duration
	// MinRate is the least average pace of verified data, in bytes per
	// second, over RateWindow (or over twice Timeout, if longer, so that an
	// outage Timeout tolerates does not trip it by itself); below it Fetch
	// gives up with ErrTooSlow. A file put in place counts as at least
	// 4 KiB. Default 1024 (1 KiB/s); negative: no minimum.
	MinRate int64
	// RateWindow is the span MinRate is averaged over; default 60s.
	RateWindow time.Duration
	// Deadline, if positive, bounds the whole fetch: past it, Fetch gives
	// up with ErrTooSlow, keeping partial state. Default 0: none.
	Deadline time.Duration
	// Window is the initial credit window in bytes; default 8 MiB.
	Window uint64
	// MaxWindow caps auto-tuning of the window: the receive memory
	// budget. The window grows only when it limits throughput (long fat
	// paths); default 64 MiB.
	MaxWindow uint64
	// MaxChunk is the largest chunk accepted; default protocol.MaxChunkSize.
	MaxChunk uint32
	// DeferSync leaves making files durable to the caller: verified files
	// are renamed into place without fsync or directory sync. For callers
	// that sync the file system themselves before relying on the files
	// (the mirror syncs its staging area once before switching to it).
	DeferSync bool
	// RecordInodes fills Result.Inode (one fstat per file so written), for
	// callers that check files later and would rather not read them back.
	RecordInodes bool
	// NoResume discards partial files instead of resuming them.
	NoResume bool
	// Retries is how many times one chunk that failed its BLAKE3 check is
	// requested again: default 4, so 5 attempts in all. The count is per
	// chunk offset, so a long file over a noisy link completes. Past it the
	// file fails with ErrVerify and its verified prefix is kept, so the
	// same fetch run again resumes. It also bounds the sessions ended by a
	// protocol violation of the server (ErrProtocol past it). With a
	// failover list, a spent budget first moves the file to the next
	// endpoint, with budgets afresh (failover.go).
	Retries int
	// Restarts is how many times a file may be started over from zero
	// within one fetch: ERROR 409 (the source changed while being sent), a
	// FILE with a new version tag, or a whole-file BLAKE3 mismatch. Default
	// 5; past it the file fails with ErrChanged (or ErrVerify for a
	// mismatch).
	Restarts int
	// PeerID names this receiver to the server; default the host name.
	PeerID string
	// Progress, if set, receives events from the fetching goroutine. It
	// must return quickly.
	Progress func(Event)
	// Limits bounds what the transport accepts and waits for; zero fields
	// take defaults sized for MaxChunk and PeerTimeout.
	Limits Limits
	// Curve, when set, makes the receiver a CURVE client (ZeroMQ RFC
	// 26): the session is encrypted and only a server holding the secret
	// key of Curve.ServerKey is accepted (ErrServerKey otherwise).
	Curve *CurveClient

	curve *guard.CurveClient // set by setDefaults: the pair used for every session of one call
}

// CurveClient configures CURVE on the receiver.
type CurveClient struct {
	// ServerKey is the server's long-term public key, pinned.
	ServerKey [32]byte
	// ServerKeys, if not empty, pins one key per endpoint of a failover
	// list, by position (relays each hold their own key); it must be as
	// long as the list, and ServerKey is then unused.
	ServerKeys [][32]byte
	// PublicKey and SecretKey are this receiver's long-term pair, which
	// the server authorizes. Both zero: a fresh pair for each Fetch (only
	// a server that allows any key accepts it).
	PublicKey, SecretKey [32]byte
}

// guardConfig is the transport configuration of a session with the
// endpoint at index i of the failover list.
func (c *Config) guardConfig(i int) guard.Config {
	g := c.Limits.guard()
	g.CurveClient = c.curve
	if c.curve != nil && len(c.Curve.ServerKeys) > 0 {
		cc := *c.curve
		cc.ServerKey = c.Curve.ServerKeys[i]
		g.CurveClient = &cc
	}
	return g
}

// serverKey is the key pinned for the endpoint at index i.
func (c *Config) serverKey(i int) [32]byte {
	if len(c.Curve.ServerKeys) > 0 {
		return c.Curve.ServerKeys[i]
	}
	return c.Curve.ServerKey
}

// Limits bounds the transport below ZSND: what a server can make the
// receiver hold or wait for before a message is even decoded.
type Limits struct {
	// MaxFrameSize is the largest ZMTP frame accepted; default MaxChunk plus
	// the largest ZSND header.
	MaxFrameSize int64
	// HandshakeTimeout bounds the server's ZMTP greeting and READY; default
	// the smaller of 5s and PeerTimeout.
	HandshakeTimeout time.Duration
	// WriteStallTimeout drops a connection on which a write makes no
	// progress for this long; default 10s.
	WriteStallTimeout time.Duration
}

func (l Limits) guard() guard.Config {
	return guard.Config{MaxFrameSize: l.MaxFrameSize, HandshakeTimeout: l.HandshakeTimeout, WriteStallTimeout: l.WriteStallTimeout}
}

func (c *Config) setDefaults() error {
	if c.Failover == nil {
		f, err := NewFailover(c.Endpoint)
		if err != nil {
			return err
		}
		c.Failover = f
	}
	if cv := c.Curve; cv != nil && len(cv.ServerKeys) > 0 && len(cv.ServerKeys) != c.Failover.Len() {
		return fmt.Errorf("%d server keys for %d endpoints: give one key, or one per endpoint in the same order", len(cv.ServerKeys), c.Failover.Len())
	}
	if c.OutputDir == "" {
		c.OutputDir = "."
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.PeerTimeout <= 0 {
		c.PeerTimeout = 10 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 30 * time.Second
		if c.StallTimeout < 3*c.PeerTimeout {
			c.StallTimeout = 3 * c.PeerTimeout
		}
	}
	if c.MaxChunk == 0 || c.MaxChunk > protocol.MaxChunkSize {
		c.MaxChunk = protocol.MaxChunkSize
	}
	if c.MaxChunk < protocol.MinChunkSize {
		return fmt.Errorf("largest chunk %d is below the protocol minimum %d", c.MaxChunk, protocol.MinChunkSize)
	}
	if c.Window == 0 {
		c.Window = 8 << 20
	}
	if c.Window < uint64(c.MaxChunk) {
		c.Window = uint64(c.MaxChunk)
	}
	if c.MaxWindow == 0 {
		c.MaxWindow = 64 << 20
	}
	if c.Retries <= 0 {
		c.Retries = 4
	}
	if c.Restarts <= 0 {
		c.Restarts = 5
	}
	if c.MinRate == 0 {
		c.MinRate = 1024
	}
	if c.RateWindow <= 0 {
		c.RateWindow = 60 * time.Second
	}
	if c.PeerID == "" {
		c.PeerID, _ = os.Hostname()
	}
	if c.Limits.MaxFrameSize == 0 {
		c.Limits.MaxFrameSize = int64(c.MaxChunk) + protocol.MaxHeaderLen
	}
	if cv := c.Curve; cv != nil && c.curve == nil {
		cc := &guard.CurveClient{ServerKey: cv.ServerKey, PublicKey: cv.PublicKey, SecretKey: cv.SecretKey}
		if cv.SecretKey == ([32]byte{}) {
			pair, err := zcert.Generate()
			if err != nil {
				return err
			}
			cc.PublicKey, cc.SecretKey = pair.Public, pair.Secret
		}
		c.curve = cc
	}
	if c.Limits.HandshakeTimeout == 0 && c.PeerTimeout < guard.DefaultHandshakeTimeout {
		// A server that accepts but never completes the handshake is as
		// silent as one that stops mid-transfer.
		c.Limits.HandshakeTimeout = c.PeerTimeout
	}
	fi, err := os.Stat(c.OutputDir)
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("output directory %s: not a directory", c.OutputDir)
	}
	return nil
}

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	EventStart     EventKind = "start"     // FILE received: name, size, reused
	EventProgress  EventKind = "progress"  // throttled: done, wire
	EventDone      EventKind = "file-done" // verified and in place: hash, wire, reused
	EventError     EventKind = "error"     // the file failed: err
	EventRestart   EventKind = "restart"   // starting the file over: message says why
	EventReconnect EventKind = "reconnect" // the session was lost and is being re-established
)

// Event is a progress report. Done, Wire, Reused and Refetched are in
// bytes, and Reused + Wire = Done: each byte of the file is counted once,
// as taken from an earlier run's partial data or as verified from the
// network in this fetch.
type Event struct {
	Kind EventKind
	Name string
	Path string
	Size int64
	Done int64 // bytes of the file verified so far, reused included
	// Wire: bytes of the file's content verified from the network in this
	// fetch (a prefix kept across a reconnect is counted once).
	Wire int64
	// Reused: bytes of the file's content taken from partial data left by
	// an earlier run.
	Reused int64
	// Refetched: chunk bytes received for this file that are not part of
	// Wire: corrupted or cancelled chunks, data discarded by a restart,
	// and the part of a chunk sent again after a reconnect.
	Refetched int64
	Hash      protocol.Hash // file-done only
	// Err is the failure (error), the cause of a restart, or why the
	// session was lost (reconnect).
	Err     error
	Message string
	Time    time.Time
	// Window is the session's current credit window in bytes (progress
	// events): the memory the receiver may need for data in flight.
	Window uint64
	// Endpoint and Attempt (reconnect events): the server that was lost
	// or could not be reached (with a failover list, Message names the one
	// tried next) and the number of the attempt that failed since data
	// last arrived (1 for the first).
	Endpoint string
	Attempt  int
	// RetryIn (reconnect events): the delay before the next attempt.
	RetryIn time.Duration
}

// Result is the outcome for one requested name.
type Result struct {
	Name string
	Path string
	Size int64
	// Hash is the whole-file BLAKE3-256, as b3sum prints it, of a verified
	// file; zero when Err is not nil (String leaves it out then).
	Hash      protocol.Hash
	Wire      int64 // see Event
	Reused    int64
	Refetched int64
	Err       error // nil only if the file was verified and is in place
	// Inode (Config.RecordInodes) is the inode the file was put in place
	// as, as fstat saw it through the descriptor its data was written to,
	// just after it got its name; zero (Ino 0) when not recorded. It is
	// recorded only for a file written as an unnamed file (O_TMPFILE) from
	// its first byte: no other name could reach that inode before it held
	// the verified content, so while the name still gives this inode with
	// this ctime, the content is that verified hash (see README, "Stat
	// cache"). A file with a partial file (resumable, or where the file
	// system lacks O_TMPFILE) is not recorded.
	Inode Inode
}

// Inode is what Result.Inode records of an inode.
type Inode struct {
	Dev, Ino uint64
	Mode     uint32 // st_mode: type and permission bits
	Size     int64
	MtimeNS  int64
	CtimeNS  int64
}

// String describes the result in one line: the hash and path of a
// verified file, or the name and the error of a failed one.
func (r Result) String() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: %v", r.Name, r.Err)
	}
	return fmt.Sprintf("%s  %s  %d bytes", r.Hash, r.Path, r.Size)
}

// Sentinel errors; every error Fetch returns matches at least one of them
// with errors.Is, or is a local I/O error (*os.PathError and kin).
var (
	// ErrNotFound: the server does not serve that name.
	ErrNotFound = errors.New("not found")
	// ErrRefused: the name is invalid or the server refused it.
	ErrRefused = errors.New("refused")
	// ErrUnreachable: the server could not be reached within Timeout.
	ErrUnreachable = errors.New("server unreachable")
	// ErrVerify: data failed BLAKE3 verification beyond the retry budget.
	ErrVerify = errors.New("verification failed")
	// ErrChanged: the source kept changing during the transfer.
	ErrChanged = errors.New("source changed during transfer")
	// ErrProtocol: the server broke the protocol or speaks another version.
	ErrProtocol = errors.New("protocol error")
	// ErrServer: the server failed to read the file.
	ErrServer = errors.New("server error")
	// ErrTooSlow: verified data came slower than Config.MinRate, or the
	// fetch passed Config.Deadline. Partial state is kept.
	ErrTooSlow = errors.New("transfer too slow")
	// ErrGone: the server no longer keeps the version asked for (410).
	ErrGone = errors.New("version gone")
	// ErrNoTrees: the server speaks only version 1 and serves no trees.
	ErrNoTrees = errors.New("server does not serve trees (it speaks ZSND/1 only)")
	// ErrServerKey: with Curve set, the server did not prove it holds the
	// secret key of Curve.ServerKey (another server, a man in the middle,
	// or a wrong key), or it does not speak CURVE; without Curve, the
	// server requires CURVE.
	ErrServerKey = errors.New("server key mismatch")
	// ErrKeyRefused: the CURVE server refused this receiver's key.
	ErrKeyRefused = errors.New("client key refused by the server")
)

// interruptedError is the failure of files left unfinished when the
// caller's context ends; it matches the context's error with errors.Is.
type interruptedError struct{ cause error }

func (e *interruptedError) Error() string {
	if errors.Is(e.cause, context.Canceled) {
		return "interrupted; partial state kept for resume"
	}
	return fmt.Sprintf("interrupted (%v); partial state kept for resume", e.cause)
}

func (e *interruptedError) Unwrap() error { return e.cause }

// RemoteError is an ERROR received from the server.
type RemoteError struct {
	Code    protocol.Code
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("server: %s (%d %v)", e.Message, uint16(e.Code), e.Code)
}

// Is maps the code onto the sentinels.
func (e *RemoteError) Is(target error) bool {
	switch e.Code {
	case protocol.CodeNotFound:
		return target == ErrNotFound
	case protocol.CodeRefused:
		return target == ErrRefused
	case protocol.CodeChanged:
		return target == ErrChanged
	case protocol.CodeInternal:
		return target == ErrServer
	case protocol.CodeGone:
		return target == ErrGone
	case protocol.CodeBadRequest, protocol.CodeUnknownCommand, protocol.CodeVersion:
		return target == ErrProtocol
	}
	return false
}

// FileError wraps the failure of one file with its name.
type FileError struct {
	Name string
	Err  error
}

// Error is "NAME: ERR", or ERR alone when it already starts with the name.
func (e *FileError) Error() string {
	msg := e.Err.Error()
	if strings.HasPrefix(msg, e.Name+": ") {
		return msg
	}
	return e.Name + ": " + msg
}
func (e *FileError) Unwrap() error { return e.Err }
