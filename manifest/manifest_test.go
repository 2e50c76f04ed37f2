package manifest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func sample() *Manifest {
	h := func(b byte) (x [HashLen]byte) {
		for i := range x {
			x[i] = b
		}
		return
	}
	return &Manifest{Entries: []Entry{
		{Path: "", Type: TypeDir, Mode: 0o755, MtimeNs: 1},
		{Path: "a b", Type: TypeFile, Mode: 0o600, MtimeNs: 2, Size: 3, Hash: h(1)},
		{Path: "conf", Type: TypeDir, Mode: 0o700, MtimeNs: 3},
		{Path: "conf/app.conf", Type: TypeFile, Mode: 0o644, MtimeNs: 4, Size: 0, Hash: h(2)},
		{Path: "conf/link", Type: TypeSymlink, Mode: 0o777, MtimeNs: 5, Target: "../a b"},
		{Path: "conf/ü", Type: TypeDir, Mode: 0o755, MtimeNs: 6},
	}}
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	b := m.Encode()
	if len(b) != m.EncodedLen() {
		t.Fatalf("EncodedLen %d, encoding %d", m.EncodedLen(), len(b))
	}
	got, err := Decode(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip differs:\n%+v\n%+v", got, m)
	}
	if !bytes.Equal(got.Encode(), b) || got.ID() != m.ID() || IDOf(b) != m.ID() {
		t.Fatal("re-encoding or id differs")
	}
}

// TestIDPinned pins the canonical encoding: a change here is a wire change
// (every published version id changes) and needs a new magic.
func TestIDPinned(t *testing.T) {
	const pinnedID = "f99fe5458aeaf1980315d61074566e2d67c77d448ffa482fdcb4d9a933bd0456"
	if id := sample().ID().String(); id != pinnedID {
		t.Fatalf("id of the sample manifest is %s, pinned %s", id, pinnedID)
	}
}

func TestIDChangesWithEveryField(t *testing.T) {
	base := sample().ID()
	muts := []func(*Entry){
		func(e *Entry) { e.Mode ^= 0o100 },
		func(e *Entry) { e.MtimeNs++ },
		func(e *Entry) { e.Size++ },
		func(e *Entry) { e.Hash[0] ^= 1 },
		func(e *Entry) { e.Path = "a c" },
	}
	for i, mut := range muts {
		m := sample()
		mut(&m.Entries[1])
		if m.ID() == base {
			t.Errorf("mutation %d left the id unchanged", i)
		}
	}
	m := sample()
	m.Entries[4].Target = "x"
	if m.ID() == base {
		t.Error("target change left the id unchanged")
	}
}

func TestInvalid(t *testing.T) {
	cases := map[string]func(m *Manifest){
		"no root":             func(m *Manifest) { m.Entries = m.Entries[1:] },
		"root not dir":        func(m *Manifest) { m.Entries[0].Type = TypeFile },
		"dotdot":              func(m *Manifest) { m.Entries[1].Path = "../x" },
		"absolute":            func(m *Manifest) { m.Entries[1].Path = "/etc" },
		"nul":                 func(m *Manifest) { m.Entries[1].Path = "a\x00" },
		"duplicate":           func(m *Manifest) { m.Entries[3].Path = "conf" },
		"unsorted":            func(m *Manifest) { m.Entries[1], m.Entries[2] = m.Entries[2], m.Entries[1] },
		"file then child":     func(m *Manifest) { m.Entries[2].Type = TypeFile },
		"child under symlink": func(m *Manifest) { m.Entries[5].Path = "conf/link/x" },
		"missing parent":      func(m *Manifest) { m.Entries[3].Path = "cong/app.conf" },
		"setuid type bits":    func(m *Manifest) { m.Entries[1].Mode = 0o100644 },
		"unknown type":        func(m *Manifest) { m.Entries[1].Type = 9 },
		"dir with size":       func(m *Manifest) { m.Entries[2].Size = 1 },
		"empty target":        func(m *Manifest) { m.Entries[4].Target = "" },
		"target nul":          func(m *Manifest) { m.Entries[4].Target = "a\x00b" },
		"file with target":    func(m *Manifest) { m.Entries[1].Target = "x" },
		"dot":                 func(m *Manifest) { m.Entries[1].Path = "." },
		"empty component":     func(m *Manifest) { m.Entries[3].Path = "conf//a" },
	}
	for name, mut := range cases {
		t.Run(name, func(t *testing.T) {
			m := sample()
			mut(m)
			if err := m.Validate(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate: %v, want ErrInvalid", err)
			}
			if _, err := Decode(m.Encode(), DefaultLimits()); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode: %v, want ErrInvalid", err)
			}
		})
	}
}

func TestDecodeLimits(t *testing.T) {
	b := sample().Encode()
	if _, err := Decode(b, Limits{MaxEntries: 5, MaxBytes: 1 << 20}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("6 entries under a limit of 5: %v", err)
	}
	if _, err := Decode(b, Limits{MaxEntries: 100, MaxBytes: uint64(len(b) - 1)}); err == nil {
		t.Fatal("encoding over MaxBytes accepted")
	}
	// A header claiming 10^7 entries in a few octets is refused before
	// anything is allocated for them.
	huge := append([]byte(Magic), make([]byte, 8)...)
	binary.BigEndian.PutUint64(huge[len(Magic):], 10_000_000)
	huge = append(huge, b[headerLen:]...)
	if _, err := Decode(huge, Limits{MaxEntries: 1 << 30, MaxBytes: 1 << 30}); err == nil {
		t.Fatal("10^7 claimed entries accepted")
	}
	for n := 0; n < len(b); n++ {
		if _, err := Decode(b[:n], DefaultLimits()); err == nil {
			t.Fatalf("truncated at %d accepted", n)
		}
	}
	if _, err := Decode(append(b, 0), DefaultLimits()); err == nil {
		t.Fatal("trailing octet accepted")
	}
}

