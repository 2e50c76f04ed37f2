package guard

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/curve"
)

// FuzzCurveFrame: the CURVE frame reader never panics, never returns more
// than the limit, and returns exactly the frame's body.
func FuzzCurveFrame(f *testing.F) {
	f.Add(appendFrame(nil, flagCommand, make([]byte, curve.HelloSize)), 200)
	f.Add(appendFrame(nil, 0, make([]byte, 300)), 1000)
	f.Add([]byte{flagCommand | flagLong, 0x40, 0, 0, 0, 0, 0, 0, 0}, 512)
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		if limit < 0 || limit > 1<<20 {
			return
		}
		flags, body, err := readCurveFrame(bytes.NewReader(b), limit, nil)
		if err != nil {
			return
		}
		if len(body) > limit || flags&flagReserved != 0 {
			t.Fatalf("accepted %d bytes (limit %d), flags %#x", len(body), limit, flags)
		}
		if !bytes.Equal(appendFrame(nil, flags&^flagLong, body), b[:len(appendFrame(nil, flags&^flagLong, body))]) && flags&flagLong == 0 {
			t.Fatal("body differs from the input")
		}
	})
}

// FuzzCurveServerHandshake: whatever a client sends after the CURVE
// greeting, the server half of the handshake neither panics nor hangs,
// and accepts nothing that is not a complete, valid handshake.
func FuzzCurveServerHandshake(f *testing.F) {
	server, client := genPairF(f), genPairF(f)
	cl, _ := curve.NewClient(server.pub, client.pub, client.sec, rand.Reader)
	h, _ := cl.Hello()
	f.Add(appendFrame(nil, flagCommand, h))
	f.Add(append(appendFrame(nil, flagCommand, h), appendFrame(nil, flagCommand, append([]byte("\x08INITIATE"), make([]byte, 300)...))...))
	f.Add([]byte{flagCommand | flagLong, 0x40, 0, 0, 0, 0, 0, 0, 0})
	c := testConfig()
	c.CurveServer = &CurveServer{PublicKey: server.pub, SecretKey: server.sec}
	ctx := WithConfig(context.Background(), c)
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		l := &listener{set: settingsFrom(ctx)}
		cn := newConn(a, l.set, "pipe")
		a.SetDeadline(time.Now().Add(200 * time.Millisecond))
		go func() { // the client: read the greeting, send its own and the input, hang up
			b.SetDeadline(time.Now().Add(200 * time.Millisecond))
			g := make([]byte, greetingLen)
			if _, err := ioReadFull(b, g); err != nil {
				return
			}
			b.Write(curveClientGreeting[:])
			b.Write(in)
			b.Close()
		}()
		err := l.curveHandshake(cn)
		cn.Close()
		if err == nil {
			t.Fatal("a fuzzed client completed the handshake")
		}
	})
}

func genPairF(f *testing.F) keyPair { return genPair(f) }
