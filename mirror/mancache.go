package mirror

import (
	"sync"

	"github.com/zsend/zsend/manifest"
)

// decoded keeps the last manifests this process read or fetched, decoded,
// by version id. A follower syncs again and again between the same few
// versions (the current one, the spare, the new one): reading and
// decoding each from m/ at every sync cost it more than the one changed
// file. A manifest is only ever put here after its bytes gave its id, and
// it is never modified (localized copies), so an entry is as good as the
// file. The cache is bounded in entries, not manifests: a tree of 100,000
// entries is not kept at all.
var decoded = &manifestCache{max: 1 << 16}

type manifestCache struct {
	mu      sync.Mutex
	max     int // total entries kept
	entries int
	order   []manifest.ID // oldest first
	m       map[manifest.ID]cachedManifest
}

type cachedManifest struct {
	man  *manifest.Manifest
	size int // its encoding's length
}

// get returns the manifest of id if cached and within lim.
func (c *manifestCache) get(id manifest.ID, lim manifest.Limits) *manifest.Manifest {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || uint64(len(e.man.Entries)) > lim.MaxEntries || uint64(e.size) > lim.MaxBytes {
		return nil
	}
	return e.man
}

// put keeps man (whose encoding of size bytes gave id), dropping the
// oldest ones beyond the bound.
func (c *manifestCache) put(id manifest.ID, man *manifest.Manifest, size int) {
	n := len(man.Entries)
	if n > c.max/2 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[manifest.ID]cachedManifest{}
	}
	if _, ok := c.m[id]; ok {
		return
	}
	for c.entries+n > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.entries -= len(c.m[old].man.Entries)
		delete(c.m, old)
	}
	c.m[id] = cachedManifest{man: man, size: size}
	c.order = append(c.order, id)
	c.entries += n
}
