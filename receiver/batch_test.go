package receiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// batchTree is a version of 300 small files (more than one PACK holds),
// two empty ones and one larger than treetest's 64 KiB chunk, and the
// requests that fetch its files as the mirror does.
func batchTree(t *testing.T) (*treetest.Version, *manifest.Manifest, []receiver.Request) {
	t.Helper()
	m := &manifest.Manifest{Entries: []manifest.Entry{{Type: manifest.TypeDir, Mode: 0o755}}}
	contents := map[[32]byte][]byte{}
	add := func(path string, content []byte, mode uint32) {
		h := blake3.Sum256(content)
		contents[h] = content
		m.Entries = append(m.Entries, manifest.Entry{Type: manifest.TypeFile, Path: path, Mode: mode,
			MtimeNs: 1700000000000000000 + int64(len(m.Entries))*1e9, Size: uint64(len(content)), Hash: h})
	}
	for i := range 300 {
		add(fmt.Sprintf("f%03d", i), bytes.Repeat([]byte{byte(i)}, 100+i*7), 0o640)
	}
	add("g-empty1", nil, 0o600)
	add("g-empty2", nil, 0o644)
	add("h-big", bytes.Repeat([]byte("big"), 40000), 0o644)
	m.Sort()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	v := treetest.NewVersion(1, m, contents)
	tag := protocol.Tag(v.ID[:16])
	var reqs []receiver.Request
	for i, e := range m.Entries {
		if e.Type != manifest.TypeFile {
			continue
		}
		h := protocol.Hash(e.Hash)
		reqs = append(reqs, receiver.Request{Kind: receiver.KindVGet, Name: "app/" + e.Path, Version: tag, Expect: &h,
			Size: e.Size, CheckSize: true, Fresh: true, Batch: true, Index: uint32(i)})
	}
	return v, m, reqs
}

// checkBatchFiles compares every fetched file with the manifest: content,
// mode and mtime.
func checkBatchFiles(t *testing.T, dir string, m *manifest.Manifest) {
	t.Helper()
	for _, e := range m.Entries {
		if e.Type != manifest.TypeFile {
			continue
		}
		p := filepath.Join(dir, "app", e.Path)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(p)
		if blake3.Sum256(b) != e.Hash || uint32(fi.Mode().Perm()) != e.Mode || fi.ModTime().UnixNano() != e.MtimeNs {
			t.Fatalf("%s: hash match %v, mode %o (want %o), mtime %d (want %d)", e.Path, blake3.Sum256(b) == e.Hash,
				fi.Mode().Perm(), e.Mode, fi.ModTime().UnixNano(), e.MtimeNs)
		}
	}
}

// startBatchServer serves v as tree "app" from a treetest server that
// speaks version 3, or version 2 only with v2; closed when t ends.
func startBatchServer(t *testing.T, v *treetest.Version, v2 bool) *treetest.Server {
	t.Helper()
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	s.V2Only.Store(v2)
	s.Publish("app", v)
	return s
}

func batchFetch(t *testing.T, s *treetest.Server, reqs []receiver.Request) (string, []receiver.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := receiver.Config{Endpoint: s.Endpoint, OutputDir: dir, Timeout: 10 * time.Second, PeerTimeout: 2 * time.Second, Retries: 2}
	res, err := receiver.FetchRequests(ctx, cfg, reqs)
	return dir, res, err
}

// In a version 3 session the small files come with BGET and PACK, the
// large one with VGET; a version 2 server gets VGETs only; the files are
// the same either way.
func TestBatchFetch(t *testing.T) {
	v, m, reqs := batchTree(t)
	for _, v2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v2only=%v", v2), func(t *testing.T) {
			s := startBatchServer(t, v, v2)
			packs := atomic.Int64{}
			s.SetPackHook(func(p *protocol.Pack) { packs.Add(1) })
			dir, res, err := batchFetch(t, s, reqs)
			if err != nil {
				t.Fatal(err)
			}
			checkBatchFiles(t, dir, m)
			for i, r := range res {
				if r.Hash != *reqs[i].Expect || r.Wire != int64(reqs[i].Size) {
					t.Fatalf("%s: result %+v", reqs[i].Name, r)
				}
			}
			if v2 {
				if s.BGets.Load() != 0 || s.VGets.Load() != int64(len(reqs)) {
					t.Errorf("version 2: %d BGETs, %d VGETs", s.BGets.Load(), s.VGets.Load())
				}
				return
			}
			// 302 small files in one BGET, the big one alone; at least two
			// PACKs (256 files at most each).
			if s.BGets.Load() != 1 || s.VGets.Load() != 1 || packs.Load() < 2 {
				t.Errorf("version 3: %d BGETs, %d VGETs, %d PACKs", s.BGets.Load(), s.VGets.Load(), packs.Load())
			}
		})
	}
}

