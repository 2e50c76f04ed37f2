package manifest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/protocol"
)

// Encoding sizes.
const (
	headerLen     = len(Magic) + 8                  // magic, count
	entryFixedLen = 1 + 4 + 8 + 8 + HashLen + 2 + 2 // type mode mtime size hash, two string lengths
	// MaxTargetLen is the longest symlink target accepted.
	MaxTargetLen = 4096
)

// Limits bound what Decode accepts, checked before anything is allocated
// in proportion to the claimed size.
type Limits struct {
	MaxEntries uint64 // most entries, the root included
	MaxBytes   uint64 // longest encoding
}

// DefaultLimits: one million entries, 256 MiB.
func DefaultLimits() Limits { return Limits{MaxEntries: 1 << 20, MaxBytes: 256 << 20} }

// ErrInvalid is wrapped by every error of Decode and Validate.
var ErrInvalid = errors.New("invalid manifest")

// EntryError names the entry that broke a rule.
type EntryError struct {
	Index int
	Path  string
	Why   string
}

func (e *EntryError) Error() string {
	p := e.Path
	if len(p) > 80 {
		p = p[:80] + "..."
	}
	return fmt.Sprintf("%v: entry %d (%q): %s", ErrInvalid, e.Index, p, e.Why)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *EntryError) Unwrap() error { return ErrInvalid }

// EncodedLen is the length of Encode's result.
func (m *Manifest) EncodedLen() int {
	n := headerLen
	for i := range m.Entries {
		n += entryFixedLen + len(m.Entries[i].Path) + len(m.Entries[i].Target)
	}
	return n
}

// Encode returns the canonical encoding. It does not validate: call
// Validate first on a manifest built by hand.
func (m *Manifest) Encode() []byte {
	b := make([]byte, 0, m.EncodedLen())
	b = m.appendHeader(b)
	for i := range m.Entries {
		b = appendEntry(b, &m.Entries[i])
	}
	return b
}

// writeChunk is how much WriteTo encodes before each write.
const writeChunk = 64 << 10

// WriteTo writes the canonical encoding to w, the same octets as Encode,
// a bounded chunk at a time: a large tree's encoding is never held whole
// in memory. It does not validate.
func (m *Manifest) WriteTo(w io.Writer) (int64, error) {
	b := make([]byte, 0, writeChunk+1024) // grows for an entry with very long names
	b = m.appendHeader(b)
	var n int64
	for i := range m.Entries {
		b = appendEntry(b, &m.Entries[i])
		if len(b) >= writeChunk {
			k, err := w.Write(b)
			n += int64(k)
			if err != nil {
				return n, err
			}
			b = b[:0]
		}
	}
	if len(b) > 0 {
		k, err := w.Write(b)
		n += int64(k)
		return n, err
	}
	return n, nil
}

func (m *Manifest) appendHeader(b []byte) []byte {
	b = append(b, Magic...)
	return binary.BigEndian.AppendUint64(b, uint64(len(m.Entries)))
}

func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, byte(e.Type))
	b = binary.BigEndian.AppendUint32(b, e.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(e.MtimeNs))
	b = binary.BigEndian.AppendUint64(b, e.Size)
	b = append(b, e.Hash[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Path)))
	b = append(b, e.Path...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Target)))
	return append(b, e.Target...)
}

// ID is the version id: the BLAKE3-256 of the canonical encoding, hashed
// as it is encoded (WriteTo), without holding the encoding.
func (m *Manifest) ID() ID {
	h := blake3.New()
	m.WriteTo(h) // a hash's Write never fails
	var id ID
	h.Sum(id[:0])
	return id
}

// IDOf is the version id of an encoded manifest.
func IDOf(encoded []byte) ID { return ID(blake3.Sum256(encoded)) }

