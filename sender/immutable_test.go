package sender

import (
	"os"
	"path/filepath"
	"testing"
)

// A store blob unlinked while it is served (its version dropped) is still
// the same content: sameVersion must not call it changed, while a live
// file whose ctime moves is.
func TestUnlinkedBlobIsSameVersion(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "blob")
	os.WriteFile(p, []byte("published bytes"), 0o400)
	f, key, err := openRegular(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	live := key
	key.ctimeNS = immutableCtime
	// Link and unlink until the ctime has moved (the clock's granularity
	// may hide the first change), then drop the last name.
	for i := 0; i < 100000; i++ {
		now, _ := statKey(f)
		if now.ctimeNS != live.ctimeNS {
			break
		}
		os.Link(p, p+".2")
		os.Remove(p + ".2")
	}
	os.Remove(p)
	if err := sameVersion(f, key); err != nil {
		t.Fatalf("unlinked blob: %v", err)
	}
	if err := sameVersion(f, live); err != errChanged {
		t.Fatalf("a live file whose ctime moved: %v", err)
	}
}
