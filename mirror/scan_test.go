package mirror

import (
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/manifest"
)

// The tests' reading of a tree into a manifest: the check the mirror
// did before treeCheck, kept as the oracle treeCheck is compared with.

// scanTree reads a tree from disk into a manifest (sorted), without
// following any symbolic link. Hashes are computed only if hash, except
// for files known (when known is not nil) returns a hash for. record, when
// not nil, gets each file's stat (as it was hashed). It stops with
// errTooMany past limit+1 entries.
func scanTree(root *os.File, hash bool, limit int, known func(string, *unix.Stat_t) ([32]byte, bool), record func(string, *unix.Stat_t)) (*manifest.Manifest, error) {
	var entries []manifest.Entry
	err := walkTree(root, hash, limit, known, record, func(e *manifest.Entry) error {
		entries = append(entries, *e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m := &manifest.Manifest{Entries: entries}
	m.Sort()
	return m, nil
}

// walkTree is scanTree giving each entry to visit (in walk order) instead
// of keeping them.
func walkTree(root *os.File, hash bool, limit int, known func(string, *unix.Stat_t) ([32]byte, bool), record func(string, *unix.Stat_t), visit func(*manifest.Entry) error) error {
	count := 0
	queue := []string{""}
	buf := make([]byte, manifest.MaxTargetLen+1)
	for len(queue) > 0 {
		rel := queue[0]
		queue = queue[1:]
		d := root
		if rel != "" {
			var err error
			if d, err = openDir(root, rel); err != nil {
				return err
			}
		}
		err := func() error {
			var st unix.Stat_t
			if err := unix.Fstat(int(d.Fd()), &st); err != nil {
				return err
			}
			count++
			if err := visit(&manifest.Entry{Path: rel, Type: manifest.TypeDir, Mode: uint32(st.Mode) & 0o7777, MtimeNs: statMtime(&st)}); err != nil {
				return err
			}
			names, err := readNames(d)
			if err != nil {
				return err
			}
			slices.Sort(names)
			for _, n := range names {
				if count > limit {
					return errTooMany
				}
				p := n
				if rel != "" {
					p = rel + "/" + n
				}
				st, err := lstatAt(int(d.Fd()), n)
				if err != nil {
					return &os.PathError{Op: "lstat", Path: join(root.Name(), p), Err: err}
				}
				e := manifest.Entry{Path: p, Mode: uint32(st.Mode) & 0o7777, MtimeNs: statMtime(&st)}
				switch st.Mode & unix.S_IFMT {
				case unix.S_IFDIR:
					queue = append(queue, p)
					continue // its entry is added when it is read
				case unix.S_IFREG:
					e.Type, e.Size = manifest.TypeFile, uint64(st.Size)
					if !hash {
						break
					}
					if known != nil {
						if sum, ok := known(p, &st); ok {
							e.Hash = sum
							if record != nil {
								record(p, &st)
							}
							break
						}
					}
					sum, st2, err := hashAt(d, n)
					if err != nil {
						return fmt.Errorf("hashing %s: %w", p, err)
					}
					if st2.Dev != st.Dev || st2.Ino != st.Ino || st2.Size != st.Size || statMtime(&st2) != e.MtimeNs {
						return fmt.Errorf("%s changed while being checked", p)
					}
					e.Hash = sum
					if record != nil {
						record(p, &st2)
					}
				case unix.S_IFLNK:
					e.Type, e.Mode = manifest.TypeSymlink, 0o777
					k, err := unix.Readlinkat(int(d.Fd()), n, buf)
					if err != nil {
						return &os.PathError{Op: "readlink", Path: join(root.Name(), p), Err: err}
					}
					e.Target = string(buf[:k])
				default:
					return fmt.Errorf("%s: special file (device, socket or FIFO) in the tree", p)
				}
				count++
				if err := visit(&e); err != nil {
					return err
				}
			}
			return nil
		}()
		if d != root {
			d.Close()
		}
		if err != nil {
			return err
		}
	}
	return nil
}
