package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the encoder")

func tagOf(b byte) (t Tag) {
	for i := range t {
		t[i] = b + byte(i)
	}
	return
}

func hashOf(b byte) (h Hash) {
	for i := range h {
		h[i] = b ^ byte(i)
	}
	return
}

// samples holds one message of every command; the golden files pin their bytes.
var samples = []struct {
	name string
	msg  Message
	v    uint8 // version of the golden frames; 0 = msg.Command().Since()
}{
	{"hello", &Hello{MinVersion: 1, MaxVersion: 1, MaxChunk: 4 << 20, HeartbeatMS: 2000, PeerID: "node-7"}, 0},
	{"welcome", &Welcome{Version: 1, ChunkSize: 1 << 20, HeartbeatMS: 2000, MaxRequests: 1024, PeerID: "zsend"}, 0},
	{"get", &Get{Request: 1, Offset: 0, Name: "config.tar"}, 0},
	{"get_resume", &Get{Request: 7, Offset: 3 << 20, Tag: tagOf(0xA0), Name: "etc/app.conf"}, 0},
	{"credit", &Credit{Limit: 8 << 20}, 0},
	{"cancel", &Cancel{Request: 7}, 0},
	{"file", &File{Request: 1, Size: 1234567, Mode: 0644, MtimeNS: 1700000000123456789, Offset: 0, Tag: tagOf(1), Name: "config.tar"}, 0},
	{"chunk", &Chunk{Request: 1, Offset: 1 << 20, Hash: hashOf(0x5A), Data: []byte("hello, world")}, 0},
	{"end", &End{Request: 1, Size: 1234567, Hash: hashOf(0x33)}, 0},
	{"ping", &Ping{Token: 0x0102030405060708}, 0},
	{"pong", &Pong{Token: 0x0102030405060708}, 0},
	{"bye", &Bye{Code: CodeUnavailable, RetryAfterMS: 500, Reason: "shutting down"}, 0},
	{"error", &Error{Request: 3, Code: CodeNotFound, Message: "no such file: nope.txt"}, 0},
	// Version 2: trees and versions.
	{"list", &List{Request: 1, Flags: 0, Tree: "etc"}, 0},
	{"list_all", &List{Request: 2, Flags: 0, Tree: ""}, 0},
	{"list_subscribe", &List{Request: 3, Flags: ListSubscribe, Tree: "etc"}, 0},
	{"mget", &MGet{Request: 4, Offset: 0, Tag: tagOf(0xC0), Name: "etc"}, 0},
	{"mget_latest", &MGet{Request: 5, Offset: 0, Name: "etc"}, 0},
	{"vget", &VGet{Request: 6, Offset: 0, Tag: tagOf(0xC0), Name: "etc/app/main.conf"}, 0},
	{"tree", &Tree{Request: 1, Seq: 42, Entries: 3, Bytes: 1234, ManifestSize: 289, Version: hashOf(0xC0), Name: "etc"}, 0},
	{"error_gone", &Error{Request: 4, Code: CodeGone, Message: "etc@c0c1c2c3c4c5 is no longer kept"}, Version2},
	{"tree_barrier", &Tree{Request: 3, Flags: TreeBarrier, Seq: 43, Entries: 3, Bytes: 1234, ManifestSize: 289, Version: hashOf(0xC1), Name: "etc"}, 0},
	// Version 2: follow mode and the fleet table.
	{"report", &Report{Request: 9, State: StateSwitched, Seq: 42, SyncMS: 120, Version: hashOf(0xC0), Node: "web7", Tree: "etc",
		Hook: HookResult{Name: "exec", Exit: 0, DurationMS: 35, Output: "reloaded\n"}}, 0},
	{"report_failed", &Report{Request: 10, State: StateFailed, Seq: 41, Version: hashOf(0xBF), Node: "web9", Tree: "etc",
		Error: "check failed", Hook: HookResult{Name: "check", Exit: 1, DurationMS: 12, Output: "nginx: bad config"}}, 0},
	{"report_syncing", &Report{Request: 11, State: StateSyncing, Node: "web1", Tree: "etc"}, 0},
	{"status", &Status{Request: 12, Tree: ""}, 0},
	{"fleet", &Fleet{Request: 12, State: StateLost, Seq: 40, Behind: 2, AgeMS: 45000, SyncMS: 80, Version: hashOf(0xBE), Node: "web3", Tree: "etc"}, 0},
	{"switch", &Switch{Request: 3, Seq: 43, Version: hashOf(0xC1), Tree: "etc"}, 0},
	// Version 2: relays.
	{"forward", &Forward{Report: Report{Request: 13, State: StateStaged, Seq: 43, SyncMS: 250, Version: hashOf(0xC1), Node: "web7", Tree: "etc",
		Hook: HookResult{Name: "check", Exit: 0, DurationMS: 8}}, Parent: "relay1"}, 0},
	{"status_parents", &Status{Request: 14, Flags: StatusParents, Tree: ""}, 0},
	{"access", &Access{Request: 15, Key: [32]byte(hashOf(0xA0))}, 0},
	{"fleet_parent", &Fleet{Request: 14, State: StateSwitched, Seq: 43, SyncMS: 250, Version: hashOf(0xC1), Node: "web7", Tree: "etc",
		HasParent: true, Parent: "relay1"}, 0},
	{"fleet_direct", &Fleet{Request: 14, State: StateSwitched, Seq: 43, AgeMS: 1200, Version: hashOf(0xC1), Node: "relay1", Tree: "etc",
		HasParent: true}, 0},
	// Version 3: small files in few messages.
	{"bget", &BGet{Request: 16, Tag: tagOf(0xC0), Tree: "etc", Index: []uint32{2, 3, 7}}, 0},
	{"pack", &Pack{Request: 16, Files: []PackFile{{Index: 2, Size: 5, Mode: 0644, MtimeNS: 1700000000123456789},
		{Index: 3, Size: 0, Mode: 0600, MtimeNS: 1700000000000000000}, {Index: 7, Size: 3, Mode: 0755, MtimeNS: 1700000001000000000}},
		Data: []byte("helloabc")}, 0},
	{"pack_empty", &Pack{Request: 17, Files: []PackFile{{Index: 9, Size: 0, Mode: 0644, MtimeNS: 1700000000000000000}}}, 0},
	// Version 4: the barrier's switch at a set time.
	{"switchat", &SwitchAt{Request: 3, Seq: 43, AtNS: 1700000000250000000, InMS: 250, Version: hashOf(0xC1), Tree: "etc"}, 0},
}

