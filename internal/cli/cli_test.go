package cli

import (
	"bytes"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"1": 1, "65536": 65536, "512K": 512 << 10, "8M": 8 << 20, "8MiB": 8 << 20, "1g": 1 << 30, "4KB": 4 << 10}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "M", "1T", "abc", "1.5M"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestIsTerminal(t *testing.T) {
	if IsTerminal(&bytes.Buffer{}) {
		t.Fatal("a buffer is not a terminal")
	}
}