// A file of a PACK that fails its hash is asked for again with VGET; the
// others are kept.
func TestBatchCorruptFileRefetched(t *testing.T) {
	v, m, reqs := batchTree(t)
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Publish("app", v)
	var once atomic.Bool
	s.SetPackHook(func(p *protocol.Pack) {
		if len(p.Data) > 0 && once.CompareAndSwap(false, true) {
			p.Data = bytes.Clone(p.Data)
			p.Data[0] ^= 0xff // the first file of the first PACK
		}
	})
	dir, _, err := batchFetch(t, s, reqs)
	if err != nil {
		t.Fatal(err)
	}
	checkBatchFiles(t, dir, m)
	if s.BGets.Load() != 1 || s.VGets.Load() != 2 {
		t.Errorf("%d BGETs, %d VGETs; want 1 and 2 (the big file and the corrupted one)", s.BGets.Load(), s.VGets.Load())
	}
}

// A server that fails a BGET (here: it cannot map indexes) gets each of
// its files asked for with VGET.
func TestBatchErrorFallsBackToVGet(t *testing.T) {
	v, m, reqs := batchTree(t)
	v.Paths = nil
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Publish("app", v)
	dir, _, err := batchFetch(t, s, reqs)
	if err != nil {
		t.Fatal(err)
	}
	checkBatchFiles(t, dir, m)
	if s.BGets.Load() != 1 || s.VGets.Load() != int64(len(reqs)) {
		t.Errorf("%d BGETs, %d VGETs", s.BGets.Load(), s.VGets.Load())
	}
}

// A PACK that lies about which files it carries ends the session as a
// protocol violation; past the retry budget the fetch fails, clearly, and
// nothing of the lie is written.
func TestBatchLyingPack(t *testing.T) {
	cases := map[string]func(p *protocol.Pack){
		"other index": func(p *protocol.Pack) { p.Files[0].Index++ },
		"extra file": func(p *protocol.Pack) {
			p.Files = append(p.Files, protocol.PackFile{Index: 1, Size: 0, Mode: 0o644})
		},
		"other size": func(p *protocol.Pack) {
			p.Files[0].Size++
			p.Data = append(bytes.Clone(p.Data), 'x')
		},
		"other request": func(p *protocol.Pack) { p.Request += 100 },
	}
	for name, lie := range cases {
		t.Run(name, func(t *testing.T) {
			v, _, reqs := batchTree(t)
			s, err := treetest.Start()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.Publish("app", v)
			s.SetPackHook(lie)
			start := time.Now()
			dir, _, err := batchFetch(t, s, reqs[:10])
			if !errors.Is(err, receiver.ErrProtocol) {
				t.Fatalf("fetch: %v, want a protocol error", err)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v", d)
			}
			// Every lie is seen before any file of its PACK is written.
			ents, _ := os.ReadDir(filepath.Join(dir, "app"))
			for _, e := range ents {
				t.Errorf("%s written", e.Name())
			}
		})
	}
}

// Private requests (a directory only the caller reads: the mirror's
// staging tree) are written under their own names at once, over BGET and
// over VGET alike. Nothing unverified stays under a name: a file that
// fails its check is removed, and the rest of the fetch goes on. A name
// already taken (here a planted symlink) is not written through: the file
// is then made unnamed and linked over it, as without Private.
func TestPrivateWritesInPlace(t *testing.T) {
	for _, v2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v2only=%v", v2), func(t *testing.T) {
			v, m, reqs := batchTree(t)
			s := startBatchServer(t, v, v2)
			reqs = slices.Clone(reqs)
			for i := range reqs {
				reqs[i].Private = true
			}
			wrong := protocol.Hash{1} // f007 can never match
			reqs[7].Expect = &wrong
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			dir := t.TempDir()
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, filepath.Join(dir, "app", "f003")); err != nil {
				t.Fatal(err)
			}
			cfg := receiver.Config{Endpoint: s.Endpoint, OutputDir: dir, Timeout: 10 * time.Second, PeerTimeout: 2 * time.Second, Retries: 1}
			res, err := receiver.FetchRequests(ctx, cfg, reqs)
			if !errors.Is(err, receiver.ErrVerify) {
				t.Fatalf("fetch: %v, want ErrVerify for f007", err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "keep" {
				t.Errorf("written through the planted symlink: victim holds %q", b)
			}
			if _, err := os.Lstat(filepath.Join(dir, "app", "f007")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("f007, which failed its check, is there: %v", err)
			}
			ents, _ := os.ReadDir(filepath.Join(dir, "app"))
			if len(ents) != len(reqs)-1 {
				t.Errorf("%d entries in the directory, want %d", len(ents), len(reqs)-1)
			}
			for i, e := range m.Entries {
				if e.Type != manifest.TypeFile || e.Path == "f007" {
					continue
				}
				p := filepath.Join(dir, "app", e.Path)
				b, err := os.ReadFile(p)
				fi, _ := os.Lstat(p)
				if err != nil || blake3.Sum256(b) != e.Hash || !fi.Mode().IsRegular() || uint32(fi.Mode().Perm()) != e.Mode || fi.ModTime().UnixNano() != e.MtimeNs {
					t.Fatalf("%s (entry %d): %v, mode %v", e.Path, i, err, fi.Mode())
				}
			}
			for i, r := range res {
				if (r.Err != nil) != (i == 7) {
					t.Errorf("%s: %v", reqs[i].Name, r.Err)
				}
			}
		})
	}
}