func TestRoundTripEveryCommand(t *testing.T) {
	seen := map[Command]bool{}
	for _, s := range samples {
		want := s.msg.Command().Since()
		frames := Encode(want, s.msg)
		got, v, err := Decode(frames)
		if err != nil {
			t.Fatalf("%s: decode: %v", s.name, err)
		}
		if v != want {
			t.Fatalf("%s: version %d", s.name, v)
		}
		if !reflect.DeepEqual(got, s.msg) {
			t.Fatalf("%s: round trip\n got %#v\nwant %#v", s.name, got, s.msg)
		}
		seen[s.msg.Command()] = true
	}
	for c := range commandNames {
		if !seen[c] {
			t.Errorf("command %v has no sample", c)
		}
	}
}

func TestChunkDataIsNotCopied(t *testing.T) {
	data := make([]byte, 4096)
	frames := Encode(Version1, &Chunk{Request: 1, Data: data})
	if &frames[2][0] != &data[0] {
		t.Fatal("Encode copied chunk data")
	}
	m, _, err := Decode(frames)
	if err != nil {
		t.Fatal(err)
	}
	if &m.(*Chunk).Data[0] != &data[0] {
		t.Fatal("Decode copied chunk data")
	}
}

// Golden files hold one frame per line in hex. Regenerate with -update and
// review the diff: any change here is a wire change and needs PROTOCOL.md.
func TestGolden(t *testing.T) {
	for _, s := range samples {
		var buf bytes.Buffer
		v := s.v
		if v == 0 {
			v = s.msg.Command().Since()
		}
		for _, f := range Encode(v, s.msg) {
			buf.WriteString(hex.EncodeToString(f))
			buf.WriteByte('\n')
		}
		path := filepath.Join("testdata", "golden", s.name+".hex")
		if *update {
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v (run go test ./protocol -update)", s.name, err)
		}
		if !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("%s: encoding changed\n got %s\nwant %s", s.name, buf.Bytes(), want)
		}
		// The golden bytes must also decode to the sample.
		var frames [][]byte
		for _, line := range strings.Split(strings.TrimSpace(string(want)), "\n") {
			f, err := hex.DecodeString(line)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, f)
		}
		got, _, err := Decode(frames)
		if err != nil || !reflect.DeepEqual(got, s.msg) {
			t.Errorf("%s: golden bytes decode to %#v, %v", s.name, got, err)
		}
	}
}

