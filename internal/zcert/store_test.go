package zcert

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStoreReloads(t *testing.T) {
	dir := t.TempDir()
	a, _ := Generate()
	b, _ := Generate()
	if err := a.Save(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Interval = time.Millisecond
	if !s.Allowed(a.Public) || s.Allowed(b.Public) {
		t.Fatal("initial load wrong")
	}
	// The secret half in the directory is never a key source of its own.
	if s.Len() != 1 {
		t.Fatalf("%d keys", s.Len())
	}
	// Adding a certificate authorizes its key.
	pub := b.Format(false, time.Now())
	if err := os.WriteFile(filepath.Join(dir, "b"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if !s.Allowed(b.Public) {
		t.Fatal("added key not picked up")
	}
	// Removing one revokes it.
	os.Remove(filepath.Join(dir, "a"))
	time.Sleep(5 * time.Millisecond)
	if s.Allowed(a.Public) {
		t.Fatal("removed key still allowed")
	}
	if _, err := OpenStore(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("OpenStore of a missing directory succeeded")
	}
}
