package guard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/go-zeromq/zmq4"
)

func readyBody(props ...string) []byte {
	b := append([]byte{5}, "READY"...)
	for i := 0; i+1 < len(props); i += 2 {
		b = append(b, byte(len(props[i])))
		b = append(b, props[i]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(props[i+1])))
		b = append(b, props[i+1]...)
	}
	return b
}

// FuzzCheckReady: never panics, and whatever it accepts zmq4's own metadata
// parser (which panics on malformed input) can read.
func FuzzCheckReady(f *testing.F) {
	f.Add(readyBody("Socket-Type", "DEALER", "Identity", "abc"))
	f.Add(readyBody("Socket-Type", "ROUTER"))
	f.Add([]byte("\x05READY\x0bSocket-Type\x00\x00\x00\x10DEAL"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkReady(b) != nil {
			return
		}
		md := make(zmq4.Metadata) // zmq4 fills a map made by its caller
		if err := md.UnmarshalZMTP(b[6:]); err != nil {
			t.Fatalf("accepted READY that zmq4 rejects: %v", err)
		}
		// Nor may reading its Identity fail, in either frame form.
		long := append([]byte{flagCommand | flagLong, 0, 0, 0, 0, 0, 0, 0, 0}, b...)
		if id := readyIdentity(long); string(id) != md["Identity"] {
			t.Fatalf("identity %q, zmq4 reads %q", id, md["Identity"])
		}
	})
}

// FuzzCheckGreeting: never panics on any 64 bytes; accepts only NULL, 3.x+.
func FuzzCheckGreeting(f *testing.F) {
	f.Add(nullGreeting[:])
	plain := nullGreeting
	copy(plain[12:], "PLAIN")
	f.Add(plain[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < greetingLen {
			return
		}
		g := b[:greetingLen]
		if checkGreeting(g) == nil && (g[10] < 3 || !bytes.Equal(g[12:32], nullGreeting[12:32])) {
			t.Fatalf("accepted greeting %x", g)
		}
	})
}

// FuzzFrameScanner: the verdict does not depend on how the stream is split
// into reads, and no accepted stream has a frame over the limit.
func FuzzFrameScanner(f *testing.F) {
	f.Add([]byte{0x00, 0x03, 'a', 'b', 'c', 0x02, 0, 0, 0, 0, 0, 0, 0, 1, 'x'}, uint8(3))
	f.Add([]byte{0x02, 0x40, 0, 0, 0, 0, 0, 0, 0}, uint8(1))
	f.Add([]byte{0x08, 0x00}, uint8(7))
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		const limit = 100
		whole := frameScanner{maxFrame: limit, maxMsg: 4 * limit, maxFrames: 8}
		errWhole := whole.scan(stream)
		pieces := frameScanner{maxFrame: limit, maxMsg: 4 * limit, maxFrames: 8}
		var errPieces error
		n := int(step%16) + 1
		for i := 0; i < len(stream) && errPieces == nil; i += n {
			errPieces = pieces.scan(stream[i:min(i+n, len(stream))])
		}
		if !errors.Is(errPieces, errWhole) && (errPieces != nil || errWhole != nil) {
			t.Fatalf("whole: %v, in pieces of %d: %v", errWhole, n, errPieces)
		}
		if errWhole == nil {
			// Independent check: walk the headers directly.
			for p := stream; len(p) >= 2; {
				size, hdr := uint64(p[1]), 2
				if p[0]&flagLong != 0 {
					if len(p) < 9 {
						break
					}
					size, hdr = binary.BigEndian.Uint64(p[1:9]), 9
				}
				if size > limit {
					t.Fatalf("accepted a frame of %d bytes", size)
				}
				if uint64(len(p)-hdr) < size {
					break
				}
				p = p[hdr+int(size):]
			}
		}
	})
}

func TestReadyIdentity(t *testing.T) {
	frame := func(body []byte) []byte { return append([]byte{flagCommand, byte(len(body))}, body...) }
	if got := readyIdentity(frame(readyBody("Socket-Type", "DEALER", "Identity", "node-7"))); string(got) != "node-7" {
		t.Fatalf("identity %q", got)
	}
	if got := readyIdentity(frame(readyBody("Socket-Type", "DEALER"))); got != nil {
		t.Fatalf("identity %q from a READY without one", got)
	}
	long := append([]byte{flagCommand | flagLong, 0, 0, 0, 0, 0, 0, 0, 0}, readyBody("identity", "x", "Socket-Type", "DEALER")...)
	if got := readyIdentity(long); string(got) != "x" {
		t.Fatalf("identity %q from a long frame", got)
	}
}