// The byte-exact examples in PROTOCOL.md are these.
func TestPinnedConstants(t *testing.T) {
	pins := map[Command]byte{CmdHello: 0x01, CmdGet: 0x02, CmdCredit: 0x03, CmdCancel: 0x04,
		CmdWelcome: 0x10, CmdFile: 0x11, CmdChunk: 0x12, CmdEnd: 0x13,
		CmdPing: 0x20, CmdPong: 0x21, CmdBye: 0x22, CmdError: 0x23,
		CmdList: 0x05, CmdMGet: 0x06, CmdVGet: 0x07, CmdTree: 0x14,
		CmdReport: 0x08, CmdStatus: 0x09, CmdSwitch: 0x15, CmdFleet: 0x16, CmdForward: 0x0a,
		CmdBGet: 0x0c, CmdPack: 0x17, CmdSwitchAt: 0x18}
	for c, b := range pins {
		if byte(c) != b {
			t.Errorf("%v = 0x%02x, want 0x%02x", c, byte(c), b)
		}
	}
	if got := hex.EncodeToString(CommandFrame(1, CmdGet)); got != "5a534e440102" {
		t.Errorf("GET command frame %s", got)
	}
	if got := hex.EncodeToString(CommandFrame(2, CmdMGet)); got != "5a534e440206" {
		t.Errorf("MGET command frame %s", got)
	}
	if MaxBatch != 1000 || MaxPackFiles != 256 {
		t.Error("version 3 constants changed: update PROTOCOL.md")
	}
	if MaxVersion != 4 || MaxSwitchInMS != 10000 {
		t.Error("version 4 constants changed: update PROTOCOL.md")
	}
	if CodeGone != 410 || MinVersion != 1 || ListSubscribe != 1 || TreeBarrier != 1 ||
		StateSyncing != 1 || StateStaged != 2 || StateSwitched != 3 || StateFailed != 4 || StateLost != 5 ||
		MaxNodeLen != 255 || MaxHookNameLen != 16 || MaxHookOutput != 4096 || StatusParents != 1 {
		t.Error("version 2 constants changed: update PROTOCOL.md")
	}
	if Signature != "ZSND" || MaxFrameSize != 4<<20 || MaxNameLen != 4096 {
		t.Error("limits changed: update PROTOCOL.md")
	}
}

func cmdFrame(c Command) []byte { return CommandFrame(Version1, c) }

func v3(c Command) []byte { return CommandFrame(Version3, c) }

