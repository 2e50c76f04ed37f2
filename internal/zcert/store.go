package zcert

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Store is a directory of authorized public certificates, as czmq's
// zcertstore: any certificate file in it (names ending in _secret and
// hidden files are skipped) authorizes its public key. The directory is
// re-read when it changes: Allowed looks at most once per Interval at the
// names, sizes and modification times of its files, and reloads when they
// differ from the last load. It is safe for concurrent use.
type Store struct {
	dir string
	// Interval is the least time between two looks at the directory;
	// default one second.
	Interval time.Duration
	// OnReload, if set, is called after each (re)load with the number of
	// keys and the files that could not be read.
	OnReload func(keys int, bad []error)

	mu      sync.Mutex
	keys    map[Key]*Cert
	sig     string
	checked time.Time
}

// OpenStore reads dir and returns its Store.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir, Interval: time.Second}
	if _, err := s.reload(time.Now()); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Len returns the number of keys loaded.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// Allowed reports whether key is in the store, reloading it first if it
// changed.
func (s *Store) Allowed(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Sub(s.checked) >= s.interval() || now.Before(s.checked) {
		s.reloadLocked(now)
	}
	_, ok := s.keys[key]
	return ok
}

func (s *Store) interval() time.Duration {
	if s.Interval <= 0 {
		return time.Second
	}
	return s.Interval
}

func (s *Store) reload(now time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked(now)
}

// reloadLocked reloads when the directory's signature changed. A
// directory that cannot be read keeps the keys of the last good load.
func (s *Store) reloadLocked(now time.Time) (bool, error) {
	s.checked = now
	sig, err := signature(s.dir)
	if err != nil {
		if s.keys == nil {
			return false, err
		}
		return false, nil
	}
	if sig == s.sig && s.keys != nil {
		return false, nil
	}
	keys, bad, err := LoadDir(s.dir)
	if err != nil {
		if s.keys == nil {
			return false, err
		}
		return false, nil
	}
	s.keys, s.sig = keys, sig
	if s.OnReload != nil {
		s.OnReload(len(keys), bad)
	}
	return true, nil
}

// signature summarizes the names, sizes and modification times of dir's
// entries.
func signature(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("zcert: reading certificate directory: %w", err)
	}
	var b strings.Builder
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			fmt.Fprintf(&b, "%s:?\n", n)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d\n", n, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String(), nil
}
