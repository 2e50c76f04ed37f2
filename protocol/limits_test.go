package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Each limit of the wire format is accepted at its exact value and refused
// one past it, so that an off-by-one in a bound is noticed (see
// docs/MUTATIONS.md).
func TestLimitsAreInclusive(t *testing.T) {
	decodeAs := func(m Message) error {
		_, _, err := Decode(Encode(m.Command().Since(), m))
		return err
	}
	fwd := func(parent, node string) *Forward {
		return &Forward{Report: Report{Request: 1, State: StateSwitched, Node: node, Tree: "t"}, Parent: parent}
	}
	for _, c := range []struct {
		name string
		m    Message
		ok   bool
	}{
		{"WELCOME chunk = min", &Welcome{Version: 1, ChunkSize: MinChunkSize, PeerID: "s"}, true},
		{"WELCOME chunk = max", &Welcome{Version: 1, ChunkSize: MaxChunkSize, PeerID: "s"}, true},
		{"WELCOME chunk = min-1", &Welcome{Version: 1, ChunkSize: MinChunkSize - 1, PeerID: "s"}, false},
		{"WELCOME chunk = max+1", &Welcome{Version: 1, ChunkSize: MaxChunkSize + 1, PeerID: "s"}, false},
		{"CHUNK of max octets", &Chunk{Request: 1, Data: make([]byte, MaxChunkSize)}, true},
		{"CHUNK of max+1 octets", &Chunk{Request: 1, Data: make([]byte, MaxChunkSize+1)}, false},
		{"ERROR text = max", &Error{Code: CodeNotFound, Message: strings.Repeat("x", MaxTextLen)}, true},
		{"GET name = max", &Get{Request: 1, Name: strings.Repeat("x", MaxNameLen)}, true},
		{"FORWARD parent = max", fwd(strings.Repeat("p", MaxNodeLen), "n"), true},
		{"FORWARD parent = max+1", fwd(strings.Repeat("p", MaxNodeLen+1), "n"), false},
		{"FORWARD node = max", fwd("r", strings.Repeat("n", MaxNodeLen)), true},
		{"FORWARD node = max+1", fwd("r", strings.Repeat("n", MaxNodeLen+1)), false},
		{"FLEET parent = max", &Fleet{Request: 1, State: StateLost, Node: "n", Tree: "t", HasParent: true, Parent: strings.Repeat("p", MaxNodeLen)}, true},
		{"FLEET parent = max+1", &Fleet{Request: 1, State: StateLost, Node: "n", Tree: "t", HasParent: true, Parent: strings.Repeat("p", MaxNodeLen+1)}, false},
	} {
		if err := decodeAs(c.m); (err == nil) != c.ok {
			t.Errorf("%s: decode error %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func TestLongestStringNotTruncated(t *testing.T) {
	s := strings.Repeat("x", 0xFFFF)
	b := appendString(nil, s)
	if len(b) != 2+0xFFFF || !bytes.Equal(b[2:], []byte(s)) {
		t.Fatalf("a string of 65535 octets encoded as %d octets", len(b))
	}
	if b := appendString(nil, s+"y"); len(b) != 2+0xFFFF {
		t.Fatalf("a string of 65536 octets encoded as %d octets, want truncated to 65535", len(b))
	}
}

// HELLO is always encoded at version 1, whatever the session's version;
// every other command at the version asked for.
func TestHelloAlwaysVersion1(t *testing.T) {
	if f := Encode(2, &Hello{MinVersion: 1, MaxVersion: 2, MaxChunk: MinChunkSize, PeerID: "c"}); f[0][4] != Version1 {
		t.Fatalf("HELLO encoded at version %d", f[0][4])
	}
	if f := Encode(2, &Ping{Token: 1}); f[0][4] != 2 {
		t.Fatalf("PING encoded at version %d, want 2", f[0][4])
	}
}

// A frame 0 that starts with the signature but has the wrong length is a
// malformed ZSND message, not a foreign protocol, down to the bare
// signature.
func TestShortCommandFrameIsMalformed(t *testing.T) {
	for _, f0 := range [][]byte{[]byte("ZSND"), []byte("ZSND\x01"), []byte("ZSND\x01\x02\x03")} {
		_, _, err := Decode([][]byte{f0, {}})
		if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrSignature) {
			t.Errorf("frame 0 %q: %v, want ErrMalformed", f0, err)
		}
	}
	if _, _, err := Decode([][]byte{[]byte("ZSN"), {}}); !errors.Is(err, ErrSignature) {
		t.Errorf("frame 0 \"ZSN\": %v, want ErrSignature", err)
	}
}