func TestMalformedInputsFailCleanly(t *testing.T) {
	getHdr := Encode(1, &Get{Request: 1, Name: "a"})[1]
	bgetHdr := Encode(3, &BGet{Request: 1, Tag: tagOf(1), Tree: "etc", Index: []uint32{4, 5}})[1]
	packHdr := Encode(3, &Pack{Request: 1, Files: []PackFile{{Index: 4, Size: 2, Mode: 0644}}, Data: []byte("ab")})[1]
	chunk := Encode(1, &Chunk{Request: 1, Data: []byte("abcd")})
	listHdr := Encode(2, &List{Request: 1, Tree: "etc"})[1]
	vgetHdr := Encode(2, &VGet{Request: 1, Tag: tagOf(1), Name: "etc/a"})[1]
	treeHdr := Encode(2, &Tree{Request: 1, Seq: 1, Name: "etc"})[1]
	reportHdr := Encode(2, &Report{Request: 1, State: StateSyncing, Node: "n", Tree: "etc"})[1]
	v2 := func(c Command) []byte { return CommandFrame(Version2, c) }
	cases := []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"no frames", nil, ErrMalformed},
		{"empty frame 0", [][]byte{{}}, ErrSignature},
		{"wrong signature", [][]byte{[]byte("ZMTP\x01\x02"), getHdr}, ErrSignature},
		{"long command frame", [][]byte{[]byte("ZSND\x01\x02\x00"), getHdr}, ErrMalformed},
		{"short command frame", [][]byte{[]byte("ZSND\x01"), getHdr}, ErrMalformed},
		{"version 0", [][]byte{CommandFrame(0, CmdGet), getHdr}, ErrVersion},
		{"version 9", [][]byte{CommandFrame(9, CmdGet), getHdr}, ErrVersion},
		{"version 5", [][]byte{CommandFrame(5, CmdGet), getHdr}, ErrVersion},
		{"hello at version 2", [][]byte{CommandFrame(2, CmdHello), Encode(1, &Hello{})[1]}, ErrMalformed},
		{"unknown command", [][]byte{CommandFrame(1, 0x7f), {}}, ErrUnknownCommand},
		{"missing header", [][]byte{cmdFrame(CmdGet)}, ErrMalformed},
		{"extra frame", [][]byte{cmdFrame(CmdGet), getHdr, {}}, ErrMalformed},
		{"truncated header", [][]byte{cmdFrame(CmdGet), getHdr[:5]}, ErrMalformed},
		{"trailing octets", [][]byte{cmdFrame(CmdGet), append(append([]byte{}, getHdr...), 0)}, ErrMalformed},
		{"request id 0", [][]byte{cmdFrame(CmdGet), Encode(1, &Get{Request: 0, Name: "a"})[1]}, ErrMalformed},
		{"string longer than frame", [][]byte{cmdFrame(CmdError), {0, 0, 0, 1, 1, 144, 0xff, 0xff, 'x'}}, ErrMalformed},
		{"invalid utf8", [][]byte{cmdFrame(CmdError), {0, 0, 0, 1, 1, 144, 0, 2, 0xff, 0xfe}}, ErrMalformed},
		{"oversized header", [][]byte{cmdFrame(CmdCredit), make([]byte, MaxHeaderLen+1)}, ErrMalformed},
		{"chunk without data", chunk[:2], ErrMalformed},
		{"chunk length mismatch", [][]byte{chunk[0], chunk[1], []byte("abc")}, ErrMalformed},
		{"chunk length zero", [][]byte{chunk[0], Encode(1, &Chunk{Request: 1})[1], {}}, ErrMalformed},
		{"welcome tiny chunk", [][]byte{cmdFrame(CmdWelcome), Encode(1, &Welcome{ChunkSize: 16})[1]}, ErrMalformed},
		{"welcome huge chunk", [][]byte{cmdFrame(CmdWelcome), Encode(1, &Welcome{ChunkSize: 1 << 30})[1]}, ErrMalformed},
		{"file offset beyond size", [][]byte{cmdFrame(CmdFile), Encode(1, &File{Request: 1, Size: 1, Offset: 2, Name: "a"})[1]}, ErrMalformed},
		// Version 2 commands.
		{"list at version 1", [][]byte{CommandFrame(1, CmdList), listHdr}, ErrUnknownCommand},
		{"mget at version 1", [][]byte{CommandFrame(1, CmdMGet), getHdr}, ErrUnknownCommand},
		{"vget at version 1", [][]byte{CommandFrame(1, CmdVGet), vgetHdr}, ErrUnknownCommand},
		{"tree at version 1", [][]byte{CommandFrame(1, CmdTree), treeHdr}, ErrUnknownCommand},
		{"report at version 1", [][]byte{CommandFrame(1, CmdReport), reportHdr}, ErrUnknownCommand},
		{"switch at version 1", [][]byte{CommandFrame(1, CmdSwitch), Encode(2, &Switch{Request: 1, Tree: "etc"})[1]}, ErrUnknownCommand},
		{"unassigned 0x0c at version 2", [][]byte{CommandFrame(2, 0x0c), {}}, ErrUnknownCommand},
		{"access at version 1", [][]byte{CommandFrame(1, CmdAccess), Encode(2, &Access{Request: 1})[1]}, ErrUnknownCommand},
		{"access request 0", [][]byte{v2(CmdAccess), Encode(2, &Access{})[1]}, ErrMalformed},
		{"access short key", [][]byte{v2(CmdAccess), Encode(2, &Access{Request: 1})[1][:35]}, ErrMalformed},
		{"access trailing", [][]byte{v2(CmdAccess), append(Encode(2, &Access{Request: 1})[1], 0)}, ErrMalformed},
		{"forward at version 1", [][]byte{CommandFrame(1, CmdForward), Encode(2, &Forward{Report: Report{Request: 1, State: 1, Node: "n", Tree: "etc"}, Parent: "r"})[1]}, ErrUnknownCommand},
		{"forward empty parent", [][]byte{v2(CmdForward), Encode(2, &Forward{Report: Report{Request: 1, State: 1, Node: "n", Tree: "etc"}})[1]}, ErrMalformed},
		{"forward long parent", [][]byte{v2(CmdForward), Encode(2, &Forward{Report: Report{Request: 1, State: 1, Node: "n", Tree: "etc"}, Parent: strings.Repeat("p", MaxNodeLen+1)})[1]}, ErrMalformed},
		{"forward without parent", [][]byte{v2(CmdForward), reportHdr}, ErrMalformed},
		{"forward state lost", [][]byte{v2(CmdForward), Encode(2, &Forward{Report: Report{Request: 1, State: StateLost, Node: "n", Tree: "etc"}, Parent: "r"})[1]}, ErrMalformed},
		{"forward empty node", [][]byte{v2(CmdForward), Encode(2, &Forward{Report: Report{Request: 1, State: 1, Tree: "etc"}, Parent: "r"})[1]}, ErrMalformed},
		{"forward request 0", [][]byte{v2(CmdForward), Encode(2, &Forward{Report: Report{State: 1, Node: "n", Tree: "etc"}, Parent: "r"})[1]}, ErrMalformed},
		{"forward trailing", [][]byte{v2(CmdForward), append(Encode(2, &Forward{Report: Report{Request: 1, State: 1, Node: "n", Tree: "etc"}, Parent: "r"})[1], 0)}, ErrMalformed},
		{"status reserved flag", [][]byte{v2(CmdStatus), Encode(2, &Status{Request: 1, Flags: 2})[1]}, ErrMalformed},
		{"fleet long parent", [][]byte{v2(CmdFleet), Encode(2, &Fleet{Request: 1, State: 1, Node: "n", Tree: "etc", HasParent: true, Parent: strings.Repeat("p", MaxNodeLen+1)})[1]}, ErrMalformed},
		{"fleet parent truncated", [][]byte{v2(CmdFleet), append(Encode(2, &Fleet{Request: 1, State: 1, Node: "n", Tree: "etc"})[1], 0)}, ErrMalformed},
		{"fleet parent trailing", [][]byte{v2(CmdFleet), append(Encode(2, &Fleet{Request: 1, State: 1, Node: "n", Tree: "etc", HasParent: true, Parent: "r"})[1], 0)}, ErrMalformed},
		{"unassigned 0x18 at version 2", [][]byte{CommandFrame(2, 0x18), {}}, ErrUnknownCommand},
		{"pack at version 2", [][]byte{CommandFrame(2, CmdPack), packHdr, []byte("ab")}, ErrUnknownCommand},
		{"bget at version 2", [][]byte{CommandFrame(2, CmdBGet), bgetHdr}, ErrUnknownCommand},
		{"bget request 0", [][]byte{v3(CmdBGet), Encode(3, &BGet{Tag: tagOf(1), Tree: "etc", Index: []uint32{1}})[1]}, ErrMalformed},
		{"bget zero tag", [][]byte{v3(CmdBGet), Encode(3, &BGet{Request: 1, Tree: "etc", Index: []uint32{1}})[1]}, ErrMalformed},
		{"bget no index", [][]byte{v3(CmdBGet), Encode(3, &BGet{Request: 1, Tag: tagOf(1), Tree: "etc"})[1]}, ErrMalformed},
		{"bget too many", [][]byte{v3(CmdBGet), Encode(3, &BGet{Request: 1, Tag: tagOf(1), Tree: "etc", Index: make([]uint32, MaxBatch+1)})[1]}, ErrMalformed},
		{"bget truncated", [][]byte{v3(CmdBGet), bgetHdr[:len(bgetHdr)-1]}, ErrMalformed},
		{"bget trailing", [][]byte{v3(CmdBGet), append(append([]byte{}, bgetHdr...), 0)}, ErrMalformed},
		{"bget data frame", [][]byte{v3(CmdBGet), bgetHdr, {1}}, ErrMalformed},
		{"pack request 0", [][]byte{v3(CmdPack), Encode(3, &Pack{Files: []PackFile{{Size: 1}}})[1], {1}}, ErrMalformed},
		{"pack no files", [][]byte{v3(CmdPack), Encode(3, &Pack{Request: 1})[1]}, ErrMalformed},
		{"pack too many", [][]byte{v3(CmdPack), Encode(3, &Pack{Request: 1, Files: make([]PackFile, MaxPackFiles+1)})[1]}, ErrMalformed},
		{"pack mode type bits", [][]byte{v3(CmdPack), Encode(3, &Pack{Request: 1, Files: []PackFile{{Size: 1, Mode: 0100644}}})[1], {1}}, ErrMalformed},
		{"pack short data", [][]byte{v3(CmdPack), packHdr, []byte("a")}, ErrMalformed},
		{"pack long data", [][]byte{v3(CmdPack), packHdr, []byte("abc")}, ErrMalformed},
		{"pack no data frame", [][]byte{v3(CmdPack), packHdr}, ErrMalformed},
		{"pack empty with data frame", [][]byte{v3(CmdPack), Encode(3, &Pack{Request: 1, Files: []PackFile{{}}})[1], {}}, ErrMalformed},
		{"pack beyond a frame", [][]byte{v3(CmdPack), Encode(3, &Pack{Request: 1, Files: []PackFile{{Size: MaxChunkSize}, {Size: 1}}})[1], make([]byte, MaxChunkSize+1)}, ErrMalformed},
		{"pack truncated", [][]byte{v3(CmdPack), packHdr[:len(packHdr)-1], []byte("ab")}, ErrMalformed},
		{"report request 0", [][]byte{v2(CmdReport), Encode(2, &Report{State: 1, Node: "n", Tree: "etc"})[1]}, ErrMalformed},
		{"report state 0", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, Node: "n", Tree: "etc"})[1]}, ErrMalformed},
		{"report state lost", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: StateLost, Node: "n", Tree: "etc"})[1]}, ErrMalformed},
		{"report empty node", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Tree: "etc"})[1]}, ErrMalformed},
		{"report empty tree", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Node: "n"})[1]}, ErrMalformed},
		{"report long node", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Node: strings.Repeat("n", MaxNodeLen+1), Tree: "etc"})[1]}, ErrMalformed},
		{"report long tree", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Node: "n", Tree: strings.Repeat("t", MaxComponentLen+1)})[1]}, ErrMalformed},
		{"report long hook output", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Node: "n", Tree: "etc", Hook: HookResult{Name: "exec", Output: strings.Repeat("o", MaxHookOutput+1)}})[1]}, ErrMalformed},
		{"report hook without name", [][]byte{v2(CmdReport), Encode(2, &Report{Request: 1, State: 1, Node: "n", Tree: "etc", Hook: HookResult{Exit: 1}})[1]}, ErrMalformed},
		{"report truncated", [][]byte{v2(CmdReport), reportHdr[:len(reportHdr)-1]}, ErrMalformed},
		{"report trailing", [][]byte{v2(CmdReport), append(append([]byte{}, reportHdr...), 0)}, ErrMalformed},
		{"status request 0", [][]byte{v2(CmdStatus), Encode(2, &Status{})[1]}, ErrMalformed},
		{"fleet state 0", [][]byte{v2(CmdFleet), Encode(2, &Fleet{Request: 1, Node: "n", Tree: "etc"})[1]}, ErrMalformed},
		{"fleet state 6", [][]byte{v2(CmdFleet), Encode(2, &Fleet{Request: 1, State: 6, Node: "n", Tree: "etc"})[1]}, ErrMalformed},
		{"switch empty tree", [][]byte{v2(CmdSwitch), Encode(2, &Switch{Request: 1})[1]}, ErrMalformed},
		{"switchat at version 3", [][]byte{CommandFrame(3, CmdSwitchAt), Encode(4, &SwitchAt{Request: 1, Tree: "etc"})[1]}, ErrUnknownCommand},
		{"switchat empty tree", [][]byte{CommandFrame(4, CmdSwitchAt), Encode(4, &SwitchAt{Request: 1})[1]}, ErrMalformed},
		{"switchat request 0", [][]byte{CommandFrame(4, CmdSwitchAt), Encode(4, &SwitchAt{Tree: "etc"})[1]}, ErrMalformed},
		{"switchat in-ms over bound", [][]byte{CommandFrame(4, CmdSwitchAt), Encode(4, &SwitchAt{Request: 1, InMS: MaxSwitchInMS + 1, Tree: "etc"})[1]}, ErrMalformed},
		{"switchat trailing", [][]byte{CommandFrame(4, CmdSwitchAt), append(Encode(4, &SwitchAt{Request: 1, Tree: "etc"})[1], 0)}, ErrMalformed},
		{"list request 0", [][]byte{v2(CmdList), Encode(2, &List{Tree: "etc"})[1]}, ErrMalformed},
		{"list reserved flag", [][]byte{v2(CmdList), Encode(2, &List{Request: 1, Flags: 2})[1]}, ErrMalformed},
		{"list truncated", [][]byte{v2(CmdList), listHdr[:4]}, ErrMalformed},
		{"list trailing", [][]byte{v2(CmdList), append(append([]byte{}, listHdr...), 0)}, ErrMalformed},
		{"list long tree", [][]byte{v2(CmdList), Encode(2, &List{Request: 1, Tree: strings.Repeat("x", MaxNameLen+1)})[1]}, ErrMalformed},
		{"mget request 0", [][]byte{v2(CmdMGet), Encode(2, &MGet{Name: "etc"})[1]}, ErrMalformed},
		{"mget truncated", [][]byte{v2(CmdMGet), getHdr[:20]}, ErrMalformed},
		{"vget zero tag", [][]byte{v2(CmdVGet), Encode(2, &VGet{Request: 1, Name: "etc/a"})[1]}, ErrMalformed},
		{"vget request 0", [][]byte{v2(CmdVGet), Encode(2, &VGet{Tag: tagOf(1), Name: "etc/a"})[1]}, ErrMalformed},
		{"tree flags", [][]byte{v2(CmdTree), Encode(2, &Tree{Request: 1, Flags: 2, Name: "etc"})[1]}, ErrMalformed},
		{"tree truncated", [][]byte{v2(CmdTree), treeHdr[:len(treeHdr)-1]}, ErrMalformed},
		{"tree trailing", [][]byte{v2(CmdTree), append(append([]byte{}, treeHdr...), 0)}, ErrMalformed},
		{"tree extra frame", [][]byte{v2(CmdTree), treeHdr, {}}, ErrMalformed},
		{"file mode type bits", [][]byte{cmdFrame(CmdFile), Encode(1, &File{Request: 1, Mode: 0100644, Name: "a"})[1]}, ErrMalformed},
	}
	for _, tc := range cases {
		m, _, err := Decode(tc.frames)
		if err == nil {
			t.Errorf("%s: accepted as %#v", tc.name, m)
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: %T is not a *DecodeError", tc.name, err)
		}
	}
}

