package hooks

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEnvAndExit(t *testing.T) {
	env := Env{Tree: "myapp", Version: "abc", Seq: 7, Path: "/srv/myapp", PrevVersion: "old", PrevSeq: 6, Phase: "exec"}
	r := Run(context.Background(), `echo "$ZSND_TREE $ZSND_VERSION $ZSND_SEQ $ZSND_PATH $ZSND_PREV_VERSION $ZSND_PREV_SEQ $ZSND_PHASE"; pwd`, t.TempDir(), env, 10*time.Second, 0)
	if !r.OK() || r.Exit != 0 {
		t.Fatalf("hook failed: %+v", r)
	}
	if !strings.HasPrefix(r.Output, "myapp abc 7 /srv/myapp old 6 exec\n") {
		t.Fatalf("output %q", r.Output)
	}
	r = Run(context.Background(), "echo bad >&2; exit 3", "", env, 10*time.Second, 0)
	if r.OK() || r.Exit != 3 || !strings.Contains(r.Output, "bad") {
		t.Fatalf("exit 3: %+v", r)
	}
}

func TestOutputBounded(t *testing.T) {
	r := Run(context.Background(), "head -c 1000000 /dev/zero | tr '\\0' x", "", Env{}, 10*time.Second, 100)
	if !r.OK() {
		t.Fatal(r.Err)
	}
	if !strings.HasPrefix(r.Output, strings.Repeat("x", 100)+"\n...(") || len(r.Output) > 200 {
		t.Fatalf("output not bounded: %d bytes", len(r.Output))
	}
}

func TestTimeoutKillsGroup(t *testing.T) {
	start := time.Now()
	// The child keeps the output pipe open; the whole group must die.
	r := Run(context.Background(), "sleep 60 & sleep 60", "", Env{}, 200*time.Millisecond, 0)
	if !r.TimedOut || !errors.Is(r.Err, ErrTimeout) || r.Exit != -1 {
		t.Fatalf("not a timeout: %+v", r)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("Run returned after %v", el)
	}
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	r := Run(ctx, "sleep 60", "", Env{}, time.Minute, 0)
	if r.OK() || r.TimedOut {
		t.Fatalf("cancelled hook: %+v", r)
	}
}

func TestMissingDir(t *testing.T) {
	r := Run(context.Background(), "true", "/nonexistent/dir", Env{}, time.Second, 0)
	if r.OK() || r.Exit != -1 {
		t.Fatalf("hook in a missing dir: %+v", r)
	}
}
