package faultproxy

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

const (
	benchBytes   = 1 << 30 // per transfer
	benchSockBuf = 8 << 20 // socket buffers for the endpoints
)

// newSink starts a server that reads each connection to EOF and answers
// with the number of bytes read (8 bytes, big endian).
func newSink(b *testing.B) *server {
	return newServer(b, func(c *net.TCPConn) {
		_ = c.SetReadBuffer(benchSockBuf)
		buf := make([]byte, 1<<20)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		_, _ = c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	})
}

// transfer sends benchBytes to addr and waits for the sink's byte count.
func transfer(b *testing.B, addr string, buf []byte) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	_ = tc.SetWriteBuffer(benchSockBuf)
	_ = tc.SetReadBuffer(benchSockBuf)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Minute))
	for sent := 0; sent < benchBytes; {
		n, err := tc.Write(buf[:min(len(buf), benchBytes-sent)])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	if err := tc.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	var ack [8]byte
	if _, err := io.ReadFull(tc, ack[:]); err != nil {
		b.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(ack[:]); got != benchBytes {
		b.Fatalf("sink got %d bytes, want %d", got, benchBytes)
	}
}

func benchThroughput(b *testing.B, addr string) {
	buf := make([]byte, 1<<20)
	b.SetBytes(benchBytes)
	b.ResetTimer()
	for b.Loop() {
		transfer(b, addr, buf)
	}
}

// BenchmarkDirect is the baseline: 1 GiB over plain loopback TCP with large
// socket buffers.
func BenchmarkDirect(b *testing.B) {
	sink := newSink(b)
	benchThroughput(b, sink.Addr())
}

// BenchmarkProxy sends 1 GiB through the proxy without faults.
func BenchmarkProxy(b *testing.B) {
	sink := newSink(b)
	p, err := New(sink.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	benchThroughput(b, p.Addr())
}

// BenchmarkProxyDelay25ms sends 1 GiB through the proxy with a 25 ms
// one-way delay in each direction.
func BenchmarkProxyDelay25ms(b *testing.B) {
	sink := newSink(b)
	p, err := New(sink.Addr(), WithDelay(25*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	benchThroughput(b, p.Addr())
}
