package protocol

import "testing"

func TestVersionMessage(t *testing.T) {
	if got := VersionMessage(1, 2, ""); got != "ZSND 1..2" {
		t.Fatalf("VersionMessage(1, 2) = %q", got)
	}
	if got := VersionMessage(1, 1, "client offers 3..4"); got != "ZSND 1..1; client offers 3..4" {
		t.Fatalf("VersionMessage with detail = %q", got)
	}
	good := map[string][2]uint8{
		"ZSND 1..1":                      {1, 1},
		"ZSND 1..2; client offers 3..9":  {1, 2},
		"ZSND 2..255":                    {2, 255},
		"ZSND 0..0; a message at 7 ..8 ": {0, 0},
	}
	for msg, want := range good {
		a, b, ok := ParseVersionMessage(msg)
		if !ok || a != want[0] || b != want[1] {
			t.Errorf("ParseVersionMessage(%q) = %d, %d, %v; want %v", msg, a, b, ok, want)
		}
	}
	for _, msg := range []string{"", "ZSND", "ZSND 1", "ZSND 1..", "ZSND ..2", "zsnd 1..2", "ZSND 2..1",
		"ZSND 1..256", "ZSND 01..2", "ZSND 1..2x", "ZSND -1..2", "speaks 1..2", " ZSND 1..2", "ZSND 1..2;x"} {
		if _, _, ok := ParseVersionMessage(msg); ok {
			t.Errorf("ParseVersionMessage(%q) accepted", msg)
		}
	}
}
