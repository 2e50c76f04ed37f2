package z85

import (
	"bytes"
	"errors"
	"testing"
)

// The test vector of RFC 32.
func TestRFCVector(t *testing.T) {
	raw := []byte{0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B}
	s, err := Encode(raw)
	if err != nil || s != "HelloWorld" {
		t.Fatalf("Encode = %q, %v; want HelloWorld", s, err)
	}
	b, err := Decode("HelloWorld")
	if err != nil || !bytes.Equal(b, raw) {
		t.Fatalf("Decode = %x, %v; want %x", b, err, raw)
	}
}

// The CURVE test keys of libzmq's zmq_curve(7) manual page round-trip.
func TestCurveTestKeys(t *testing.T) {
	for _, k := range []string{
		"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID",
		"D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs",
		"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
		"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6",
	} {
		b, err := Decode(k)
		if err != nil || len(b) != 32 {
			t.Fatalf("Decode(%q) = %d bytes, %v", k, len(b), err)
		}
		if s, _ := Encode(b); s != k {
			t.Fatalf("round trip of %q gave %q", k, s)
		}
	}
}

func TestErrors(t *testing.T) {
	if _, err := Encode([]byte{1, 2, 3}); !errors.Is(err, ErrLength) {
		t.Errorf("Encode(3 bytes) = %v, want ErrLength", err)
	}
	if _, err := Decode("abcd"); !errors.Is(err, ErrLength) {
		t.Errorf("Decode(4 chars) = %v, want ErrLength", err)
	}
	if _, err := Decode("Hello World"[:5] + "\"orld"); err == nil {
		t.Error("Decode accepted a character outside the alphabet")
	}
	if _, err := Decode("#####"); err == nil {
		t.Error("Decode accepted a block above 2^32-1")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("HelloWorld")
	f.Add("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7")
	f.Add("#####")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := Decode(s)
		if err != nil {
			return
		}
		if e, err := Encode(b); err != nil || e != s {
			t.Fatalf("Decode(%q) then Encode = %q, %v", s, e, err)
		}
	})
}
