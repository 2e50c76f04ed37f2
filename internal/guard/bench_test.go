package guard

import (
	"context"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// BenchmarkRouterToDealer measures ROUTER->DEALER throughput of 256 KiB
// frames over loopback, plain zmq4 tcp:// against the guarded endpoint.
func BenchmarkRouterToDealer(b *testing.B) {
	Register()
	idle := WithConfig(context.Background(), Config{IdleTimeout: time.Minute})
	for _, tc := range []struct {
		name string
		ctx  context.Context
		ep   string
	}{
		{"plain", context.Background(), "tcp://127.0.0.1:0"},
		{"guard", context.Background(), SchemeTCP + "://127.0.0.1:0"},
		{"guard+idle", idle, SchemeTCP + "://127.0.0.1:0"},
	} {
		b.Run(tc.name+"/256KiB", func(b *testing.B) {
			benchRouterToDealer(b, tc.ctx, tc.ep, 256<<10)
		})
	}
}

func benchRouterToDealer(b *testing.B, ctx context.Context, ep string, size int) {
	router, ep := startRouter(b, ctx, ep)
	dealer := startDealer(b, ctx, ep, "d")
	if err := dealer.Send(zmq4.NewMsgString("hello")); err != nil {
		b.Fatal(err)
	}
	if _, err := recvTimeout(router, 2*time.Second); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, size)
	id := []byte("d")
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan error, 1)
	go func() {
		for range b.N {
			msg, err := dealer.Recv()
			if err != nil {
				done <- err
				return
			}
			if len(msg.Frames) != 1 || len(msg.Frames[0]) != size {
				b.Errorf("got %d frames", len(msg.Frames))
			}
		}
		done <- nil
	}()
	for range b.N {
		if err := router.Send(zmq4.NewMsgFrom(id, payload)); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkFrameScanner is the guard's per-read cost on the receive path:
// one 9-byte header and a 256 KiB body, as zmq4 reads them.
func BenchmarkFrameScanner(b *testing.B) {
	s := newFrameScanner(newSettings(Config{}))
	hdr := frame(0, make([]byte, 256<<10))[:9]
	body := make([]byte, 256<<10)
	b.SetBytes(int64(len(hdr) + len(body)))
	for range b.N {
		if err := s.scan(hdr[:2]); err != nil {
			b.Fatal(err)
		}
		if err := s.scan(hdr[2:]); err != nil {
			b.Fatal(err)
		}
		if err := s.scan(body); err != nil {
			b.Fatal(err)
		}
	}
}
