package guard

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zsend/zsend/internal/curve"
)

// CurveServer makes a listener a CURVE server (ZeroMQ RFC 25/26): every
// accepted connection must complete the CurveZMQ handshake, then every
// frame travels boxed in MESSAGE commands. A peer greeting with another
// mechanism (NULL) is refused during the handshake.
type CurveServer struct {
	// PublicKey and SecretKey are the server's long-term pair.
	PublicKey, SecretKey [32]byte
	// Authorize is called with the client's long-term public key once the
	// client has proved it holds the matching secret key, before READY is
	// sent. A non-nil error refuses the client (an ERROR command is sent
	// and the connection closed). nil accepts every client key.
	Authorize func(client [32]byte) error
}

// CurveClient makes dialed connections CURVE clients: the handshake only
// completes with the holder of ServerKey's secret key.
type CurveClient struct {
	// ServerKey is the pinned long-term public key of the server.
	ServerKey [32]byte
	// PublicKey and SecretKey are the client's long-term pair.
	PublicKey, SecretKey [32]byte
}

// Errors of the CURVE mechanism (carried like the others, as the Err of a
// *net.OpError, and wrapped by zmq4's Dial error on the dialing side).
var (
	// ErrMechanism: the peer greeted with another security mechanism
	// (a NULL peer against CURVE, or CURVE against NULL).
	ErrMechanism = errors.New("guard: peer uses another security mechanism")
	// ErrServerKey: the server did not prove it holds the secret key of
	// the pinned server key (its WELCOME did not open, or it refused or
	// dropped our HELLO, which it does when HELLO is boxed to another key).
	ErrServerKey = errors.New("guard: CURVE server does not hold the pinned server key")
	// ErrHelloDropped: the server closed the connection right after our
	// HELLO without a word, which is what libzmq does with a HELLO boxed
	// to another key, but also what a connection lost at that moment
	// looks like. It matches ErrServerKey too; callers may retry it a few
	// times before concluding.
	ErrHelloDropped = errors.New("guard: CURVE server closed the connection after HELLO")
	// ErrClientRefused: the CURVE server refused this client's key.
	ErrClientRefused = errors.New("guard: CURVE server refused this client's key")
	// ErrCurve: a CURVE command failed (malformed, forged, replayed or
	// reordered); see the wrapped curve error.
	ErrCurve = errors.New("guard: CURVE protocol error")
)

// curveError wraps a curve package error so that it matches both the
// guard sentinel and the curve one.
type curveError struct {
	sentinel error
	err      error
}

func (e *curveError) Error() string       { return e.sentinel.Error() + ": " + e.err.Error() }
func (e *curveError) Unwrap() []error     { return []error{e.sentinel, e.err} }
func curveFail(sentinel, err error) error { return &curveError{sentinel: sentinel, err: err} }
func curveFailf(s error, f string, a ...any) error {
	return &curveError{sentinel: s, err: fmt.Errorf(f, a...)}
}

// curveGreeting returns the greeting of the CURVE mechanism.
func curveGreeting(asServer bool) [greetingLen]byte {
	g := nullGreeting
	clear(g[12:32])
	copy(g[12:32], "CURVE")
	if asServer {
		g[32] = 1
	}
	return g
}

var (
	curveServerGreeting = curveGreeting(true)
	curveClientGreeting = curveGreeting(false)
)

// checkMechanism checks that a peer greeting (already checked by
// checkGreeting apart from its mechanism) names want.
func checkMechanism(g []byte, want string) error {
	var m [20]byte
	copy(m[:], want)
	if string(g[12:32]) != string(m[:]) {
		return curveFailf(ErrMechanism, "peer greets with mechanism %q, want %q", trimNUL(g[12:32]), want)
	}
	return nil
}

