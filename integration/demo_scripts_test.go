package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadmeDemos runs the commands README.md gives a newcomer first:
// scripts/demo-fleet.sh (the main job: a server, three followers, a
// change, the status gate, each follower checked with diff -r) and
// scripts/demo.sh (one file, SIZE=8M here), each bounded in time.
func TestReadmeDemos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the demo scripts")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		script string
		env    []string
		want   string
	}{
		{"scripts/demo-fleet.sh", nil, "OK: three followers run the new version"},
		{"scripts/demo.sh", []string{"SIZE=8M"}, ""},
	} {
		t.Run(filepath.Base(c.script), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", c.script)
			cmd.Dir = root
			cmd.Env = append(append(os.Environ(), "TMPDIR="+t.TempDir()), c.env...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("%s: %v\n%s", c.script, err, out.String())
			}
			if !strings.Contains(out.String(), c.want) {
				t.Fatalf("%s: output lacks %q:\n%s", c.script, c.want, out.String())
			}
		})
	}
}
