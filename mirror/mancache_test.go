package mirror

import (
	"fmt"
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
	if c.get(ida, lim) != a || c.get(idb, lim) != b || c.get(idbig, lim) != nil {
		t.Fatal("kept the wrong manifests")
	}
	d, idd := mk(45) // 40+30+45 > 100: the oldest (a) goes
	c.put(idd, d, 1000)
	if c.get(ida, lim) != nil || c.get(idb, lim) != b || c.get(idd, lim) != d || c.entries != 75 {
		t.Fatalf("eviction: entries %d", c.entries)
	}
	// Not beyond the caller's limits.
	if c.get(idb, manifest.Limits{MaxEntries: 29, MaxBytes: 1 << 20}) != nil || c.get(idb, manifest.Limits{MaxEntries: 1000, MaxBytes: 999}) != nil {
		t.Error("a cached manifest beyond the caller's limits was returned")
	}
}
