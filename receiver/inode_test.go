package receiver_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/zsend/zsend/internal/treetest"
	"github.com/zsend/zsend/manifest"
	"github.com/zsend/zsend/protocol"
	"github.com/zsend/zsend/receiver"
)

// With Config.RecordInodes, a file written unnamed (one chunk) gets in
// Result.Inode the inode it was put in place as, exactly as lstat shows
// the name afterwards (device, inode, type and mode, size, mtime, and the
// ctime the link gave it). A file written through a partial file (larger
// than a chunk) gets none, and neither does any file without the option.
func TestRecordInodes(t *testing.T) {
	out := t.TempDir()
	if fd, err := unix.Open(out, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600); err != nil {
		t.Skipf("no O_TMPFILE here: %v", err)
	} else {
		unix.Close(fd)
	}
	s, err := treetest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	small := []byte("a small file\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 20<<10) // 320 KiB: several of treetest's 64 KiB chunks
	hs, hb := blake3.Sum256(small), blake3.Sum256(big)
	const mtime = 1_600_000_000_123_456_789
	m := &manifest.Manifest{Entries: []manifest.Entry{
		{Type: manifest.TypeDir, Mode: 0o755, MtimeNs: mtime},
		{Path: "big", Type: manifest.TypeFile, Mode: 0o640, MtimeNs: mtime, Size: uint64(len(big)), Hash: hb},
		{Path: "small", Type: manifest.TypeFile, Mode: 0o640, MtimeNs: mtime, Size: uint64(len(small)), Hash: hs},
	}}
	v := treetest.NewVersion(1, m, map[[32]byte][]byte{hs: small, hb: big})
	s.Publish("app", v)
	tag := protocol.Tag(v.ID[:16])
	reqs := func() []receiver.Request {
		es, eb := protocol.Hash(hs), protocol.Hash(hb)
		return []receiver.Request{
			{Kind: receiver.KindVGet, Name: "app/small", Version: tag, Expect: &es, Size: uint64(len(small)), CheckSize: true},
			{Kind: receiver.KindVGet, Name: "app/big", Version: tag, Expect: &eb, Size: uint64(len(big)), CheckSize: true},
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := receiver.Config{Endpoint: s.Endpoint, OutputDir: out, Timeout: 5 * time.Second, RecordInodes: true}
	res, err := receiver.FetchRequests(ctx, cfg, reqs())
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(out, "app", "small"), &st); err != nil {
		t.Fatal(err)
	}
	want := receiver.Inode{Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, Size: st.Size,
		MtimeNS: st.Mtim.Sec*1e9 + st.Mtim.Nsec, CtimeNS: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
	if got := res[0].Inode; got != want || got.Mode != unix.S_IFREG|0o640 || got.MtimeNS != mtime {
		t.Errorf("small file: Inode %+v, lstat after the fetch %+v", got, want)
	}
	if got := res[1].Inode; got != (receiver.Inode{}) {
		t.Errorf("file written through a partial file: Inode %+v, want none", got)
	}

	cfg.RecordInodes = false
	cfg.OutputDir = t.TempDir()
	res, err = receiver.FetchRequests(ctx, cfg, reqs())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Inode != (receiver.Inode{}) {
			t.Errorf("%s without RecordInodes: Inode %+v", r.Name, r.Inode)
		}
	}
}
