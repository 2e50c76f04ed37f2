//go:build cgo && linux

package curve

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>

typedef int (*zs_box_fn)(unsigned char *, const unsigned char *, unsigned long long,
                         const unsigned char *, const unsigned char *);

static zs_box_fn zs_seal_fn, zs_open_fn;

// zs_load opens libsodium and resolves the two functions; 0 on success.
static int zs_load(void) {
	static const char *names[] = {"libsodium.so.23", "libsodium.so.26", "libsodium.so", NULL};
	void *h = NULL;
	for (int i = 0; names[i] != NULL && h == NULL; i++) {
		h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	}
	if (h == NULL) {
		return -1;
	}
	int (*init)(void) = (int (*)(void))dlsym(h, "sodium_init");
	zs_box_fn s = (zs_box_fn)dlsym(h, "crypto_box_easy_afternm");
	zs_box_fn o = (zs_box_fn)dlsym(h, "crypto_box_open_easy_afternm");
	if (init == NULL || s == NULL || o == NULL || init() < 0) {
		return -1;
	}
	zs_seal_fn = s;
	zs_open_fn = o;
	return 0;
}

static int zs_seal(unsigned char *c, const unsigned char *m, size_t mlen,
                   const unsigned char *n, const unsigned char *k) {
	return zs_seal_fn(c, m, mlen, n, k);
}

static int zs_open(unsigned char *m, const unsigned char *c, size_t clen,
                   const unsigned char *n, const unsigned char *k) {
	return zs_open_fn(m, c, clen, n, k);
}
*/
import "C"

import (
	"slices"
	"unsafe"

	"golang.org/x/crypto/nacl/box"
)

// loadSodium loads libsodium; ok is false when it is not there.
func loadSodium() (sealFunc, openFunc, bool) {
	if C.zs_load() != 0 {
		return nil, nil, false
	}
	return sodiumSeal, sodiumOpen, true
}

// ptr is the address of b's first byte, or of a zero byte when b is
// empty (libsodium reads no byte of an empty message, but takes a
// pointer).
func ptr(b []byte) *C.uchar {
	if len(b) == 0 {
		var z [1]byte
		return (*C.uchar)(unsafe.Pointer(&z[0]))
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

func sodiumSeal(out, plain []byte, nonce *[24]byte, key *[32]byte) []byte {
	ret := slices.Grow(out, len(plain)+box.Overhead)[:len(out)+len(plain)+box.Overhead]
	dst := ret[len(out):]
	if C.zs_seal(ptr(dst), ptr(plain), C.size_t(len(plain)),
		(*C.uchar)(unsafe.Pointer(&nonce[0])), (*C.uchar)(unsafe.Pointer(&key[0]))) != 0 {
		panic("curve: libsodium refused to seal")
	}
	return ret
}

func sodiumOpen(out, sealed []byte, nonce *[24]byte, key *[32]byte) ([]byte, bool) {
	if len(sealed) < box.Overhead {
		return out, false
	}
	ret := slices.Grow(out, len(sealed)-box.Overhead)[:len(out)+len(sealed)-box.Overhead]
	dst := ret[len(out):]
	if C.zs_open(ptr(dst), ptr(sealed), C.size_t(len(sealed)),
		(*C.uchar)(unsafe.Pointer(&nonce[0])), (*C.uchar)(unsafe.Pointer(&key[0]))) != 0 {
		clear(dst)
		return out, false
	}
	return ret, true
}