// Every version 1 command keeps its layout at version 2, and a version 2
// command is an unknown command (501) in a frame marked version 1.
func TestVersionGating(t *testing.T) {
	for _, s := range samples {
		c := s.msg.Command()
		if c == CmdHello {
			continue
		}
		if since := c.Since(); since >= Version3 {
			// A version 3 command is an unknown command at version 2, a
			// version 4 one at version 3; both keep their layout above.
			_, _, err := Decode(Encode(since-1, s.msg))
			var de *DecodeError
			if !errors.As(err, &de) || de.Code() != CodeUnknownCommand {
				t.Errorf("%s at version %d: %v, want 501 unknown command", s.name, since-1, err)
			}
			for v := since; v <= MaxVersion; v++ {
				if got, _, err := Decode(Encode(v, s.msg)); err != nil || !reflect.DeepEqual(got, s.msg) {
					t.Errorf("%s at version %d: %#v, %v", s.name, v, got, err)
				}
			}
			continue
		}
		frames := Encode(Version2, s.msg)
		got, v, err := Decode(frames)
		if err != nil || v != Version2 || !reflect.DeepEqual(got, s.msg) {
			t.Errorf("%s at version 2: %#v, %d, %v", s.name, got, v, err)
		}
		for v := Version3; v <= MaxVersion; v++ {
			if got, _, err := Decode(Encode(v, s.msg)); err != nil || !reflect.DeepEqual(got, s.msg) {
				t.Errorf("%s at version %d: %#v, %v", s.name, v, got, err)
			}
		}
		if c.Since() == Version1 {
			if !bytes.Equal(frames[1], Encode(Version1, s.msg)[1]) {
				t.Errorf("%s: header differs between versions 1 and 2", s.name)
			}
			continue
		}
		_, _, err = Decode(Encode(Version1, s.msg))
		var de *DecodeError
		if !errors.As(err, &de) || de.Code() != CodeUnknownCommand {
			t.Errorf("%s at version 1: %v, want 501 unknown command", s.name, err)
		}
	}
	// MGET and VGET share GET's layout octet for octet.
	g := &Get{Request: 9, Offset: 1 << 20, Tag: tagOf(3), Name: "etc/x"}
	for _, m := range []Message{(*MGet)(g), (*VGet)(g)} {
		if !bytes.Equal(Encode(2, m)[1], Encode(2, g)[1]) {
			t.Errorf("%v header differs from GET's", m.Command())
		}
	}
}

