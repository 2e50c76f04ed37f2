package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"
)

func openSrc(t *testing.T, path string) (*os.File, Stat) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := FStat(f)
	if err != nil {
		t.Fatal(err)
	}
	return f, st
}

func TestPutBatchGC(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	src := filepath.Join(dir, "a")
	body := make([]byte, 10000) // several buffers
	for i := range body {
		body[i] = byte(i)
	}
	os.WriteFile(src, body, 0o644)
	f, st := openSrc(t, src)
	b := s.Begin()
	h, n, err := b.Put(f, st, buf)
	if err != nil || n != int64(len(body)) || h != Hash(blake3.Sum256(body)) {
		t.Fatalf("Put: %x %d %v", h, n, err)
	}
	if s.Has(h) || !b.Has(h) {
		t.Fatal("a blob is in the store before Commit")
	}
	// The same content again in the same batch is kept once.
	f2, st2 := openSrc(t, src)
	if _, _, err := b.Put(f2, st2, buf); err != nil || b.Len() != 1 {
		t.Fatalf("duplicate Put: %v, %d pending", err, b.Len())
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.Path(h))
	if err != nil || string(got) != string(body) {
		t.Fatalf("stored copy: %v", err)
	}
	if fi, _ := os.Stat(s.Path(h)); fi.Mode().Perm() != 0o400 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if tmp, _ := readNames(filepath.Join(dir, "store", "tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	// Changed between open and copy: ErrChanged, nothing kept.
	f3, st3 := openSrc(t, src)
	os.WriteFile(src, []byte("other content"), 0o644)
	b = s.Begin()
	if _, _, err := b.Put(f3, st3, buf); !errors.Is(err, ErrChanged) || b.Len() != 0 {
		t.Fatalf("Put of a changed source: %v", err)
	}
	// Aborted batches leave nothing.
	f4, st4 := openSrc(t, src)
	h4, _, err := b.Put(f4, st4, buf)
	if err != nil {
		t.Fatal(err)
	}
	b.Abort()
	if s.Has(h4) {
		t.Fatal("aborted blob stored")
	}
	if tmp, _ := readNames(filepath.Join(dir, "store", "tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left after Abort: %v", tmp)
	}
	// GC keeps what it is told to, removes the rest.
	f5, st5 := openSrc(t, src)
	h5, _, err := s.Put(f5, st5, buf)
	if err != nil || !s.Has(h5) {
		t.Fatal(err)
	}
	removed, err := s.GC(map[Hash]struct{}{h5: {}})
	if err != nil || removed != 1 || s.Has(h) || !s.Has(h5) {
		t.Fatalf("GC removed %d: %v", removed, err)
	}
	// Open removes a crash's temporary files.
	os.WriteFile(filepath.Join(dir, "store", "tmp", "leftover"), []byte("x"), 0o600)
	if _, err := Open(filepath.Join(dir, "store")); err != nil {
		t.Fatal(err)
	}
	if tmp, _ := readNames(filepath.Join(dir, "store", "tmp")); len(tmp) != 0 {
		t.Fatalf("leftovers after Open: %v", tmp)
	}
}
