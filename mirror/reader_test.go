package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// labelledTree writes n files whose content all carry label.
func labelledTree(t *testing.T, dir, label string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		write(t, filepath.Join(dir, fmt.Sprintf("d%d/f%03d", i%7, i)), fmt.Sprintf("%s|%d|%s", label, i, strings.Repeat(label, 50+i)), 0o644)
	}
}

// A reader that resolves the stable path once and reads every file sees
// one complete version, across 100 switches.
func TestReaderSeesOneVersion(t *testing.T) {
	s := startServer(t)
	const files = 40
	srcs := map[string]string{}
	for _, label := range []string{"AAAA", "BBBB"} {
		srcs[label] = filepath.Join(t.TempDir(), label)
		labelledTree(t, srcs[label], label, files)
	}
	out := t.TempDir()
	cfg := testConfig(s, out, "app")
	cfg.Keep = 3
	publish(t, s, "app", srcs["AAAA"], 1)
	syncOK(t, cfg)
	stable := filepath.Join(out, "app")

	var stop atomic.Bool
	var reads, pruned atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for r := 0; r < 1; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				dir, err := filepath.EvalSymlinks(stable)
				if err != nil {
					errc <- fmt.Errorf("resolving the stable path: %v", err)
					return
				}
				label := ""
				n := 0
				gone := false
				for i := 0; i < files && !gone; i++ {
					b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("d%d/f%03d", i%7, i)))
					if err != nil {
						if _, derr := os.Stat(dir); os.IsNotExist(derr) {
							gone = true // pruned under the reader (Keep versions back): not a mix
							break
						}
						errc <- fmt.Errorf("reading %s: %v", dir, err)
						return
					}
					parts := strings.SplitN(string(b), "|", 3)
					if len(parts) != 3 || parts[2] != strings.Repeat(parts[0], 50+i) {
						errc <- fmt.Errorf("partial or foreign file %d in %s: %.40q", i, dir, b)
						return
					}
					if label == "" {
						label = parts[0]
					} else if parts[0] != label {
						errc <- fmt.Errorf("mixed versions in %s: %s and %s", dir, label, parts[0])
						return
					}
					n++
				}
				if gone {
					pruned.Add(1)
				} else {
					reads.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 100; i++ {
		label := []string{"BBBB", "AAAA"}[i%2]
		publish(t, s, "app", srcs[label], uint64(i+2))
		if _, err := syncE(cfg); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("switch %d: %v", i, err)
		}
		select {
		case err := <-errc:
			stop.Store(true)
			wg.Wait()
			t.Fatal(err)
		default:
		}
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	t.Logf("%d complete reads, %d restarted because their version was pruned", reads.Load(), pruned.Load())
	if reads.Load() == 0 {
		t.Error("no complete read")
	}
}
