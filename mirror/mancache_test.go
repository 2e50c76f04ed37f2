package mirror

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/zsend/zsend/manifest"
)

func TestManifestCacheBounds(t *testing.T) {
	mk := func(n int) (*manifest.Manifest, manifest.ID) {
		m := &manifest.Manifest{Entries: make([]manifest.Entry, n)}
		var id manifest.ID
		copy(id[:], fmt.Sprint(n))
		return m, id
	}
	c := &manifestCache{max: 100}
	lim := manifest.DefaultLimits()
	a, ida := mk(40)
	b, idb := mk(30)
	big, idbig := mk(51)
	c.put(ida, a, 1000)
	c.put(idb, b, 1000)
	c.put(idbig, big, 1000) // over half the bound: not kept
	if get(c, ida, lim) != a || get(c, idb, lim) != b || get(c, idbig, lim) != nil {
		t.Fatal("kept the wrong manifests")
	}
	d, idd := mk(45) // 40+30+45 > 100: the oldest (a) goes
	c.put(idd, d, 1000)
	if get(c, ida, lim) != nil || get(c, idb, lim) != b || get(c, idd, lim) != d || c.entries != 75 {
		t.Fatalf("eviction: entries %d", c.entries)
	}
	// Not beyond the caller's limits.
	if get(c, idb, manifest.Limits{MaxEntries: 29, MaxBytes: 1 << 20}) != nil || get(c, idb, manifest.Limits{MaxEntries: 1000, MaxBytes: 999}) != nil {
		t.Error("a cached manifest beyond the caller's limits was returned")
	}
}

func get(c *manifestCache, id manifest.ID, lim manifest.Limits) *manifest.Manifest {
	m, _ := c.get(id, lim)
	return m
}

// The cache is the process's: a second output directory synced from the
// same version still gets its own m/<id> (relays serve it from there).
func TestManifestCacheKeepsEachLayoutsFile(t *testing.T) {
	s := startServer(t)
	src := filepath.Join(t.TempDir(), "app")
	smallTree(t, src)
	publish(t, s, "app", src, 1)
	for k := 0; k < 2; k++ {
		out := t.TempDir()
		res := syncOK(t, testConfig(s, out, "app"))
		if _, err := os.Stat(ManifestPath(out, "app", res.Version)); err != nil {
			t.Fatalf("output %d: %v", k, err)
		}
		sameTree(t, src, filepath.Join(out, "app"))
	}
}
