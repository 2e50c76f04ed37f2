package integration

import (
	"path/filepath"
	"testing"

	"github.com/zsend/zsend/receiver"
	"github.com/zsend/zsend/sender"
)

// BenchmarkTransfer measures one in-process verified transfer (sender and
// receiver share the process, so -cpuprofile sees both sides).
//
//	go test -run '^$' -bench Transfer -benchtime 4x -cpuprofile cpu.out ./integration
func BenchmarkTransfer(b *testing.B) {
	const size = 256 << 20
	src := b.TempDir()
	p := writeRandom(b, src, "bench.bin", size)
	ep, _ := serve(b, sender.Config{Paths: []string{p}})
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := b.TempDir()
		if _, err := fetch(b, receiver.Config{Endpoint: ep, OutputDir: out}, "bench.bin"); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if i == 0 {
			if a, c := b3(b, p), b3(b, filepath.Join(out, "bench.bin")); a != c {
				b.Fatal("corrupt transfer")
			}
		}
		b.StartTimer()
	}
}
