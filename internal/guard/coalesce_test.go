package guard

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// recConn records each Write on the raw side of a guarded conn.
type recConn struct {
	net.Conn // nil: only Write and the deadline setters are used
	out      bytes.Buffer
	writes   int
}

func (r *recConn) Write(p []byte) (int, error) {
	r.writes++
	return r.out.Write(p)
}
func (r *recConn) SetWriteDeadline(time.Time) error { return nil }

// zmtpFrame encodes one frame the way zmq4 writes it: a header write, then
// a body write.
func zmtpFrame(flags byte, body []byte) (hdr []byte) {
	if len(body) > 255 {
		hdr = make([]byte, 9)
		hdr[0] = flags | flagLong
		binary.BigEndian.PutUint64(hdr[1:], uint64(len(body)))
		return hdr
	}
	return []byte{flags, byte(len(body))}
}

// writeMsg writes a message frame by frame as zmq4 does and checks that
// every byte of it reached the raw conn when the last write returned.
func writeMsg(t *testing.T, c *conn, r *recConn, want *bytes.Buffer, frames ...[]byte) {
	t.Helper()
	for i, f := range frames {
		var flags byte
		if i < len(frames)-1 {
			flags = flagMore
		}
		h := zmtpFrame(flags, f)
		for _, piece := range [][]byte{h, f} {
			if n, err := c.Write(piece); err != nil || n != len(piece) {
				t.Fatalf("Write(%d bytes) = %d, %v", len(piece), n, err)
			}
			want.Write(piece)
		}
	}
	if !bytes.Equal(r.out.Bytes(), want.Bytes()) {
		t.Fatalf("after the message: raw conn has %d bytes, want %d (bytes held across a message end)", r.out.Len(), want.Len())
	}
}

func newRecConn() (*conn, *recConn) {
	r := &recConn{}
	c := newConn(r, newSettings(Config{}), "tcp")
	return c, r
}

// A small multi-frame message costs one raw write, not two per frame.
func TestCoalesceSmallMessage(t *testing.T) {
	c, r := newRecConn()
	var want bytes.Buffer
	greeting := nullGreeting
	c.Write(greeting[:])
	want.Write(greeting[:])
	if r.writes != 1 || !bytes.Equal(r.out.Bytes(), want.Bytes()) {
		t.Fatalf("greeting: %d writes, %d bytes; want it sent at once", r.writes, r.out.Len())
	}
	writeMsg(t, c, r, &want, []byte("ZSND\x01\x02"), bytes.Repeat([]byte("h"), 90), bytes.Repeat([]byte("d"), 4096))
	if r.writes != 2 {
		t.Fatalf("3-frame message took %d raw writes, want 1", r.writes-1)
	}
	// Empty frames, and a command (flags 0x04) ends a message on its own.
	writeMsg(t, c, r, &want, []byte{}, []byte{})
	hdr := []byte{flagCommand, 5}
	c.Write(hdr)
	c.Write([]byte("\x04PING"))
	want.Write(hdr)
	want.WriteString("\x04PING")
	if !bytes.Equal(r.out.Bytes(), want.Bytes()) {
		t.Fatal("command held after it ended")
	}
}

// A large frame is not copied: it goes out with what was held before it,
// and the message still ends flushed.
func TestCoalesceLargeFrame(t *testing.T) {
	c, r := newRecConn()
	var want bytes.Buffer
	c.Write(nullGreeting[:])
	want.Write(nullGreeting[:])
	big := bytes.Repeat([]byte("x"), 1<<20)
	writeMsg(t, c, r, &want, []byte("ZSND\x01\x12"), make([]byte, 120), big)
	// recConn has no writev: held bytes and the large body are two writes.
	if got := r.writes - 1; got != 2 {
		t.Fatalf("message with a 1 MiB frame took %d raw writes, want 2", got)
	}
}

// Random messages written in random pieces: the raw stream is always the
// same bytes, complete at every message end.
func TestCoalesceRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c, r := newRecConn()
	var want bytes.Buffer
	c.Write(nullGreeting[:])
	want.Write(nullGreeting[:])
	for range 500 {
		nf := 1 + rng.IntN(4)
		var frames [][]byte
		for range nf {
			size := rng.IntN(300)
			if rng.IntN(8) == 0 {
				size = rng.IntN(40 << 10)
			}
			f := make([]byte, size)
			for i := range f {
				f[i] = byte(rng.Uint32())
			}
			frames = append(frames, f)
		}
		writeMsg(t, c, r, &want, frames...)
	}
}

// The guard's swallowed greeting (accepted connections) is followed too.
func TestCoalesceAfterSwallow(t *testing.T) {
	c, r := newRecConn()
	c.swallow = greetingLen
	if _, err := c.Write(nullGreeting[:]); err != nil {
		t.Fatal(err)
	}
	if r.out.Len() != 0 {
		t.Fatal("swallowed greeting was written")
	}
	var want bytes.Buffer
	writeMsg(t, c, r, &want, []byte("a"), []byte("b"))
	if r.writes != 1 {
		t.Fatalf("%d raw writes, want 1", r.writes)
	}
}
