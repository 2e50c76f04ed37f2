package acl

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zsend/zsend/internal/zcert"
)

func TestRules(t *testing.T) {
	dir := t.TempDir()
	a, _ := zcert.Generate()
	b, _ := zcert.Generate()
	c, _ := zcert.Generate()
	if err := b.Save(filepath.Join(dir, "b.key")); err != nil {
		t.Fatal(err)
	}
	text := "# comment\n\n" + a.Public.String() + "  conf/ motd.txt\n" +
		"b.key\tconf/node7/\n" +
		"*  public/\n"
	l, err := Parse([]byte(text), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  zcert.Key
		name string
		ok   bool
	}{
		{a.Public, "conf/app.conf", true},
		{a.Public, "conf/node7/x", true},
		{a.Public, "motd.txt", true},
		{a.Public, "motd.txt.bak", false},
		{a.Public, "conf", false},
		{a.Public, "confidential/x", false},
		{a.Public, "secret/x", false},
		{b.Public, "conf/node7/app.conf", true},
		{b.Public, "conf/app.conf", false},
		{b.Public, "public/readme", true},
		{c.Public, "public/readme", true},
		{c.Public, "conf/app.conf", false},
		{c.Public, "motd.txt", false},
	} {
		if got := l.Allowed(tc.key, tc.name); got != tc.ok {
			t.Errorf("key %s name %q: %v, want %v", tc.key.Fingerprint(), tc.name, got, tc.ok)
		}
	}
	for _, bad := range []string{"x\n", a.Public.String() + "\n", a.Public.String() + " /etc/\n", a.Public.String() + " conf/../x\n", "missing.key conf/\n"} {
		if _, err := Parse([]byte(bad), dir); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func TestFileReload(t *testing.T) {
	dir := t.TempDir()
	a, _ := zcert.Generate()
	p := filepath.Join(dir, "acl")
	os.WriteFile(p, []byte(a.Public.String()+" one\n"), 0o644)
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Allowed(a.Public, "one") || f.Allowed(a.Public, "two") {
		t.Fatal("initial list")
	}
	os.WriteFile(p, []byte(a.Public.String()+" two\n"), 0o644)
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(p, later, later)
	f.mu.Lock()
	f.checked = time.Time{}
	f.mu.Unlock()
	if f.Allowed(a.Public, "one") || !f.Allowed(a.Public, "two") {
		t.Fatal("reloaded list")
	}
	// A broken file keeps the last good list.
	os.WriteFile(p, []byte("garbage\n"), 0o644)
	os.Chtimes(p, later.Add(time.Second), later.Add(time.Second))
	f.mu.Lock()
	f.checked = time.Time{}
	f.mu.Unlock()
	if !f.Allowed(a.Public, "two") {
		t.Fatal("a broken file replaced the list")
	}
}
