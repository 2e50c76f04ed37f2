package mirror

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A switch from a plain directory interrupted after the exchange leaves
// the old directory at link.tmp: the next run keeps it as the preexisting
// version.
func TestInterruptedExchangeRecovered(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	out := t.TempDir()
	res := syncOK(t, testConfig(s, out, "app"))
	// As if killed between RENAME_EXCHANGE and the move into v/.
	write(t, filepath.Join(out, ".zsnd/app/link.tmp/old.conf"), "old", 0o644)
	res2 := syncOK(t, testConfig(s, out, "app"))
	if !res2.Unchanged || res2.Dir != res.Dir {
		t.Errorf("second sync: %+v", res2)
	}
	if _, err := os.Stat(filepath.Join(out, ".zsnd/app/link.tmp")); !os.IsNotExist(err) {
		t.Errorf("link.tmp still there: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(out, ".zsnd/app/v", preexisting, "old.conf")); err != nil || string(b) != "old" {
		t.Errorf("old directory not kept: %v", err)
	}
	// A symlink left at link.tmp (killed before the rename) is removed.
	os.Symlink("somewhere", filepath.Join(out, ".zsnd/app/link.tmp"))
	syncOK(t, testConfig(s, out, "app"))
	if _, err := os.Lstat(filepath.Join(out, ".zsnd/app/link.tmp")); !os.IsNotExist(err) {
		t.Errorf("link.tmp symlink still there: %v", err)
	}
}

// The mirror's state directories are never reached through a symlink, and
// a stable path it does not manage is not replaced.
func TestLayoutSymlinksRefused(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	victim := t.TempDir()
	for _, c := range []struct{ name, link string }{
		{"state dir", ".zsnd"},
		{"tree state dir", ".zsnd/app"},
		{"versions dir", ".zsnd/app/v"},
		{"stage dir", ".zsnd/app/stage"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			os.MkdirAll(filepath.Dir(filepath.Join(out, c.link)), 0o755)
			if err := os.Symlink(victim, filepath.Join(out, c.link)); err != nil {
				t.Fatal(err)
			}
			if _, err := syncE(testConfig(s, out, "app")); !errors.Is(err, ErrLayout) {
				t.Errorf("sync with %s a symlink: %v, want ErrLayout", c.link, err)
			}
			if got := entries(t, victim); len(got) != 0 {
				t.Errorf("written through the symlink: %v", got)
			}
		})
	}
	out := t.TempDir()
	write(t, filepath.Join(out, "app"), "a file the user owns", 0o644)
	if _, err := syncE(testConfig(s, out, "app")); !errors.Is(err, ErrLayout) {
		t.Errorf("sync over a regular file: %v, want ErrLayout", err)
	}
	os.Remove(filepath.Join(out, "app"))
	os.Symlink("/etc", filepath.Join(out, "app"))
	if _, err := syncE(testConfig(s, out, "app")); !errors.Is(err, ErrLayout) {
		t.Errorf("sync over a foreign symlink: %v, want ErrLayout", err)
	}
}

// A version being pruned leaves v/ in one rename: a run killed while
// deleting it leaves it in trash/, never half removed among the versions
// a rollback may pick; the next run empties trash/.
func TestPruneThroughTrash(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	var dirs []string
	for seq := uint64(1); seq <= 3; seq++ {
		write(t, filepath.Join(src, "a.conf"), fmt.Sprint(seq), 0o644)
		publish(t, s, "app", src, seq)
		dirs = append(dirs, syncOK(t, cfg).Dir)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Fatalf("first version not pruned: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, ".zsnd/app/trash")); !os.IsNotExist(err) {
		t.Errorf("trash not emptied: %v", err)
	}
	// As if killed while deleting: something left in trash/.
	write(t, filepath.Join(out, ".zsnd/app/trash/00000000000000000001-aaaaaaaaaaaa/x"), "half", 0o644)
	write(t, filepath.Join(src, "a.conf"), "4", 0o644)
	publish(t, s, "app", src, 4)
	syncOK(t, cfg)
	if _, err := os.Stat(filepath.Join(out, ".zsnd/app/trash")); !os.IsNotExist(err) {
		t.Errorf("leftover trash not emptied: %v", err)
	}
}

// The new symlink of a switch is made beside the stable path, in OUT
// (renamed within one directory: no file-system-wide rename lock), and
// never stays there: a leftover from a kill before the rename is
// removed; anything else at that name is not zrecv's, so the switch
// refuses with a clear error and leaves it, and the stable path, alone.
func TestNewLinkBesideStablePath(t *testing.T) {
	s, src, out, cfg, _ := syncedApp(t)
	onlyOurs := func() {
		t.Helper()
		names, err := os.ReadDir(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != 2 || names[0].Name() != ".zsnd" || names[1].Name() != "app" {
			var got []string
			for _, n := range names {
				got = append(got, n.Name())
			}
			t.Errorf("OUT holds %q, want only .zsnd and app", got)
		}
	}
	onlyOurs()

	// Killed between the symlink and the rename: removed by the next run.
	nl := filepath.Join(out, ".zsnd.app.new")
	if err := os.Symlink(".zsnd/app/v/elsewhere", nl); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(src, "a.conf"), "v2\n", 0o644)
	publish(t, s, "app", src, 2)
	res := syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	onlyOurs()

	// Something else at the name: refused, untouched.
	write(t, filepath.Join(nl, "mine"), "not zrecv's\n", 0o644)
	write(t, filepath.Join(src, "a.conf"), "v3\n", 0o644)
	publish(t, s, "app", src, 3)
	_, err := Sync(t.Context(), cfg)
	if !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), nl) {
		t.Fatalf("sync with a directory at %s: %v, want ErrLayout naming it", nl, err)
	}
	if b, err := os.ReadFile(filepath.Join(nl, "mine")); err != nil || string(b) != "not zrecv's\n" {
		t.Errorf("the directory in the way was touched: %q, %v", b, err)
	}
	if got, err := filepath.EvalSymlinks(filepath.Join(out, "app")); err != nil || got != res.Dir {
		t.Errorf("stable path: %q, %v; want still %q", got, err, res.Dir)
	}
	os.RemoveAll(nl)
	syncOK(t, cfg)
	sameTree(t, src, filepath.Join(out, "app"))
	onlyOurs()
}

// A tree name too long for ".zsnd.NAME.new" gets a fixed-length name.
func TestNewLinkNameFits(t *testing.T) {
	long := strings.Repeat("n", 255)
	for _, tree := range []string{"app", strings.Repeat("n", 245), long} {
		l := &layout{tree: tree}
		n := l.newLink()
		if len(n) > 255 || !strings.HasPrefix(n, ".zsnd.") || !strings.HasSuffix(n, ".new") {
			t.Errorf("tree of %d octets: %q", len(tree), n)
		}
		if len(tree) <= 245 && n != ".zsnd."+tree+".new" {
			t.Errorf("tree %q: %q", tree, n)
		}
	}
	a, b := (&layout{tree: long}).newLink(), (&layout{tree: long[1:] + "m"}).newLink()
	if a == b {
		t.Errorf("two long names share %q", a)
	}
}
