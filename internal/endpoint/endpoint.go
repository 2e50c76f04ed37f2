// Package endpoint checks the endpoints users give zsend and zrecv, once
// and up front, so that a typo is a usage error with a clear message
// instead of a connection that is retried until a timeout.
package endpoint

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error Check returns.
var ErrInvalid = errors.New("invalid endpoint")

// maxSocketPath is the longest ipc path Linux accepts (sun_path is 108
// octets, one of them the terminating NUL).
const maxSocketPath = 107

// Want says what a valid endpoint looks like, for error messages.
const Want = "want tcp://HOST:PORT or ipc://PATH"

// Check validates ep: tcp://HOST:PORT (HOST a name, an IPv4 address or an
// IPv6 address in brackets; PORT 1..65535) or ipc://PATH. With bind, PORT
// may be 0 (the system picks one) and HOST may be empty or "*" (every
// interface). Errors wrap ErrInvalid and quote ep.
func Check(ep string, bind bool) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalid, ep, fmt.Sprintf(format, args...))
	}
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return bad("no scheme; %s", Want)
	}
	switch scheme {
	case "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			if !strings.Contains(rest, ":") || strings.HasSuffix(rest, "]") {
				return bad("missing port; %s", Want)
			}
			return bad("want tcp://HOST:PORT (an IPv6 address goes in brackets: tcp://[::1]:5555)")
		}
		if host == "" && !bind {
			return bad("missing host; %s", Want)
		}
		if host == "*" && !bind {
			return bad("cannot connect to host *; %s", Want)
		}
		if strings.ContainsAny(host, "/ \t") {
			return bad("host %q is not a host name or address", host)
		}
		n, err := strconv.ParseUint(port, 10, 32)
		switch {
		case port == "":
			return bad("missing port; %s", Want)
		case err != nil:
			return bad("port %q is not a number", port)
		case n > 65535:
			return bad("port %d out of range (at most 65535)", n)
		case n == 0 && !bind:
			return bad("port 0 can only be bound, not connected to")
		}
	case "ipc":
		switch {
		case rest == "":
			return bad("missing socket path; %s", Want)
		case strings.ContainsRune(rest, 0):
			return bad("socket path contains NUL")
		case len(rest) > maxSocketPath:
			return bad("socket path of %d octets is longer than %d", len(rest), maxSocketPath)
		}
	default:
		return bad("unknown scheme %q; %s", scheme, Want)
	}
	return nil
}

// Split cuts a failover list "EP1,EP2,..." into its endpoints. A comma
// separates two endpoints only where what follows it (after optional
// blanks) starts with a scheme, SCHEME://; any other comma is part of an
// endpoint, so that one ipc:// path holding a comma is still one endpoint.
// Blanks around each endpoint are removed; nothing else is checked.
func Split(list string) []string {
	var out []string
	start := 0
	for i := 0; i < len(list); i++ {
		if list[i] == ',' && schemeAt(strings.TrimLeft(list[i+1:], " \t")) {
			out = append(out, strings.TrimSpace(list[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(list[start:]))
}

// schemeAt reports whether s starts with SCHEME:// (a letter, then
// letters, digits, '+', '-' or '.').
func schemeAt(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		case i > 0 && c == ':':
			return strings.HasPrefix(s[i:], "://")
		default:
			return false
		}
	}
	return false
}

// CheckList validates a failover list to connect to (Split, then Check
// each endpoint) and returns its endpoints in order. An endpoint listed
// twice is refused: the list is an order of preference, and a repeat is
// almost always a typo for another endpoint. Errors wrap ErrInvalid.
func CheckList(list string) ([]string, error) {
	eps := Split(list)
	seen := make(map[string]bool, len(eps))
	for _, ep := range eps {
		if err := Check(ep, false); err != nil {
			if len(eps) > 1 {
				return nil, fmt.Errorf("in the list %q: %w", list, err)
			}
			return nil, err
		}
		if seen[ep] {
			return nil, fmt.Errorf("%w %q: listed twice in %q", ErrInvalid, ep, list)
		}
		seen[ep] = true
	}
	return eps, nil
}
