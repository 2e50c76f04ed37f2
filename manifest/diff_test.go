package manifest

import (
	"slices"
	"testing"
)

func TestMatch(t *testing.T) {
	mk := func(paths ...string) *Manifest {
		m := &Manifest{}
		for _, p := range paths {
			m.Entries = append(m.Entries, Entry{Path: p})
		}
		return m
	}
	a := mk("", "a", "a/b", "c", "e")
	b := mk("", "a", "a-b", "a/b", "d", "e", "f")
	got := Match(a, b)
	want := []int32{0, 1, -1, 2, -1, 4, -1}
	if !slices.Equal(got, want) {
		t.Errorf("Match = %v, want %v", got, want)
	}
	if got := Match(b, mk()); len(got) != 0 {
		t.Errorf("Match of nothing = %v", got)
	}
	if got := Match(mk(), a); !slices.Equal(got, []int32{-1, -1, -1, -1, -1}) {
		t.Errorf("Match against nothing = %v", got)
	}
}