func TestDecodeErrorCodes(t *testing.T) {
	_, _, err := Decode([][]byte{CommandFrame(9, CmdGet), {}})
	var de *DecodeError
	if !errors.As(err, &de) || de.Code() != CodeVersion {
		t.Fatalf("version error code: %v", err)
	}
	_, _, err = Decode([][]byte{CommandFrame(1, 0x55), {}})
	if !errors.As(err, &de) || de.Code() != CodeUnknownCommand {
		t.Fatalf("unknown command code: %v", err)
	}
}

func TestValidName(t *testing.T) {
	good := []string{"a", "config.tar", "dir/file.txt", "ünïcode", "a b", ".hidden", "x..y"}
	bad := []string{"", "/etc/passwd", "..", "../x", "a/../b", "a/./b", ".", "a//b", "a/", "a\x00b",
		`a\b`, "a\nb", strings.Repeat("x", MaxComponentLen+1), strings.Repeat("a/", MaxNameLen), "\xff"}
	for _, n := range good {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidName(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidName(%q) = %v, want ErrBadName", n, err)
		}
	}
}

func TestStringTruncatedOnEncode(t *testing.T) {
	m := &Error{Request: 1, Code: CodeInternal, Message: strings.Repeat("é", 40000)}
	frames := Encode(1, m)
	if len(frames[1]) > 4+2+2+0xFFFF {
		t.Fatalf("header %d octets", len(frames[1]))
	}
	// Over MaxTextLen, so the decoder must refuse it rather than accept it.
	if _, _, err := Decode(frames); !errors.Is(err, ErrMalformed) {
		t.Fatalf("decode of over-long message: %v", err)
	}
}

