package store

import (
	"errors"
	"fmt"
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
	removed, err := s.GC(func(h Hash) bool { return h == h5 })
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

// TestBatchManyBlobs: a batch of more blobs than Commit lists at once puts
// every one in place, each holding its content, and leaves no temporary
// file; a crash's leftover batch directory goes at the next Open.
func TestBatchManyBlobs(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	b := s.Begin()
	var hs []Hash
	const n = 2500
	for i := 0; i < n; i++ {
		src := filepath.Join(dir, "src")
		os.WriteFile(src, []byte(fmt.Sprintf("content %d", i%(n-100))), 0o644) // the last 100 repeat earlier ones
		f, st := openSrc(t, src)
		h, _, err := b.Put(f, st, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !b.Has(h) || s.Has(h) {
			t.Fatalf("blob %d: pending %v, stored %v before Commit", i, b.Has(h), s.Has(h))
		}
		hs = append(hs, h)
	}
	if b.Len() != n-100 {
		t.Fatalf("%d pending, want %d (duplicates kept once)", b.Len(), n-100)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	for i, h := range hs {
		got, err := os.ReadFile(s.Path(h))
		if err != nil || string(got) != fmt.Sprintf("content %d", i%(n-100)) {
			t.Fatalf("blob %d: %q, %v", i, got, err)
		}
	}
	if tmp, _ := readNames(filepath.Join(dir, "store", "tmp")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	// A crash between Put and Commit: the batch's directory stays behind,
	// and none of it is in the store.
	b = s.Begin()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("never committed"), 0o644)
	f, st := openSrc(t, src)
	h, _, err := b.Put(f, st, buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(dir, "store")); err != nil {
		t.Fatal(err)
	}
	if tmp, _ := readNames(filepath.Join(dir, "store", "tmp")); len(tmp) != 0 || s.Has(h) {
		t.Fatalf("leftovers after Open: %v (stored: %v)", tmp, s.Has(h))
	}
}
