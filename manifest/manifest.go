// Package manifest is the description of one published version of a tree:
// every entry's path, type, mode, mtime, size, content hash and symlink
// target, in a canonical encoding whose BLAKE3-256 is the version id.
//
// The package is pure: no files, sockets or clocks. Scanning a directory
// into a manifest lives with the publisher (sender); building a directory
// from one lives with the node mirror (mirror). See docs/DESIGN-trees.md
// section 3 and PROTOCOL.md for the normative encoding.
package manifest

import (
	"encoding/hex"
)

// Magic opens every encoded manifest.
const Magic = "ZSNDMAN1"

// Type is an entry's kind.
type Type uint8

// Entry types.
const (
	TypeFile    Type = 1 // regular file: Size and Hash are its content's
	TypeDir     Type = 2 // directory
	TypeSymlink Type = 3 // symbolic link: Target is its text, never followed
)

func (t Type) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	}
	return "unknown"
}

// HashLen is the length of a BLAKE3-256 digest.
const HashLen = 32

// Entry is one path of a tree. The root is the entry with the empty path.
type Entry struct {
	Path    string // relative, "/"-separated; "" for the root
	Type    Type
	Mode    uint32 // permission bits only (& ^0o7777 == 0)
	MtimeNs int64  // modification time, nanoseconds since the Unix epoch
	Size    uint64 // a file's length; 0 otherwise
	Hash    [HashLen]byte
	Target  string // a symlink's target text; "" otherwise
}

// Manifest is one version of a tree. Entries are sorted by Path (strictly
// increasing bytewise) and Entries[0] is the root directory.
type Manifest struct {
	Entries []Entry
}

// ID is a version id: the BLAKE3-256 of a manifest's canonical encoding.
type ID [HashLen]byte

// String is the id in lower-case hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 12 hex digits, for names and logs.
func (id ID) Short() string { return id.String()[:12] }
