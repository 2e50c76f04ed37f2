package endpoint

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	good := []struct {
		ep   string
		bind bool
	}{
		{"tcp://127.0.0.1:5555", false},
		{"tcp://cfg1:5555", false},
		{"tcp://[::1]:5555", false},
		{"tcp://127.0.0.1:0", true},
		{"tcp://0.0.0.0:5555", true},
		{"tcp://*:5555", true},
		{"tcp://:5555", true},
		{"ipc:///run/zsend.sock", false},
		{"ipc://relative.sock", true},
	}
	for _, c := range good {
		if err := Check(c.ep, c.bind); err != nil {
			t.Errorf("Check(%q, %v): %v", c.ep, c.bind, err)
		}
	}
	bad := []struct {
		ep   string
		bind bool
		want string
	}{
		{"tcp://127.0.0.1", false, "missing port"},
		{"tcp://127.0.0.1", true, "missing port"},
		{"tcp://127.0.0.1:", false, "missing port"},
		{"tcp://[::1]", false, "missing port"},
		{"tcp://127.0.0.1:99999", false, "port 99999 out of range"},
		{"tcp://127.0.0.1:99999", true, "port 99999 out of range"},
		{"tcp://127.0.0.1:http", false, `port "http" is not a number`},
		{"tcp://127.0.0.1:-1", false, "is not a number"},
		{"tcp://127.0.0.1:0", false, "port 0 can only be bound"},
		{"tcp://:5555", false, "missing host"},
		{"tcp://*:5555", false, "cannot connect to host *"},
		{"tcp://::1:5555", false, "IPv6 address goes in brackets"},
		{"udp://127.0.0.1:5555", false, `unknown scheme "udp"`},
		{"inproc://x", true, `unknown scheme "inproc"`},
		{"guard-ipc:///tmp/x", true, `unknown scheme "guard-ipc"`},
		{"127.0.0.1:5555", false, "no scheme"},
		{"", false, "no scheme"},
		{"ipc://", false, "missing socket path"},
		{"ipc://" + strings.Repeat("x", 108), true, "longer than 107"},
		{"ipc://a\x00b", true, "contains NUL"},
	}
	for _, c := range bad {
		err := Check(c.ep, c.bind)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%q, %v) = %v, want an ErrInvalid saying %q", c.ep, c.bind, err, c.want)
		}
	}
}

func TestSplitAndCheckList(t *testing.T) {
	split := []struct {
		in   string
		want []string
	}{
		{"tcp://a:1", []string{"tcp://a:1"}},
		{"tcp://a:1,tcp://b:2", []string{"tcp://a:1", "tcp://b:2"}},
		{"tcp://a:1, ipc:///x", []string{"tcp://a:1", "ipc:///x"}},
		{"ipc:///tmp/a,b.sock", []string{"ipc:///tmp/a,b.sock"}},
		{"ipc:///tmp/a,b.sock,tcp://[::1]:5", []string{"ipc:///tmp/a,b.sock", "tcp://[::1]:5"}},
		{"bad-endpoint,tcp://b:2", []string{"bad-endpoint", "tcp://b:2"}},
		{"tcp://a:1,,tcp://b:2", []string{"tcp://a:1,", "tcp://b:2"}},
	}
	for _, c := range split {
		if got := Split(c.in); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("Split(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if eps, err := CheckList("tcp://a:1,tcp://b:2"); err != nil || len(eps) != 2 {
		t.Errorf("CheckList: %q %v", eps, err)
	}
	for _, bad := range []string{"bad-endpoint,tcp://b:2", "tcp://a:1,tcp://a:1", "tcp://a:1,", "tcp://a:1,udp://b:2", ""} {
		if _, err := CheckList(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckList(%q): %v, want ErrInvalid", bad, err)
		}
	}
}
