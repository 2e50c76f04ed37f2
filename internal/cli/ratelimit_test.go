package cli

import "testing"

func TestParseRateLimit(t *testing.T) {
	good := map[string]int64{"0": 0, " 0 ": 0, "4K": 4096, "4096": 4096, "100M": 100 << 20, "50MiB": 50 << 20, "1G": 1 << 30, "8589934591G": 8589934591 << 30}
	for in, want := range good {
		if got, err := ParseRateLimit(in); err != nil || got != want {
			t.Errorf("ParseRateLimit(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1", "4095", "3K", "abc", "1.5M", "100M/s", "8589934592G", "17179869184G", "99999999999999999999"} {
		if got, err := ParseRateLimit(in); err == nil {
			t.Errorf("ParseRateLimit(%q) = %d, accepted", in, got)
		}
	}
}

// A size whose multiple does not fit in 64 bits is refused, not wrapped.
func TestParseSizeOverflow(t *testing.T) {
	for _, in := range []string{"17179869184G", "18014398509481984K", "20000000000000000000"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, accepted", in, got)
		}
	}
	if got, err := ParseSize("17179869183G"); err != nil || got != 17179869183<<30 {
		t.Errorf("ParseSize(17179869183G) = %d, %v", got, err)
	}
}
