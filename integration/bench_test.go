package integration

import (
	"fmt"
	"os"
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

// BenchmarkSmallFiles: 1000 files of 4 KiB in one fetch, against which a
// single 4 MiB file is the yardstick (BenchmarkTransfer4M).
//
//	go test -run '^$' -bench 'SmallFiles|Transfer4M' ./integration
func BenchmarkSmallFiles(b *testing.B) {
	src := b.TempDir()
	dir := filepath.Join(src, "tree")
	os.Mkdir(dir, 0o755)
	var names []string
	for i := range 1000 {
		writeRandom(b, dir, fmt.Sprintf("f%04d", i), 4096)
		names = append(names, fmt.Sprintf("tree/f%04d", i))
	}
	ep, _ := serve(b, sender.Config{Paths: []string{dir}})
	b.SetBytes(1000 * 4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fetch(b, receiver.Config{Endpoint: ep, OutputDir: b.TempDir()}, names...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTransfer4M(b *testing.B) {
	p := writeRandom(b, b.TempDir(), "one.bin", 4<<20)
	ep, _ := serve(b, sender.Config{Paths: []string{p}})
	b.SetBytes(4 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fetch(b, receiver.Config{Endpoint: ep, OutputDir: b.TempDir()}, "one.bin"); err != nil {
			b.Fatal(err)
		}
	}
}
