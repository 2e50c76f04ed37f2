package curve

import (
	"os"
	"sync"
	"unsafe"

	"golang.org/x/crypto/nacl/box"
)

// The MESSAGE boxes (the bulk of the bytes) are sealed and opened by one
// of two implementations of the same construction (crypto_box_afternm:
// XSalsa20-Poly1305 under the precomputed key, MAC then ciphertext):
//
//   - libsodium, loaded at run time with dlopen (libsodium.so.23, which
//     every system with libzmq has), when the binary is built with cgo:
//     its vectorised XSalsa20 is about 1.5 times as fast as x/crypto's
//     on amd64;
//   - golang.org/x/crypto/nacl/box otherwise, or when the environment
//     variable ZSND_NO_LIBSODIUM is set (to anything but "").
//
// Both give the same bytes (TestBackendsAgree); the handshake always uses
// x/crypto. Backend tells which one is in use.

// sealFunc appends to out the box of plain under key and nonce.
type sealFunc func(out, plain []byte, nonce *[24]byte, key *[32]byte) []byte

// openFunc appends to out the plaintext of sealed; false if it does not
// authenticate (nothing appended then).
type openFunc func(out, sealed []byte, nonce *[24]byte, key *[32]byte) ([]byte, bool)

var (
	sealMessage sealFunc = xSeal
	openMessage openFunc = xOpen
	backendName          = "x/crypto"
)

// xSeal and xOpen are x/crypto's, which refuse any overlap of the
// output with the input: an input in place (SealInPlace, OpenInPlace) is
// copied aside first.
func xSeal(out, plain []byte, nonce *[24]byte, key *[32]byte) []byte {
	if overlaps(out, plain) {
		plain = append([]byte(nil), plain...)
	}
	return box.SealAfterPrecomputation(out, plain, nonce, key)
}

func xOpen(out, sealed []byte, nonce *[24]byte, key *[32]byte) ([]byte, bool) {
	if overlaps(out, sealed) {
		sealed = append([]byte(nil), sealed...)
	}
	return box.OpenAfterPrecomputation(out, sealed, nonce, key)
}

// overlaps tells whether in shares memory with out's spare capacity.
func overlaps(out, in []byte) bool {
	if len(in) == 0 || cap(out) == len(out) {
		return false
	}
	spare := out[len(out):cap(out)]
	a := uintptr(unsafe.Pointer(&spare[0]))
	b := uintptr(unsafe.Pointer(&in[0]))
	return b+uintptr(len(in)) > a && a+uintptr(len(spare)) > b
}

// loadBackend picks the backend, once, at the first box sealed or opened
// (or Backend call), not at start: a process that never speaks CURVE (a
// one-shot sync without keys) does not pay for loading libsodium.
func loadBackend() {
	backendOnce.Do(func() {
		if os.Getenv("ZSND_NO_LIBSODIUM") != "" {
			return
		}
		if s, o, ok := loadSodium(); ok {
			sealMessage, openMessage, backendName = s, o, "libsodium"
		}
	})
}

var backendOnce sync.Once

// Backend names the implementation that seals and opens MESSAGE boxes:
// "libsodium" or "x/crypto".
func Backend() string {
	loadBackend()
	return backendName
}