// The examples of PROTOCOL.md sections 15.7 (relays) and 16.5 (BGET and
// PACK) are the golden files.
func TestProtocolDocExamples(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	for sec, names := range map[string][]string{
		"15.7": {"forward", "status_parents", "fleet_parent", "fleet_direct"},
		"16.5": {"bget", "pack", "pack_empty"},
		"17.3": {"switchat"},
	} {
		_, text, ok := strings.Cut(string(doc), "### "+sec+" Examples")
		if !ok {
			t.Fatalf("PROTOCOL.md lost section %s", sec)
		}
		if end := strings.Index(text, "\n## "); end >= 0 {
			text = text[:end]
		}
		flat := strings.Join(strings.Fields(text), "")
		for _, name := range names {
			g, err := os.ReadFile(filepath.Join("testdata", "golden", name+".hex"))
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.Join(strings.Fields(string(g)), ""); !strings.Contains(flat, want) {
				t.Errorf("PROTOCOL.md %s lacks the golden %s: %s", sec, name, want)
			}
		}
	}
}

// SwitchWait: a node whose clock agrees with the server's waits until the
// instant; a wrong clock can make it switch early, never wait longer than
// in-ms.
func TestSwitchWait(t *testing.T) {
	const at = int64(1_700_000_000_250_000_000)
	m := &SwitchAt{Request: 1, AtNS: at, InMS: 250, Tree: "etc"}
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		now  int64
		want time.Duration
	}{
		{"read at once, clocks agree", at - int64(250*ms), 250 * ms},
		{"read 100 ms late, clocks agree", at - int64(150*ms), 150 * ms},
		{"read after the instant", at + int64(ms), 0},
		{"read at the instant", at, 0},
		{"node clock 1 s behind", at - int64(1250*ms), 250 * ms},
		{"node clock 1 s ahead", at + int64(750*ms), 0},
		{"node clock at the far past", math.MinInt64, 250 * ms},
		{"node clock at the far future", math.MaxInt64, 0},
	} {
		if got := SwitchWait(c.now, m); got != c.want {
			t.Errorf("%s: wait %v, want %v", c.name, got, c.want)
		}
	}
	far := &SwitchAt{Request: 1, AtNS: math.MaxInt64, InMS: MaxSwitchInMS, Tree: "etc"}
	if got := SwitchWait(math.MinInt64, far); got != MaxSwitchInMS*ms {
		t.Errorf("overflowing difference: wait %v", got)
	}
	if got := SwitchWait(at, &SwitchAt{Request: 1, AtNS: at + int64(time.Hour), Tree: "etc"}); got != 0 {
		t.Errorf("in-ms 0: wait %v, want 0", got)
	}
}

