package manifest

// Delta is what changes from one version to the next.
type Delta struct {
	Added   []string // paths only in the new version
	Removed []string // paths only in the old version
	Changed []string // paths in both whose entry differs (type, mode, mtime, size, hash or target)
	// Same content: files of the new version whose hash equals that of the
	// old version's file at the same path, whether or not mode or mtime
	// changed; candidates for local reuse.
	SameContent []string
}

// Diff compares two valid manifests (old may be nil: everything is added).
// It walks both sorted entry lists once.
func Diff(old, new *Manifest) Delta {
	var d Delta
	var oe []Entry
	if old != nil {
		oe = old.Entries
	}
	ne := new.Entries
	i, j := 0, 0
	for i < len(oe) || j < len(ne) {
		switch {
		case j >= len(ne) || (i < len(oe) && oe[i].Path < ne[j].Path):
			d.Removed = append(d.Removed, oe[i].Path)
			i++
		case i >= len(oe) || ne[j].Path < oe[i].Path:
			d.Added = append(d.Added, ne[j].Path)
			j++
		default:
			o, n := &oe[i], &ne[j]
			if *o != *n {
				d.Changed = append(d.Changed, n.Path)
			}
			if o.Type == TypeFile && n.Type == TypeFile && o.Hash == n.Hash {
				d.SameContent = append(d.SameContent, n.Path)
			}
			i++
			j++
		}
	}
	return d
}

// Match returns, for each entry of b, the index of the entry of a with the
// same path, or -1. It walks both sorted entry lists once.
func Match(a, b *Manifest) []int32 {
	out := make([]int32, len(b.Entries))
	i := 0
	for j := range b.Entries {
		p := b.Entries[j].Path
		for i < len(a.Entries) && a.Entries[i].Path < p {
			i++
		}
		if i < len(a.Entries) && a.Entries[i].Path == p {
			out[j] = int32(i)
		} else {
			out[j] = -1
		}
	}
	return out
}