// Decode parses and validates an encoded manifest within lim. It never
// panics and allocates at most in proportion to len(b).
func Decode(b []byte, lim Limits) (*Manifest, error) {
	if uint64(len(b)) > lim.MaxBytes {
		return nil, fmt.Errorf("%w: %d octets, more than the limit of %d", ErrInvalid, len(b), lim.MaxBytes)
	}
	if len(b) < headerLen || string(b[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: bad magic (not a ZSND manifest)", ErrInvalid)
	}
	count := binary.BigEndian.Uint64(b[len(Magic):headerLen])
	if count == 0 {
		return nil, fmt.Errorf("%w: no entries (the root is required)", ErrInvalid)
	}
	if count > lim.MaxEntries {
		return nil, fmt.Errorf("%w: %d entries, more than the limit of %d", ErrInvalid, count, lim.MaxEntries)
	}
	if count > uint64(len(b)-headerLen)/uint64(entryFixedLen) {
		return nil, fmt.Errorf("%w: %d entries claimed in %d octets", ErrInvalid, count, len(b))
	}
	m := &Manifest{Entries: make([]Entry, count)}
	// Every path is a substring of one string (one allocation, not one
	// per entry). The builder is grown to their total length first, so it
	// never moves what the substrings already point to (were the sum
	// wrong, it would move a copy and leave them valid anyway).
	var paths strings.Builder
	paths.Grow(pathBytes(b[headerLen:], count))
	p := b[headerLen:]
	for i := range m.Entries {
		if len(p) < entryFixedLen-2 {
			return nil, &EntryError{Index: i, Why: "truncated"}
		}
		e := &m.Entries[i]
		e.Type = Type(p[0])
		e.Mode = binary.BigEndian.Uint32(p[1:5])
		e.MtimeNs = int64(binary.BigEndian.Uint64(p[5:13]))
		e.Size = binary.BigEndian.Uint64(p[13:21])
		copy(e.Hash[:], p[21:21+HashLen])
		p = p[21+HashLen:]
		n, ok := stringLen(p)
		if !ok {
			return nil, &EntryError{Index: i, Why: "truncated path"}
		}
		at := paths.Len()
		paths.Write(p[2 : 2+n])
		e.Path, p = paths.String()[at:], p[2+n:]
		if e.Target, p, ok = takeString(p); !ok {
			return nil, &EntryError{Index: i, Path: e.Path, Why: "truncated symlink target"}
		}
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: %d octets after the last entry", ErrInvalid, len(p))
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// stringLen reads a string's length and checks the string is there.
func stringLen(p []byte) (int, bool) {
	if len(p) < 2 {
		return 0, false
	}
	n := int(binary.BigEndian.Uint16(p))
	return n, len(p) >= 2+n
}

// pathBytes is the total length of the paths of the count entries p
// starts with (as far as p holds them; Decode reports what is missing).
func pathBytes(p []byte, count uint64) int {
	total := 0
	for ; count > 0; count-- {
		if len(p) < 21+HashLen {
			break
		}
		p = p[21+HashLen:]
		n, ok := stringLen(p)
		if !ok {
			break
		}
		total += n
		p = p[2+n:]
		if n, ok = stringLen(p); !ok {
			break
		}
		p = p[2+n:]
	}
	return total
}

func takeString(p []byte) (string, []byte, bool) {
	n, ok := stringLen(p)
	if !ok {
		return "", p, false
	}
	return string(p[2 : 2+n]), p[2+n:], true
}

// Validate checks every rule of the encoding: the root first, paths valid
// ZSND names in strictly increasing order, each parent an earlier
// directory, types known, modes permission bits only, sizes and hashes
// zero except for files, targets only (and always) for symlinks.
func (m *Manifest) Validate() error {
	if len(m.Entries) == 0 {
		return fmt.Errorf("%w: no entries (the root is required)", ErrInvalid)
	}
	if r := &m.Entries[0]; r.Path != "" || r.Type != TypeDir {
		return &EntryError{Index: 0, Path: r.Path, Why: "the first entry must be the root directory (empty path)"}
	}
	var zero [HashLen]byte
	for i := range m.Entries {
		e := &m.Entries[i]
		bad := func(why string) error { return &EntryError{Index: i, Path: e.Path, Why: why} }
		if e.Mode&^0o7777 != 0 {
			return bad(fmt.Sprintf("mode %#o has bits beyond permissions", e.Mode))
		}
		switch e.Type {
		case TypeFile:
			if e.Target != "" {
				return bad("a file with a symlink target")
			}
		case TypeDir, TypeSymlink:
			if e.Size != 0 || e.Hash != zero {
				return bad("size or hash on a " + e.Type.String())
			}
			if e.Type == TypeDir && e.Target != "" {
				return bad("a directory with a symlink target")
			}
			if e.Type == TypeSymlink {
				if e.Target == "" || len(e.Target) > MaxTargetLen || strings.IndexByte(e.Target, 0) >= 0 {
					return bad("symlink target empty, too long or containing NUL")
				}
			}
		default:
			return bad(fmt.Sprintf("unknown type %d", e.Type))
		}
		if i == 0 {
			continue
		}
		if err := protocol.ValidName(e.Path); err != nil {
			return bad(err.Error())
		}
		if prev := m.Entries[i-1].Path; e.Path <= prev {
			return bad("out of order or duplicate (paths must be strictly increasing)")
		}
		if !m.parentListed(i) {
			return bad("its parent is not a directory listed before it")
		}
	}
	return nil
}

// parentListed tells whether entry i's parent directory is an earlier
// entry of type directory, for Validate, which has checked entries 0..i-1
// (so they are sorted) and that entry i comes after them. Usually the
// entry before is the parent, or a sibling (whose parent was checked).
func (m *Manifest) parentListed(i int) bool {
	parent := dir(m.Entries[i].Path)
	prev := m.Entries[i-1].Path
	if prev == parent {
		return m.Entries[i-1].Type == TypeDir
	}
	if i > 1 && dir(prev) == parent {
		return true
	}
	j := sort.Search(i, func(j int) bool { return m.Entries[j].Path >= parent })
	return j < i && m.Entries[j].Path == parent && m.Entries[j].Type == TypeDir
}

// dir is the parent of a path ("" for a top-level name).
func dir(p string) string {
	if j := strings.LastIndexByte(p, '/'); j >= 0 {
		return p[:j]
	}
	return ""
}

// Sort orders entries by path, for builders; Validate still decides.
func (m *Manifest) Sort() {
	sort.Slice(m.Entries, func(i, j int) bool { return m.Entries[i].Path < m.Entries[j].Path })
}

// Lookup finds the entry of a path ("" is the root).
func (m *Manifest) Lookup(path string) (*Entry, bool) {
	i := sort.Search(len(m.Entries), func(i int) bool { return m.Entries[i].Path >= path })
	if i < len(m.Entries) && m.Entries[i].Path == path {
		return &m.Entries[i], true
	}
	return nil, false
}

// Files counts the regular files and their total size.
func (m *Manifest) Files() (n int, bytes uint64) {
	for i := range m.Entries {
		if m.Entries[i].Type == TypeFile {
			n++
			bytes += m.Entries[i].Size
		}
	}
	return n, bytes
}
