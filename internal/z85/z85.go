// Package z85 implements the Z85 encoding of ZeroMQ RFC 32
// (rfc.zeromq.org/spec:32): four bytes become five printable characters,
// so a 32-byte CURVE key is written as 40 characters.
package z85

import (
	"errors"
	"fmt"
)

// ErrLength is returned when the input length is not a multiple of 4
// (Encode) or of 5 (Decode).
var ErrLength = errors.New("z85: length is not a multiple of the block size")

const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

// decodeMap maps a character to its digit plus one; 0 marks a character
// outside the alphabet.
var decodeMap = func() (m [256]byte) {
	for i := 0; i < len(alphabet); i++ {
		m[alphabet[i]] = byte(i + 1)
	}
	return m
}()

// Encode returns the Z85 text of src, whose length must be a multiple of 4.
func Encode(src []byte) (string, error) {
	if len(src)%4 != 0 {
		return "", fmt.Errorf("encoding %d bytes: %w", len(src), ErrLength)
	}
	dst := make([]byte, len(src)/4*5)
	for i, o := 0, 0; i < len(src); i, o = i+4, o+5 {
		v := uint32(src[i])<<24 | uint32(src[i+1])<<16 | uint32(src[i+2])<<8 | uint32(src[i+3])
		for k := 4; k >= 0; k-- {
			dst[o+k] = alphabet[v%85]
			v /= 85
		}
	}
	return string(dst), nil
}

// Decode returns the bytes of the Z85 text s, whose length must be a
// multiple of 5. Characters outside the alphabet and blocks whose value
// exceeds 2^32-1 are errors.
func Decode(s string) ([]byte, error) {
	if len(s)%5 != 0 {
		return nil, fmt.Errorf("decoding %d characters: %w", len(s), ErrLength)
	}
	dst := make([]byte, len(s)/5*4)
	for i, o := 0, 0; i < len(s); i, o = i+5, o+4 {
		var v uint64
		for k := 0; k < 5; k++ {
			d := decodeMap[s[i+k]]
			if d == 0 {
				return nil, fmt.Errorf("z85: invalid character %q at offset %d", s[i+k], i+k)
			}
			v = v*85 + uint64(d-1)
		}
		if v > 0xffffffff {
			return nil, fmt.Errorf("z85: block at offset %d overflows 32 bits", i)
		}
		dst[o], dst[o+1], dst[o+2], dst[o+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	return dst, nil
}
