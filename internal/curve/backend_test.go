package curve

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/box"
)

// TestBackendsAgree: the MESSAGE backend in use (libsodium when it loads)
// gives x/crypto's bytes, opens what x/crypto sealed and the reverse, and
// refuses a box with any one bit flipped.
func TestBackendsAgree(t *testing.T) {
	s, o, ok := loadSodium()
	if !ok {
		t.Skip("libsodium is not loadable here (no cgo, or no libsodium.so): only x/crypto is used")
	}
	if Backend() != "libsodium" {
		t.Errorf("Backend() = %q with libsodium loadable and ZSND_NO_LIBSODIUM unset", Backend())
	}
	var key [32]byte
	var nonce [24]byte
	rand.Read(key[:])
	for _, n := range []int{0, 1, 15, 16, 17, 63, 64, 65, 255, 4096, 65536 + 7, 1 << 20} {
		rand.Read(nonce[:])
		plain := make([]byte, n)
		rand.Read(plain)
		prefix := []byte("hdr")
		want := box.SealAfterPrecomputation(append([]byte(nil), prefix...), plain, &nonce, &key)
		got := s(append([]byte(nil), prefix...), plain, &nonce, &key)
		if !bytes.Equal(got, want) {
			t.Fatalf("n=%d: libsodium's box differs from x/crypto's", n)
		}
		// A buffer with spare capacity is appended to in place.
		buf := make([]byte, 3, 3+n+16)
		copy(buf, prefix)
		if got := s(buf, plain, &nonce, &key); !bytes.Equal(got, want) || &got[0] != &buf[0] {
			t.Fatalf("n=%d: seal into spare capacity: equal %v, same array %v", n, bytes.Equal(got, want), &got[0] == &buf[0])
		}
		sealed := want[3:]
		for name, open := range map[string]openFunc{"libsodium": o, "x/crypto": box.OpenAfterPrecomputation} {
			out, ok := open([]byte("x"), sealed, &nonce, &key)
			if !ok || !bytes.Equal(out, append([]byte("x"), plain...)) {
				t.Fatalf("n=%d: %s did not open the box", n, name)
			}
		}
		for _, bit := range []int{0, 8*16 - 1, 8 * len(sealed) / 2, 8*len(sealed) - 1} {
			bad := append([]byte(nil), sealed...)
			bad[bit/8] ^= 1 << (bit % 8)
			if out, ok := o([]byte("x"), bad, &nonce, &key); ok || !bytes.Equal(out, []byte("x")) {
				t.Fatalf("n=%d: libsodium opened a box with bit %d flipped (or appended to out)", n, bit)
			}
		}
	}
	if out, ok := o(nil, make([]byte, 15), &nonce, &key); ok || len(out) != 0 {
		t.Fatal("libsodium opened a box shorter than its MAC")
	}
}

// TestNoLibsodiumEnv: with ZSND_NO_LIBSODIUM set, x/crypto is used (the
// variable is read at start, so this runs the test binary again).
func TestNoLibsodiumEnv(t *testing.T) {
	if os.Getenv("ZSND_BACKEND_CHILD") != "" {
		fmt.Print("backend=" + Backend())
		return
	}
	for _, c := range []struct{ env, want string }{{"1", "x/crypto"}, {"", ""}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNoLibsodiumEnv$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ZSND_BACKEND_CHILD=1", "ZSND_NO_LIBSODIUM="+c.env)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v: %s", err, out)
		}
		want := c.want
		if want == "" {
			want = Backend() // unset: whatever this process chose
		}
		if !strings.Contains(string(out), "backend="+want) {
			t.Errorf("ZSND_NO_LIBSODIUM=%q: child says %q, want backend=%s", c.env, out, want)
		}
	}
}

// TestInPlace: SealInPlace gives Seal's bytes and OpenInPlace opens them
// (or Seal's) to the plaintext, with either backend; a flipped bit or a
// replayed nonce is refused.
func TestInPlace(t *testing.T) {
	backends := map[string][2]any{"x/crypto": {sealFunc(xSeal), openFunc(xOpen)}}
	if s, o, ok := loadSodium(); ok {
		backends["libsodium"] = [2]any{s, o}
	}
	for name, b := range backends {
		t.Run(name, func(t *testing.T) {
			loadBackend() // before the swap, which it would undo
			s0, o0 := sealMessage, openMessage
			sealMessage, openMessage = b[0].(sealFunc), b[1].(openFunc)
			defer func() { sealMessage, openMessage = s0, o0 }()
			var key [32]byte
			rand.Read(key[:])
			a := &Session{shared: key, sendPfx: prefixMsgC, recvPfx: prefixMsgS, nonce: 1}
			ref := &Session{shared: key, sendPfx: prefixMsgC, recvPfx: prefixMsgS, nonce: 1}
			rx := &Session{shared: key, sendPfx: prefixMsgS, recvPfx: prefixMsgC, nonce: 1}
			for _, n := range []int{0, 1, 255, 256, 4096, 1 << 20} {
				plain := make([]byte, 1+n)
				rand.Read(plain[1:])
				plain[0] = FlagMore
				want := ref.Seal(nil, plain)
				buf := append(make([]byte, PlainOffset), plain...)
				got := a.SealInPlace(buf)
				if !bytes.Equal(got, want) {
					t.Fatalf("n=%d: SealInPlace differs from Seal", n)
				}
				res, err := rx.OpenInPlace(got)
				if err != nil || !bytes.Equal(res, plain) || &res[0] != &got[PlainOffset] {
					t.Fatalf("n=%d: OpenInPlace: err %v, equal %v", n, err, bytes.Equal(res, plain))
				}
				if _, err := rx.OpenInPlace(append([]byte(nil), want...)); err == nil {
					t.Fatalf("n=%d: a replayed MESSAGE opened", n)
				}
			}
			next := a.SealInPlace(append(make([]byte, PlainOffset), 0, 'x'))
			next[len(next)-1] ^= 1
			if _, err := rx.OpenInPlace(next); err == nil {
				t.Fatal("a MESSAGE with a flipped bit opened in place")
			}
			if _, err := rx.OpenInPlace(make([]byte, MessageOverhead-1)); err == nil {
				t.Fatal("a MESSAGE shorter than its overhead opened")
			}
		})
	}
}
