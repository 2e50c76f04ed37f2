// Package mirror keeps a node's copy of a published tree: it fetches a
// version with the receiver, builds it completely beside the current one,
// checks it against the version id, and switches the stable path to it with
// one atomic rename. It owns the node's on-disk layout (docs/DESIGN-trees.md
// section 5):
//
//	OUT/T                   symlink -> .zsnd/T/v/<seq 20 digits>-<id 12 hex> (the stable path)
//	OUT/.zsnd.T.new         the new symlink, for the instant before it is renamed over OUT/T
//	OUT/.zsnd/T/lock        flock: one sync or rollback at a time per tree
//	OUT/.zsnd/T/v/NAME/     complete, verified versions (Config.Keep, default 2)
//	OUT/.zsnd/T/m/<id hex>  their manifests (checked by hash whenever read from disk)
//	OUT/.zsnd/T/stage/T/    the version being built (left in place if interrupted)
//	OUT/.zsnd/T/incoming/   the manifest being fetched
//	OUT/.zsnd/T/trash/      pruned versions being deleted (moved out of v/ in one rename first)
//	OUT/.zsnd/T/spare/NAME/ the newest pruned version, which the next sync recycles (spare.go)
//
// # Guarantees
//
// A process that resolves OUT/T once sees exactly one complete version:
// versions are never modified while in v/ (but see hard links below), and
// the switch is a rename of a new symbolic link over OUT/T. Only the spare,
// out of v/ since it was pruned, is changed (recycled) to build a later
// version. Killed at
// any moment, a sync leaves OUT/T on the old version or on the complete
// new one; running it again reuses what the interrupted run staged, after
// re-hashing it.
//
// Every write is beneath OUT/.zsnd/T (and OUT/T itself and OUT/.zsnd.T.new,
// the switch), done
// with *at() calls relative to a directory descriptor that resolve no
// symbolic link. A manifest is validated before anything is staged; a
// staged version is re-read from disk (every type, mode, mtime, size,
// symlink target and file hash) and must give the version id before it is
// switched to.
//
// # Reuse, hard links and drift
//
// A file whose content hash is in the current version (or in the staging
// area, or in an already kept copy of the target version) is not fetched:
// it is re-hashed first, and used only if its hash still matches. It is
// hard-linked when its mode and mtime equal the new entry's, otherwise
// copied. Hard links make a reused file one inode in several versions: an
// in-place edit of a file under OUT/T also changes it in the other kept
// versions that share it (which is why every reuse re-hashes; a mismatch is
// reported as a drift event and the file is fetched). Tools that replace
// files by rename (most editors, package managers) touch only one version.
//
// # Modes
//
// Permission bits and the sticky bit are restored as published; setuid and
// setgid bits are not (a node must not create set-id programs because a
// server said so). The check before the switch compares the staged tree
// with the manifest in which those two bits are cleared, which is the
// manifest itself whenever none is set. Files and directories must be
// readable by the user running the sync (owner r, and x for directories)
// for the check to read them.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/receiver"
)

// Config configures Sync.
type Config struct {
	// Receiver carries the endpoint, timeouts and window; its OutputDir
	// and Progress are set by the mirror. Progress events of the mirror
	// go to Events.
	Receiver receiver.Config
	// Out is the output directory; it must exist. The stable path is
	// Out/Tree.
	Out string
	// Tree is the name of the tree on the server (one path component).
	Tree string
	// Keep is how many versions stay on disk, the current one included;
	// default 2, minimum 1.
	Keep int
	// Verify re-hashes every file of the current version even when the
	// server's version is the current one. Without it an unchanged
	// version is checked by type, mode, size, mtime and symlink target
	// only (edits that keep size and mtime are found at the next new
	// version, whose reuse re-hashes).
	Verify bool
	// LockWait is how long to wait for another sync of the same tree to
	// finish; zero fails at once with ErrLocked.
	LockWait time.Duration
	// Limits bound the manifest accepted; zero = manifest.DefaultLimits().
	Limits manifest.Limits
	// Events, if set, receives progress and drift events. It must return
	// quickly.
	Events func(Event)
	// BeforeSwitch, if set, is called when a new version is staged and
	// checked, before the stable path is switched to it (follow mode's
	// --check hook and barrier). An error leaves the stable path as it
	// is and is returned by Sync; the staged version's directory is
	// removed (a later sync of it reuses the current version's files).
	BeforeSwitch func(ctx context.Context, st Staged) error
	// AfterSwitch, if set, is called right after the switch (the rename
	// over the stable path), before the fsync of its directory and before
	// older versions are pruned. Follow mode pauses there after a barrier's
	// timed switch, so that followers sharing a machine all switch before
	// any of them spends CPU on pruning.
	AfterSwitch func(ctx context.Context)
	// WarmSpares makes hard-linked copies of a new version as spares
	// while too few versions are kept for prune to make one (spare.go):
	// a follower's first versions then cost what later ones do.
	WarmSpares bool
	// Listed, if set, is the tree's latest version as the server just
	// announced it (follow mode): the first attempt takes it instead of
	// asking with LIST. A retry (the version gone, another endpoint)
	// lists.
	Listed *receiver.TreeInfo
}

