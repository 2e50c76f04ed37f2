package sender

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestDefaultStateDir: the chain README gives: $STATE_DIRECTORY (its first
// entry), else /var/lib/zsend for root, else $XDG_STATE_HOME/zsend, else
// ~/.local/state/zsend (a temporary directory without a home).
func TestDefaultStateDir(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	home := func() (string, error) { return "/home/u", nil }
	noHome := func() (string, error) { return "", errors.New("no home") }
	for _, c := range []struct {
		euid int
		env  map[string]string
		home func() (string, error)
		want string
	}{
		{0, map[string]string{"STATE_DIRECTORY": "/run/st:/other", "XDG_STATE_HOME": "/x"}, home, "/run/st"},
		{1000, map[string]string{"STATE_DIRECTORY": "/run/st"}, home, "/run/st"},
		{0, map[string]string{"XDG_STATE_HOME": "/x"}, home, "/var/lib/zsend"},
		{1000, map[string]string{"XDG_STATE_HOME": "/x"}, home, "/x/zsend"},
		{1000, nil, home, "/home/u/.local/state/zsend"},
		{1000, nil, noHome, filepath.Join(os.TempDir(), "zsend-state")},
	} {
		if got := defaultStateDir(c.euid, env(c.env), c.home); got != c.want {
			t.Errorf("euid %d, env %v: %q, want %q", c.euid, c.env, got, c.want)
		}
	}
}