func trimNUL(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// readRawGreeting reads a peer greeting and checks everything but the
// mechanism.
func readRawGreeting(r io.Reader) ([]byte, error) {
	buf := make([]byte, greetingLen)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	g := buf
	switch {
	case g[0] != 0xff || g[9] != 0x7f:
		return nil, badHandshake("not a ZMTP signature")
	case g[10] < 3:
		return nil, badHandshake("ZMTP version %d.%d, want 3.0 or later", g[10], g[11])
	case g[32] > 1:
		return nil, badHandshake("as-server byte %#x", g[32])
	}
	return buf, nil
}

// readCurveFrame reads one frame from r and returns its flags and body. The
// announced size is checked against limit before anything is allocated;
// the body's buffer comes from get (getBuf), or is a new one if get is nil.
func readCurveFrame(r io.Reader, limit int, get func(int) []byte) (byte, []byte, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	flags := hdr[0]
	if flags&flagReserved != 0 {
		return 0, nil, curveFailf(ErrCurve, "frame with reserved flags %#x", flags)
	}
	size := uint64(hdr[1])
	if flags&flagLong != 0 {
		if _, err := io.ReadFull(r, hdr[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(hdr[1:9])
	}
	if size > uint64(limit) {
		return 0, nil, curveFailf(ErrFrameTooLarge, "CURVE frame of %d bytes, limit %d", size, limit)
	}
	var buf []byte
	if get != nil {
		buf = get(int(size))[:size]
	} else {
		buf = make([]byte, size)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		putBuf(buf)
		return 0, nil, err
	}
	return flags, buf, nil
}

// readCommand reads one command frame of at most limit bytes.
func readCommand(r io.Reader, limit int) ([]byte, error) {
	flags, body, err := readCurveFrame(r, limit, nil)
	if err != nil {
		return nil, err
	}
	if flags&^flagLong != flagCommand {
		return nil, curveFailf(ErrCurve, "frame with flags %#x where a command was due", flags)
	}
	return body, nil
}

// appendFrame appends a ZMTP frame (flags without the long bit) to out.
func appendFrame(out []byte, flags byte, body []byte) []byte {
	out = appendHeader(out, flags, len(body))
	return append(out, body...)
}

func appendHeader(out []byte, flags byte, n int) []byte {
	if n > 255 {
		out = append(out, flags|flagLong)
		return binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, flags, byte(n))
}

// nullReady builds the NULL READY command frame zmq4 is given in place of
// the CURVE handshake, carrying the peer's metadata, and checks it as any
// peer READY is checked.
func nullReady(metadata []byte) ([]byte, error) {
	body := make([]byte, 0, 6+len(metadata))
	body = append(body, "\x05READY"...)
	body = append(body, metadata...)
	if err := checkReady(body); err != nil {
		return nil, err
	}
	return appendFrame(nil, flagCommand, body), nil
}

// curveServerFor returns the CurveZMQ server state shared by the
// listeners of one settings (cookie keys, replay cache).
func (s *settings) curveServerState() *curve.Server {
	s.curveOnce.Do(func() {
		cs := s.curveServer
		s.curveSrv = curve.NewServer(cs.PublicKey, cs.SecretKey, cs.Authorize, rand.Reader)
	})
	return s.curveSrv
}

// bufPools hold the buffers of CURVE frames in flight (sealed frames
// being written, boxes being opened), so idle connections hold none. Each
// pool holds buffers of one capacity, in steps of a quarter of a power of
// two from 4 KiB to 16 MiB (a 1 MiB chunk's frame, 1 MiB and 42 bytes,
// takes a 1.25 MiB buffer): a frame reuses a buffer that fits it,
// whatever sizes came before, and wastes at most a quarter of it.
const (
	minBuf = 4 << 10
	maxBuf = 16 << 20
)

var bufPools [4*(bits.UintSize-12) + 1]sync.Pool

// bufClass returns the pool index and buffer capacity for n bytes.
func bufClass(n int) (int, int) {
	if n <= minBuf {
		return 0, minBuf
	}
	k := bits.Len(uint(n-1)) - 1 // 2^k < n <= 2^(k+1)
	step := 1 << k / 4
	sub := (n - 1<<k + step - 1) / step // 1..4
	return 4*(k-12) + sub, 1<<k + sub*step
}

// getBuf returns an empty buffer of capacity n or more.
func getBuf(n int) []byte {
	if n > maxBuf {
		return make([]byte, 0, n)
	}
	i, size := bufClass(n)
	if p, ok := bufPools[i].Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, size)
}

// putBuf gives back a buffer from getBuf (others are dropped).
func putBuf(b []byte) {
	c := cap(b)
	if c < minBuf || c > maxBuf {
		return
	}
	if i, size := bufClass(c); size == c {
		b = b[:0]
		bufPools[i].Put(&b)
	}
}

// curveConn is the CURVE state of one connection.
type curveConn struct {
	client   *curve.Client   // dialed: the handshake in progress
	accepted *curve.Accepted // accepted: verified INITIATE, READY not yet sent
	sess     atomic.Pointer[curve.Session]

	// write side (under wmu)
	cmd      []byte  // zmq4's READY command being collected
	hdr      [9]byte // header of zmq4's current frame
	hn       int
	body     int  // body bytes of the current frame still to come
	flags    byte // curve flags of the current frame
	inBody   bool
	msgStart int    // where the current frame's MESSAGE body starts in out
	out      []byte // sealed MESSAGE frames not yet written, then the frame being filled

	// read side (under rmu)
	br    *bufio.Reader
	clear []byte // the opened frame for zmq4 (buffer; rdata points into it)
}

// serverHandshake runs the server half of the CURVE handshake on an
// accepted connection, up to the verified INITIATE: it leaves in c.pending
// the NULL greeting and READY (with the client's metadata) for zmq4.
func (l *listener) curveHandshake(c *conn) error {
	srv := l.set.curveServerState()
	cv := &curveConn{}
	c.cv = cv
	if _, err := c.raw.Write(curveServerGreeting[:]); err != nil {
		return err
	}
	g, err := readRawGreeting(c.raw)
	if err != nil {
		return err
	}
	if err := checkMechanism(g, "CURVE"); err != nil {
		return err
	}
	hello, err := readCommand(c.raw, curve.HelloSize)
	if err != nil {
		return err
	}
	welcome, err := srv.Welcome(hello, time.Now())
	if err != nil {
		// The client may hold another key for us: say so, as libzmq
		// clients and ours report ERROR to the user.
		c.raw.Write(appendFrame(nil, flagCommand, curve.ErrorCommand("CURVE HELLO refused")))
		return curveFail(ErrCurve, err)
	}
	if _, err := c.raw.Write(appendFrame(nil, flagCommand, welcome)); err != nil {
		return err
	}
	initiate, err := readCommand(c.raw, curve.InitiateMinSize+int(min(l.set.maxFrame, maxReadySize)))
	if err != nil {
		return err
	}
	acc, err := srv.Initiate(initiate, time.Now())
	if err != nil {
		if errors.Is(err, curve.ErrDenied) {
			l.set.add(cCurveDenied, 1)
			c.raw.Write(appendFrame(nil, flagCommand, curve.ErrorCommand("400 client key not authorized")))
			return curveFail(ErrClientRefused, err)
		}
		return curveFail(ErrCurve, err)
	}
	ready, err := nullReady(acc.Metadata)
	if err != nil {
		return err
	}
	cv.accepted = acc
	c.pending = append(append(make([]byte, 0, greetingLen+len(ready)), nullGreeting[:]...), ready...)
	return nil
}

// curveDial starts the client half on a dialed connection: it sends the
// CURVE greeting. The rest happens as zmq4 reads and writes.
func (c *conn) curveDial(cc *CurveClient) error {
	cl, err := curve.NewClient(cc.ServerKey, cc.PublicKey, cc.SecretKey, rand.Reader)
	if err != nil {
		return err
	}
	c.cv = &curveConn{client: cl}
	c.swallow = greetingLen
	c.raw.SetWriteDeadline(c.hsDeadline)
	defer c.raw.SetWriteDeadline(time.Time{})
	_, err = c.raw.Write(curveClientGreeting[:])
	return err
}

// curveClientStep reads the next part of the handshake for zmq4 on a
// dialed connection: at phaseGreeting the server's greeting, then HELLO
// out and WELCOME in; at phaseReady the server's READY (INITIATE was sent
// when zmq4 wrote its READY).
func (c *conn) curveClientStep() error {
	cv := c.cv
	c.raw.SetWriteDeadline(c.hsDeadline)
	defer c.raw.SetWriteDeadline(time.Time{})
	switch c.phase {
	case phaseGreeting:
		g, err := readRawGreeting(c.raw)
		if err != nil {
			return err
		}
		if err := checkMechanism(g, "CURVE"); err != nil {
			return err
		}
		hello, err := cv.client.Hello()
		if err != nil {
			return err
		}
		if _, err := c.raw.Write(appendFrame(nil, flagCommand, hello)); err != nil {
			return err
		}
		welcome, err := readCommand(c.raw, 512)
		if err != nil {
			if isTimeout(err) || errors.Is(err, ErrCurve) || errors.Is(err, ErrFrameTooLarge) {
				return err
			}
			// A libzmq CURVE server drops a HELLO boxed to another key.
			return &curveError{sentinel: ErrServerKey, err: fmt.Errorf("%w (%v)", ErrHelloDropped, err)}
		}
		if err := cv.client.Welcome(welcome); err != nil {
			if errors.Is(err, curve.ErrServerKey) || errors.Is(err, curve.ErrPeer) {
				return curveFail(ErrServerKey, err)
			}
			return curveFail(ErrCurve, err)
		}
		c.pending = append([]byte(nil), nullGreeting[:]...)
	case phaseReady:
		body, err := readCommand(c.raw, curve.ReadyMinSize+int(min(c.set.maxFrame, maxReadySize)))
		if err != nil {
			if isTimeout(err) || errors.Is(err, ErrCurve) || errors.Is(err, ErrFrameTooLarge) {
				return err
			}
			return curveFailf(ErrClientRefused, "server closed the connection after INITIATE (%v)", err)
		}
		md, sess, err := cv.client.Ready(body)
		if err != nil {
			if errors.Is(err, curve.ErrPeer) {
				return curveFail(ErrClientRefused, err)
			}
			return curveFail(ErrCurve, err)
		}
		if c.pending, err = nullReady(md); err != nil {
			return err
		}
		cv.sess.Store(sess)
		cv.client = nil
	}
	return nil
}

// curveWrite takes what zmq4 writes after its (swallowed) greeting: first
// its READY command, which becomes INITIATE (client) or the CURVE READY
// (server); then frames, each boxed in a MESSAGE command. Sealed frames
// are written when a message ends.
func (c *conn) curveWrite(p []byte) error {
	cv := c.cv
	for len(p) > 0 || cv.inBody && cv.body == 0 {
		if cv.sess.Load() == nil {
			k, done := cv.takeCommand(p)
			p = p[k:]
			if done {
				if err := c.curveSendReady(); err != nil {
					return err
				}
			}
			continue
		}
		if !cv.inBody {
			cv.hdr[cv.hn] = p[0]
			cv.hn++
			p = p[1:]
			need := 2
			if cv.hdr[0]&flagLong != 0 {
				need = 9
			}
			if cv.hn < need {
				continue
			}
			size := uint64(cv.hdr[1])
			if need == 9 {
				size = binary.BigEndian.Uint64(cv.hdr[1:9])
			}
			cv.hn = 0
			cv.flags = 0
			if cv.hdr[0]&flagMore != 0 {
				cv.flags |= curve.FlagMore
			}
			if cv.hdr[0]&flagCommand != 0 {
				cv.flags |= curve.FlagCommand
			}
			cv.body = int(size)
			cv.inBody = true
			// The frame's MESSAGE is built where it will be sent: its
			// header, then room for name, nonce and MAC, then the
			// plaintext, sealed in place once complete.
			sealed := curve.SealedSize(cv.body)
			if cv.out == nil {
				cv.out = getBuf(9 + sealed)
			} else if cap(cv.out)-len(cv.out) < 9+sealed {
				grown := append(getBuf(len(cv.out)+9+sealed), cv.out...)
				putBuf(cv.out)
				cv.out = grown
			}
			// libzmq sends MESSAGE as a data frame (its encoder resets
			// the flags); it accepts either.
			cv.out = appendHeader(cv.out, 0, sealed)
			cv.msgStart = len(cv.out)
			cv.out = cv.out[:cv.msgStart+curve.PlainOffset]
			cv.out = append(cv.out, cv.flags)
		}
		// (An empty frame is sealed as soon as its header is complete:
		// zmq4 writes no body bytes for it.)
		k := min(cv.body, len(p))
		cv.out = append(cv.out, p[:k]...)
		cv.body -= k
		p = p[k:]
		if cv.body > 0 {
			continue
		}
		cv.inBody = false
		cv.sess.Load().SealInPlace(cv.out[cv.msgStart:])
		if cv.flags&curve.FlagMore == 0 || len(cv.out) >= coalesceBuf {
			err := c.flush(net.Buffers{cv.out})
			putBuf(cv.out)
			cv.out = nil
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// takeCommand collects zmq4's READY command from p; it returns how many
// bytes it took and whether the command is complete.
func (cv *curveConn) takeCommand(p []byte) (int, bool) {
	taken := 0
	for len(p) > 0 {
		total := commandLen(cv.cmd)
		if total < 0 {
			cv.cmd = append(cv.cmd, p[0])
			p = p[1:]
			taken++
		} else {
			k := min(total-len(cv.cmd), len(p))
			cv.cmd = append(cv.cmd, p[:k]...)
			p = p[k:]
			taken += k
		}
		if t := commandLen(cv.cmd); t >= 0 && len(cv.cmd) == t {
			return taken, true
		}
	}
	return taken, false
}

// commandLen returns the full length of the frame whose first bytes are
// b, or -1 while its header is incomplete.
func commandLen(b []byte) int {
	switch {
	case len(b) < 2:
		return -1
	case b[0]&flagLong == 0:
		return 2 + int(b[1])
	case len(b) < 9:
		return -1
	}
	return 9 + int(binary.BigEndian.Uint64(b[1:9]))
}

// curveSendReady turns zmq4's READY into INITIATE (client) or the CURVE
// READY (server) and sends it.
func (c *conn) curveSendReady() error {
	cv := c.cv
	body := cv.cmd[2:]
	if cv.cmd[0]&flagLong != 0 {
		body = cv.cmd[9:]
	}
	if len(body) < 6 || string(body[:6]) != "\x05READY" {
		return c.fail("write", badHandshake("local socket did not send READY"))
	}
	md := body[6:]
	var out []byte
	switch {
	case cv.client != nil:
		ini, err := cv.client.Initiate(md)
		if err != nil {
			return c.fail("write", curveFail(ErrCurve, err))
		}
		out = appendFrame(nil, flagCommand, ini)
		c.raw.SetWriteDeadline(c.hsDeadline)
		defer c.raw.SetWriteDeadline(time.Time{})
	case cv.accepted != nil:
		ready, sess, err := cv.accepted.Ready(md)
		if err != nil {
			return c.fail("write", curveFail(ErrCurve, err))
		}
		out = appendFrame(nil, flagCommand, ready)
		cv.accepted = nil
		cv.sess.Store(sess)
	default:
		return c.fail("write", curveFailf(ErrCurve, "READY written twice"))
	}
	cv.cmd = nil
	return c.flush(net.Buffers{out})
}

// curveRead gives zmq4 the next bytes of plaintext frames, opening one
// MESSAGE command from the network when what was opened is used up.
func (c *conn) curveRead(p []byte) (int, error) {
	cv := c.cv
	if len(c.rdata) == 0 {
		if cv.clear != nil {
			putBuf(cv.clear)
			cv.clear = nil
		}
		if err := c.curveOpenNext(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.rdata)
	c.rdata = c.rdata[n:]
	return n, nil
}

func (c *conn) curveOpenNext() error {
	cv := c.cv
	sess := cv.sess.Load()
	if sess == nil {
		return c.fail("read", curveFailf(ErrCurve, "read before the handshake completed"))
	}
	if cv.br == nil {
		cv.br = bufio.NewReaderSize(c.raw, readBufSize)
	}
	if c.set.idle > 0 {
		c.raw.SetReadDeadline(time.Now().Add(c.set.idle))
	}
	limit := int(c.set.maxFrame) + curve.MessageOverhead
	flags, body, err := readCurveFrame(cv.br, limit, getBuf)
	if err != nil {
		switch {
		case errors.Is(err, ErrFrameTooLarge):
			c.set.add(cFrameTooLarge, 1)
			return c.fail("read", err)
		case errors.Is(err, ErrCurve):
			c.set.add(cCurveErrors, 1)
			return c.fail("read", err)
		case isTimeout(err):
			c.set.add(cIdleTimeouts, 1)
			return c.fail("read", ErrIdle)
		}
		return c.fatal("read", err)
	}
	if flags&flagMore != 0 {
		putBuf(body)
		c.set.add(cCurveErrors, 1)
		return c.fail("read", curveFailf(ErrCurve, "MESSAGE frame with the MORE flag"))
	}
	// Opened in place: the plaintext is body[PlainOffset:], and the
	// frame header for zmq4 (at most 9 bytes) goes just before its data,
	// over the name, nonce and MAC.
	if _, err := sess.OpenInPlace(body); err != nil {
		putBuf(body)
		c.set.add(cCurveErrors, 1)
		return c.fail("read", curveFail(ErrCurve, err))
	}
	out := body[curve.PlainOffset-9:]
	cf := out[9]
	data := out[10:]
	var zf byte
	if cf&curve.FlagMore != 0 {
		zf |= flagMore
	}
	if cf&curve.FlagCommand != 0 {
		zf |= flagCommand
	}
	hl := 2
	if len(data) > 255 {
		hl = 9
	}
	hdr := out[10-hl : 10]
	appendHeader(hdr[:0], zf, len(data))
	frame := out[10-hl:]
	if err := c.scan.scan(frame); err != nil {
		putBuf(body)
		switch err {
		case ErrFrameTooLarge:
			c.set.add(cFrameTooLarge, 1)
		case ErrMessageTooLarge:
			c.set.add(cMessageTooLarge, 1)
		default:
			c.set.add(cBadFrames, 1)
		}
		return c.fail("read", err)
	}
	cv.clear = body
	c.rdata = frame
	return nil
}
