package cli

import (
	"strings"
	"testing"
)

func TestPrintable(t *testing.T) {
	cases := map[string]string{
		"plain name.conf":   "plain name.conf",
		"día/ファイル.txt":      "día/ファイル.txt",
		"\x1b[2J verified":  `\x1b[2J verified`,
		"a\nb\rc\td":        `a\nb\rc\td`,
		"del\x7f":           `del\x7f`,
		"c1\u009b2J":        `c1\u009b2J`,
		"bidi\u202eexe.txt": `bidi\u202eexe.txt`,
		"bad\xffutf8\xc3":   `bad\xffutf8\xc3`,
		"real \uFFFD kept":  "real \uFFFD kept",
		`back\slash`:        `back\slash`,
		"nul\x00":           `nul\x00`,
		"\x1b]0;title\x07":  `\x1b]0;title\a`,
		"":                  "",
	}
	for in, want := range cases {
		got := Printable(in)
		if got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				t.Errorf("Printable(%q) kept control %U", in, r)
			}
		}
		if strings.ContainsRune(got, '\u202e') {
			t.Errorf("Printable(%q) kept a bidi override", in)
		}
	}
}
