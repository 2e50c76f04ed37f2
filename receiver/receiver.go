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
//	OPEN: GETs are pipelined; per request FILE -> CHUNK* -> END | ERROR.
//	Any of: connection error, silence beyond PeerTimeout, BYE 503, a
//	corrupt stream => the session is closed, the partial files stay, and a
//	new session is dialled; each GET then carries the verified length and
//	the version tag, so the transfer resumes. Reconnecting gives up when
//	the server stays unreachable for Timeout.
//
// # Partial state
//
// For destination DIR/NAME, the partial data is DIR/.NAME.zrecv-part and
// its description (version tag, size, mode, mtime) DIR/.NAME.zrecv-state.
// Both are removed when the file is in place, when it fails verification,
// or at the start of a fetch with NoResume. They are kept when the fetch is
// interrupted (cancelled context, lost server, local write error) so that
// the same fetch run again resumes.
package receiver

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/zsend/zsend/internal/guard"
	"github.com/zsend/zsend/internal/zcert"
	"github.com/zsend/zsend/protocol"
)

// Config configures Fetch. Zero values take the documented defaults.
type Config struct {
	// Endpoint of the server: tcp://HOST:PORT or ipc://PATH.
	Endpoint string
	// OutputDir receives the files; default ".". It must exist.
	OutputDir string
	// Timeout bounds how long the server may stay unreachable, at the start
	// or after a lost connection, before Fetch gives up; default 30s.
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
	// Window is the initial credit window in bytes; default 8 MiB.
	Window uint64
	// MaxWindow caps auto-tuning of the window: the receive memory
	// budget. The window grows only when it limits throughput (long fat
	// paths); default 64 MiB.
	MaxWindow uint64
	// MaxChunk is the largest chunk accepted; default protocol.MaxChunkSize.
	MaxChunk uint32
	// NoResume discards partial files instead of resuming them.
	NoResume bool
	// Retries is how many times a file is re-requested after a chunk fails
	// verification or the source changes; default 5.
	Retries int
	// PeerID names this receiver to the server; default the host name.
	PeerID string
	// Progress, if set, receives events from the fetching goroutine. It
	// must return quickly.
	Progress func(Event)
	// Guard limits the transport; zero = defaults sized for MaxChunk.
	Guard guard.Config
	// Curve, when set, makes the receiver a CURVE client (ZeroMQ RFC
	// 26): the session is encrypted and only a server holding the secret
	// key of Curve.ServerKey is accepted (ErrServerKey otherwise).
	Curve *CurveClient
}

// CurveClient configures CURVE on the receiver.
type CurveClient struct {
	// ServerKey is the server's long-term public key, pinned.
	ServerKey [32]byte
	// PublicKey and SecretKey are this receiver's long-term pair, which
	// the server authorizes. Both zero: a fresh pair for each Fetch (only
	// a server that allows any key accepts it).
	PublicKey, SecretKey [32]byte
}

func (c *Config) setDefaults() error {
	if c.Endpoint == "" {
		return errors.New("no endpoint")
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
		c.Retries = 5
	}
	if c.PeerID == "" {
		c.PeerID, _ = os.Hostname()
	}
	if c.Guard.MaxFrameSize == 0 {
		c.Guard.MaxFrameSize = int64(c.MaxChunk) + protocol.MaxHeaderLen
	}
	if cv := c.Curve; cv != nil {
		cc := &guard.CurveClient{ServerKey: cv.ServerKey, PublicKey: cv.PublicKey, SecretKey: cv.SecretKey}
		if cv.SecretKey == ([32]byte{}) {
			pair, err := zcert.Generate()
			if err != nil {
				return err
			}
			cc.PublicKey, cc.SecretKey = pair.Public, pair.Secret
		}
		c.Guard.CurveClient = cc
	}
	if c.Guard.HandshakeTimeout == 0 && c.PeerTimeout < guard.DefaultHandshakeTimeout {
		// A server that accepts but never completes the handshake is as
		// silent as one that stops mid-transfer.
		c.Guard.HandshakeTimeout = c.PeerTimeout
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

// Event is a progress report. Done, Wire and Reused are in bytes.
type Event struct {
	Kind    EventKind
	Name    string
	Path    string
	Size    int64
	Done    int64 // bytes of the file verified so far, reused included
	Wire    int64 // chunk bytes received over the network for this file, re-fetches included
	Reused  int64 // bytes taken from a partial file of an earlier attempt
	Hash    protocol.Hash
	Err     error
	Message string
	Time    time.Time
	// Window is the session's current credit window in bytes (progress
	// events): the memory the receiver may need for data in flight.
	Window uint64
}

// Result is the outcome for one requested name.
type Result struct {
	Name   string
	Path   string
	Size   int64
	Hash   protocol.Hash // whole-file BLAKE3-256, as b3sum prints it
	Wire   int64
	Reused int64
	Err    error // nil only if the file was verified and is in place
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
	// ErrServerKey: with Curve set, the server did not prove it holds the
	// secret key of Curve.ServerKey (another server, a man in the middle,
	// or a wrong key), or it does not speak CURVE; without Curve, the
	// server requires CURVE.
	ErrServerKey = errors.New("server key mismatch")
	// ErrKeyRefused: the CURVE server refused this receiver's key.
	ErrKeyRefused = errors.New("client key refused by the server")
)

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

func (e *FileError) Error() string { return fmt.Sprintf("%s: %v", e.Name, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }
