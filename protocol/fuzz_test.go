package protocol

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// joinFrames packs frames as (u32 length, bytes)* so the fuzzer can shape
// both frame boundaries and contents.
func joinFrames(frames [][]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func splitFrames(b []byte) [][]byte {
	var frames [][]byte
	for len(b) >= 4 && len(frames) < 8 {
		n := int(binary.BigEndian.Uint32(b))
		b = b[4:]
		if n > len(b) {
			n = len(b)
		}
		frames = append(frames, b[:n])
		b = b[n:]
	}
	return frames
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to
// frames that decode to the same message.
func FuzzDecode(f *testing.F) {
	for _, s := range samples {
		f.Add(joinFrames(Encode(s.msg.Command().Since(), s.msg)))
		f.Add(joinFrames(Encode(Version2, s.msg)))
		f.Add(joinFrames(Encode(Version3, s.msg)))
		f.Add(joinFrames(Encode(Version4, s.msg)))
	}
	// Version 2 commands in version 1 frames.
	f.Add(joinFrames([][]byte{[]byte("ZSND\x01\x05"), {0, 0, 0, 1, 0, 0, 0}}))
	f.Add(joinFrames([][]byte{[]byte("ZSND\x01\x14"), make([]byte, 71)}))
	f.Add([]byte{})
	f.Add(joinFrames([][]byte{[]byte("ZSND\x01\x12"), make([]byte, 48), {1}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := splitFrames(data)
		m, v, err := Decode(frames)
		if err != nil {
			return
		}
		again, v2, err := Decode(Encode(v, m))
		if err != nil {
			t.Fatalf("re-encoded %#v fails: %v", m, err)
		}
		if v2 != v || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed message:\n%#v\n%#v", m, again)
		}
	})
}

// FuzzValidName: never panics; accepted names never escape their root.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "../x", "/abs", "a/b/c", "a\x00", "..", "a/..", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidName(name) != nil {
			return
		}
		if name[0] == '/' || name == ".." || len(name) > MaxNameLen {
			t.Fatalf("accepted %q", name)
		}
		for i := 0; i+1 < len(name); i++ {
			if name[i] == '.' && name[i+1] == '.' && (i == 0 || name[i-1] == '/') && (i+2 == len(name) || name[i+2] == '/') {
				t.Fatalf("accepted traversal %q", name)
			}
		}
	})
}
