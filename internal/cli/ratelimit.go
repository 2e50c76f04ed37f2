package cli

import (
	"fmt"
	"math"
	"strings"

	"github.com/zsend/zsend/protocol"
)

// MinRateLimit is the smallest --rate-limit: one smallest chunk per second.
const MinRateLimit = protocol.MinChunkSize

// ParseRateLimit reads a --rate-limit value in bytes per second: a size
// as ParseSize reads it ("100M" is 100 MiB/s), or "0" for no limit (0). A
// value below MinRateLimit, or beyond what an int64 holds, is an error.
func ParseRateLimit(s string) (int64, error) {
	if strings.TrimSpace(s) == "0" {
		return 0, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: want bytes per second, e.g. 500K, 100M, 1G (1024 multiples), or 0 for no limit", s)
	}
	if n < MinRateLimit {
		return 0, fmt.Errorf("rate %q is below the minimum of 4K (%d bytes/s); 0 means no limit", s, MinRateLimit)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("rate %q is too large", s)
	}
	return int64(n), nil
}
