// Package acl is zsend's access list: which CURVE client key may fetch
// which served names.
//
// # File format
//
// UTF-8 text, one rule per line; blank lines and lines whose first
// non-blank character is '#' are ignored. A rule is a key followed by one
// or more name patterns, separated by blanks (spaces or tabs):
//
//	# KEY                                      NAMES...
//	rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7   conf/  motd.txt
//	clients/node7.key                          conf/node7/
//	*                                          public/
//
// KEY is a client's long-term public key as 40 Z85 characters, the path of
// its certificate (czmq format; relative paths are relative to the access
// list's directory), or * for every key the server authorizes.
//
// A NAME pattern is a served name as a receiver requests it ("motd.txt",
// "conf/app.conf"), a tree ending in '/' ("conf/": every name below conf),
// or * (every name). A tree pattern also lets the key fetch the tree's
// manifest (a published version, MGET), which the server checks as
// "TREE/": the manifest lists every name of the tree, so a key with rules
// for single files of a tree cannot fetch it. A key may fetch a name when
// a rule for that key, or a rule for *, has a pattern matching it. A key without any matching
// rule fetches nothing: the list is deny by default.
//
// Patterns are compared with the name exactly as requested; names that
// are not canonical (".", "..", empty components) are refused by the
// server before the list is consulted, so "conf/../secret" never reaches
// a "conf/" rule.
package acl

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zsend/zsend/internal/zcert"
)

// List is a parsed access list.
type List struct {
	rules map[zcert.Key][]string
	any   []string // patterns of the * rules
}

// Parse reads an access list; dir resolves relative certificate paths.
func Parse(data []byte, dir string) (*List, error) {
	l := &List{rules: map[zcert.Key][]string{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: a key without names", n)
		}
		for _, p := range f[1:] {
			if p != "*" && (strings.HasPrefix(p, "/") || strings.Contains("/"+p, "/../") || strings.Contains("/"+p, "/./") || strings.Contains(p, "//")) {
				return nil, fmt.Errorf("line %d: pattern %q is not a served name, a tree ending in /, or *", n, p)
			}
		}
		if f[0] == "*" {
			l.any = append(l.any, f[1:]...)
			continue
		}
		k, err := parseKey(f[0], dir)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		l.rules[k] = append(l.rules[k], f[1:]...)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return l, nil
}

func parseKey(s, dir string) (zcert.Key, error) {
	if len(s) == 40 {
		if k, err := zcert.ParseZ85(s); err == nil {
			return k, nil
		}
	}
	p := s
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	c, err := zcert.Load(p)
	if err != nil {
		return zcert.Key{}, fmt.Errorf("key %q: neither a Z85 key nor a readable certificate: %w", s, err)
	}
	return c.Public, nil
}

// Allowed reports whether key may fetch name.
func (l *List) Allowed(key zcert.Key, name string) bool {
	return match(l.rules[key], name) || match(l.any, name)
}

// Keys returns the number of keys with rules of their own.
func (l *List) Keys() int { return len(l.rules) }

func match(patterns []string, name string) bool {
	for _, p := range patterns {
		switch {
		case p == "*":
			return true
		case strings.HasSuffix(p, "/"):
			// Every name below the tree, and "TREE/" itself: the
			// server asks for that to serve the tree's manifest (MGET).
			if strings.HasPrefix(name, p) {
				return true
			}
		case p == name:
			return true
		}
	}
	return false
}

// File is an access list file, re-read when it changes (its size or
// modification time differ, looked at most once per second, at the next
// check). A file that stops parsing keeps the last good list; OnReload
// reports both. It is safe for concurrent use.
type File struct {
	path string
	// OnReload, if set, is called after each reload attempt: with the
	// number of keys, or with the error that kept the previous list.
	OnReload func(keys int, err error)

	mu      sync.Mutex
	list    *List
	sig     string
	checked time.Time
}

// Open reads the access list at path.
func Open(path string) (*File, error) {
	f := &File{path: path}
	sig, err := stamp(path)
	if err != nil {
		return nil, err
	}
	l, err := load(path)
	if err != nil {
		return nil, err
	}
	f.list, f.sig, f.checked = l, sig, time.Now()
	return f, nil
}

func stamp(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("access list: %w", err)
	}
	return fmt.Sprintf("%d:%d", fi.Size(), fi.ModTime().UnixNano()), nil
}

func load(path string) (*List, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("access list: %w", err)
	}
	l, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("access list %s: %w", path, err)
	}
	return l, nil
}

// Current returns the list, reloading it first if the file changed.
func (f *File) Current() *List {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if now.Sub(f.checked) < time.Second && !now.Before(f.checked) {
		return f.list
	}
	f.checked = now
	sig, err := stamp(f.path)
	if err != nil || sig == f.sig {
		if err != nil && f.OnReload != nil {
			f.OnReload(0, err)
		}
		return f.list
	}
	l, err := load(f.path)
	if err != nil {
		if f.OnReload != nil {
			f.OnReload(0, err)
		}
		f.sig = sig // report a bad file once, not on every check
		return f.list
	}
	f.list, f.sig = l, sig
	if f.OnReload != nil {
		f.OnReload(l.Keys(), nil)
	}
	return f.list
}

// Allowed reports whether key may fetch name under the current list.
func (f *File) Allowed(key zcert.Key, name string) bool { return f.Current().Allowed(key, name) }
