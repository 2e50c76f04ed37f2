package bench

import (
	"fmt"
	"math"
	"net"
	"slices"

	"github.com/zsend/zsend/internal/cli"
)

// ParseSize parses a byte count with an optional binary suffix (4096,
// 4K, 512M, 1G, 1GiB), as the commands' own flags do.
func ParseSize(s string) (int64, error) {
	n, err := cli.ParseSize(s)
	return int64(n), err
}

// FormatSize prints a byte count in binary units (1 GiB, 512 MiB, 4 KiB).
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == math.Trunc(f) {
		return fmt.Sprintf("%d %s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// MinMax returns the smallest and largest of xs (NaN, NaN for none).
func MinMax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(xs), slices.Max(xs)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// MBps is bytes per second in MB/s (10^6 bytes).
func MBps(bytes int64, seconds float64) float64 {
	if seconds <= 0 {
		return math.NaN()
	}
	return float64(bytes) / seconds / 1e6
}

// MiB converts bytes to MiB.
func MiB(b int64) float64 { return float64(b) / (1 << 20) }