// Staged describes a staged version for Config.BeforeSwitch.
type Staged struct {
	Tree    string
	Version manifest.ID
	Seq     uint64
	Dir     string // the version's directory (complete and checked)
	// PrevSeq and PrevDir name the version the stable path shows now
	// (0 and "" if none: the first sync).
	PrevSeq uint64
	PrevDir string
}

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	EventVersion  EventKind = "version"  // the version to sync: Version, Seq, FilesTotal, BytesTotal
	EventDrift    EventKind = "drift"    // a file of a local version no longer has its hash: Path
	EventProgress EventKind = "progress" // overall progress (throttled by the receiver)
	EventSwitch   EventKind = "switch"   // the stable path now shows Version (Message: the directory)
	EventNote     EventKind = "note"     // something worth telling (Message)
)

// Event is a progress report of a sync.
type Event struct {
	Kind       EventKind
	Tree       string
	Version    manifest.ID
	Seq        uint64
	Path       string // drift: the path in the tree
	Message    string
	Endpoint   string // a note of a failover (several endpoints): the server now in use
	FilesDone  int
	FilesTotal int
	BytesDone  int64 // bytes of the version in place (fetched, reused or in flight)
	BytesTotal int64
	Time       time.Time
}

// Result is the outcome of a sync.
type Result struct {
	Tree      string
	Version   manifest.ID
	Seq       uint64
	Stable    string // Out/Tree
	Dir       string // the version's directory
	Unchanged bool   // the stable path already showed this version
	Repaired  bool   // the version was already current but had drifted
	Previous  string // the version directory switched from ("" if none)

	Files, Dirs, Symlinks int
	Bytes                 int64 // sum of file sizes of the version
	FilesFetched          int
	BytesFetched          int64 // file bytes received over the network
	FilesReused           int   // files taken from local versions or the staging area
	BytesReused           int64
	FilesStaged           int    // of FilesReused: verified files an interrupted run left in the staging area
	FilesRecycled         int    // of FilesReused: files already in place in the recycled spare
	Recycled              string // the pruned version directory the staging tree started from ("" if none)
	ManifestBytes         int64  // manifest bytes received (0 when cached)
	Drift                 []string
	Pruned                []string // version directories removed
}

// Sentinel errors.
var (
	// ErrLocked: another sync or rollback of the tree holds its lock.
	ErrLocked = errors.New("another zrecv is syncing this tree")
	// ErrBadManifest: the server's manifest or version is invalid, too
	// large, or does not match its id. Nothing was switched.
	ErrBadManifest = errors.New("bad manifest from server")
	// ErrMismatch: the staged tree read back from disk does not give the
	// version id. Nothing was switched.
	ErrMismatch = errors.New("staged tree does not match the version")
	// ErrNoPrevious: rollback found no older kept version.
	ErrNoPrevious = errors.New("no previous version kept")
	// ErrLayout: the output directory holds something the mirror does not
	// manage where it needs to write (for example OUT/T is a file).
	ErrLayout = errors.New("unexpected output layout")
	// ErrNotTree: the server does not publish a tree of that name.
	ErrNotTree = errors.New("not a published tree")
)

func (c *Config) setDefaults() error {
	if c.Keep <= 0 {
		c.Keep = 2
	}
	if c.Limits.MaxEntries == 0 || c.Limits.MaxBytes == 0 {
		d := manifest.DefaultLimits()
		if c.Limits.MaxEntries == 0 {
			c.Limits.MaxEntries = d.MaxEntries
		}
		if c.Limits.MaxBytes == 0 {
			c.Limits.MaxBytes = d.MaxBytes
		}
	}
	if c.Out == "" {
		c.Out = "."
	}
	if err := ValidTree(c.Tree); err != nil {
		return err
	}
	if c.Receiver.Failover == nil {
		// One failover state for every session of the sync: after the
		// LIST found the second endpoint alive, the fetches start there.
		f, err := receiver.NewFailover(c.Receiver.Endpoint)
		if err != nil {
			return err
		}
		c.Receiver.Failover = f
	}
	return nil
}

// ValidTree checks a tree name: one valid path component, not ".zsnd".
func ValidTree(tree string) error {
	switch {
	case tree == "":
		return fmt.Errorf("%w: empty tree name", receiver.ErrRefused)
	case tree == ".zsnd":
		return fmt.Errorf("%w: tree name .zsnd is reserved for the mirror's state", receiver.ErrRefused)
	case tree == "." || tree == "..":
		return fmt.Errorf("%w: tree name %q", receiver.ErrRefused, tree)
	}
	for i := 0; i < len(tree); i++ {
		if tree[i] == '/' {
			return fmt.Errorf("%w: tree name %q has a /", receiver.ErrRefused, tree)
		}
	}
	return nil
}

// localMode is the mode a node gives an entry: setuid and setgid cleared.
func localMode(m uint32) uint32 { return m & 0o1777 }

// entryMode is the mode an entry has on a node: setuid and setgid
// cleared; a symlink's is always 0777 (Linux cannot change it).
func entryMode(e *manifest.Entry) uint32 {
	if e.Type == manifest.TypeSymlink {
		return 0o777
	}
	return localMode(e.Mode)
}

// localized returns m with every mode as a node has it (m itself when
// that changes nothing, the usual case).
func localized(m *manifest.Manifest) *manifest.Manifest {
	for i := range m.Entries {
		if entryMode(&m.Entries[i]) != m.Entries[i].Mode {
			c := &manifest.Manifest{Entries: append([]manifest.Entry(nil), m.Entries...)}
			for j := range c.Entries {
				c.Entries[j].Mode = entryMode(&c.Entries[j])
			}
			return c
		}
	}
	return m
}