// Every message example in PROTOCOL.md (a fenced block of hex starting
// with the ZSND signature) is, octet for octet, one of the golden files
// the encoder is checked against: an example cannot drift from the code.
func TestEveryDocExampleIsGolden(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*.hex"))
	if err != nil || len(files) == 0 {
		t.Fatalf("golden files: %v", err)
	}
	golden := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		golden[strings.Join(strings.Fields(string(b)), "")] = filepath.Base(f)
	}
	blocks := strings.Split(string(doc), "```")
	n := 0
	for i := 1; i < len(blocks); i += 2 {
		body := blocks[i]
		if nl := strings.IndexByte(body, '\n'); nl >= 0 && !strings.ContainsAny(body[:nl], " 0123456789") {
			body = body[nl+1:] // a language tag
		}
		flat := strings.Join(strings.Fields(body), "")
		if !strings.HasPrefix(flat, "5a534e44") || strings.HasPrefix(flat, "5a534e444d414e31") {
			continue // not a message; the manifest example ("ZSNDMAN1", 13.5) is checked in integration/trees_pub_test.go
		}
		n++
		if _, ok := golden[flat]; !ok {
			t.Errorf("PROTOCOL.md example %d is no golden file:\n%s", n, strings.TrimSpace(body))
		}
	}
	if n < 20 {
		t.Fatalf("only %d examples found in PROTOCOL.md", n)
	}
}