func TestLookupAndDiff(t *testing.T) {
	old := sample()
	if e, ok := old.Lookup("conf/app.conf"); !ok || e.Type != TypeFile {
		t.Fatal("lookup of a file failed")
	}
	if _, ok := old.Lookup("conf/none"); ok {
		t.Fatal("lookup of a missing path succeeded")
	}
	nw := sample()
	nw.Entries[1].MtimeNs = 99                             // same content, new mtime
	nw.Entries[3].Hash[0] = 7                              // changed content
	nw.Entries = append(nw.Entries[:4], nw.Entries[5:]...) // conf/link removed
	nw.Entries = append(nw.Entries, Entry{Path: "z", Type: TypeDir, Mode: 0o755})
	d := Diff(old, nw)
	want := Delta{Added: []string{"z"}, Removed: []string{"conf/link"}, Changed: []string{"a b", "conf/app.conf"}, SameContent: []string{"a b"}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("diff = %+v, want %+v", d, want)
	}
	if d := Diff(nil, old); len(d.Added) != len(old.Entries) {
		t.Fatalf("diff from nothing: %+v", d)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample().Encode())
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b, Limits{MaxEntries: 1 << 16, MaxBytes: 1 << 20})
		if err != nil {
			return
		}
		if !bytes.Equal(m.Encode(), b) {
			t.Fatal("decode -> encode is not the identity")
		}
	})
}

// A parent is found wherever it is among the earlier entries: just
// before, before a sibling, or before names that sort between it and its
// children ("a", "a-b", "a/c"); it must be a directory.
func TestParentAnywhereBefore(t *testing.T) {
	dir := Entry{Type: TypeDir, Mode: 0o755}
	file := Entry{Type: TypeFile, Mode: 0o644}
	at := func(e Entry, p string) Entry { e.Path = p; return e }
	ok := &Manifest{Entries: []Entry{at(dir, ""), at(dir, "a"), at(file, "a-b"), at(dir, "a.d"), at(file, "a.d/x"),
		at(file, "a/c"), at(dir, "a/d"), at(file, "a/d/e"), at(file, "a/f"), at(file, "b")}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid manifest: %v", err)
	}
	got, err := Decode(ok.Encode(), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	for i := range ok.Entries {
		if got.Entries[i] != ok.Entries[i] {
			t.Errorf("entry %d decoded as %+v", i, got.Entries[i])
		}
	}
	for _, bad := range []*Manifest{
		{Entries: []Entry{at(dir, ""), at(file, "a"), at(file, "a-b"), at(file, "a/c")}},
		{Entries: []Entry{at(dir, ""), at(dir, "a"), at(file, "a-b"), at(file, "a/c"), at(file, "b/c")}},
		{Entries: []Entry{at(dir, ""), at(dir, "a"), at(file, "a/c"), at(file, "a/c/d")}},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: Validate %v, want ErrInvalid", bad.Entries, err)
		}
	}
}

// TestWriteToEqualsEncode: the streamed encoding (which publishing writes
// and hashes) is octet for octet Encode's, so the version id is the same,
// for a manifest with every entry type, one of many entries (several
// chunks, entries straddling a chunk's end), and one with a long name.
func TestWriteToEqualsEncode(t *testing.T) {
	big := &Manifest{Entries: []Entry{{Path: "", Type: TypeDir, Mode: 0o755}}}
	for i := 0; i < 5000; i++ {
		e := Entry{Path: fmt.Sprintf("f%05d", i), Type: TypeFile, Mode: 0o644, MtimeNs: int64(i), Size: uint64(i)}
		e.Hash[0], e.Hash[31] = byte(i), byte(i>>8)
		if i%7 == 0 {
			e = Entry{Path: e.Path, Type: TypeSymlink, Mode: 0o777, Target: strings.Repeat("t", i%300+1)}
		}
		big.Entries = append(big.Entries, e)
	}
	long := sample()
	long.Entries = append(long.Entries, Entry{Path: "conf/ü/" + strings.Repeat("n", 200), Type: TypeSymlink, Mode: 0o777, Target: strings.Repeat("x", MaxTargetLen)})
	for name, m := range map[string]*Manifest{"sample": sample(), "big": big, "long": long, "root only": {Entries: sample().Entries[:1]}} {
		if err := m.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := m.Encode()
		var buf bytes.Buffer
		n, err := m.WriteTo(&buf)
		if err != nil || n != int64(len(want)) || !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("%s: WriteTo wrote %d octets (%v), differing from Encode's %d", name, n, err, len(want))
		}
		if m.ID() != IDOf(want) {
			t.Fatalf("%s: ID %s, IDOf(Encode) %s", name, m.ID(), IDOf(want))
		}
	}
	if big.EncodedLen() <= 2*writeChunk {
		t.Fatalf("the big manifest (%d octets) does not span several chunks", big.EncodedLen())
	}
}

type failWriter struct{ left int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		n := w.left
		w.left = 0
		return n, errors.New("disk full")
	}
	w.left -= len(p)
	return len(p), nil
}

// TestWriteToError: a failing writer's error comes back, with the octets
// it took.
func TestWriteToError(t *testing.T) {
	m := sample()
	n, err := m.WriteTo(&failWriter{left: 10})
	if err == nil || n != 10 {
		t.Fatalf("WriteTo into a failing writer: %d, %v", n, err)
	}
}
