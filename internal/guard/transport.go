package guard

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// Transport names registered with zmq4 by Register.
const (
	SchemeTCP = "guard-tcp"
	SchemeIPC = "guard-ipc"
)

var registerOnce sync.Once

// Register registers the guarded tcp and ipc transports with zmq4 under
// SchemeTCP and SchemeIPC. It is idempotent and safe for concurrent use;
// Endpoint calls it. It panics if another transport already took one of the
// names.
func Register() {
	registerOnce.Do(func() {
		for name, network := range map[string]string{SchemeTCP: "tcp", SchemeIPC: "unix"} {
			if err := zmq4.RegisterTransport(name, guarded{network: network, base: transport.New(network)}); err != nil {
				panic(fmt.Sprintf("guard: registering transport %q: %v", name, err))
			}
		}
		if err := zmq4.RegisterTransport(SchemeInproc, inprocTransport{}); err != nil {
			panic(fmt.Sprintf("guard: registering transport %q: %v", SchemeInproc, err))
		}
	})
}

// Endpoint rewrites a zmq4 endpoint to its guarded form:
// "tcp://127.0.0.1:5555" becomes "guard-tcp://127.0.0.1:5555" and
// "ipc:///tmp/x" becomes "guard-ipc:///tmp/x". Already guarded endpoints are
// returned unchanged; any other scheme is an error. It calls Register.
func Endpoint(ep string) (string, error) {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return "", fmt.Errorf("guard: endpoint %q has no scheme; want tcp://host:port or ipc://path", ep)
	}
	switch scheme {
	case "tcp":
		scheme = SchemeTCP
	case "ipc":
		scheme = SchemeIPC
	case "inproc":
		scheme = SchemeInproc
	case SchemeTCP, SchemeIPC, SchemeInproc:
	default:
		return "", fmt.Errorf("guard: endpoint %q: scheme %q cannot be guarded; only tcp://, ipc:// and inproc:// can", ep, scheme)
	}
	Register()
	return scheme + "://" + rest, nil
}

// guarded implements transport.Transport for one network ("tcp" or "unix").
type guarded struct {
	network string
	base    transport.Transport // zmq4's own transport, for Addr
}

// Dial dials with zmq4's dialer and wraps the connection. zmq4 runs its
// handshake on it in the caller's goroutine; the guard bounds the peer's
// part with the handshake timeout and checks it before zmq4 parses it.
func (g guarded) Dial(ctx context.Context, dialer transport.Dialer, addr string) (net.Conn, error) {
	set := settingsFrom(ctx)
	raw, err := dialer.DialContext(ctx, g.network, addr)
	if err != nil {
		return nil, err
	}
	set.add(cDialed, 1)
	c := newConn(raw, set, g.network)
	if set.handshake > 0 {
		c.hsDeadline = time.Now().Add(set.handshake)
	}
	if set.curveClient != nil {
		if err := c.curveDial(set.curveClient); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.watchAdoption(set.orphan)
	return c, nil
}

// Listen listens on addr; see the package documentation.
func (g guarded) Listen(ctx context.Context, addr string) (net.Listener, error) {
	set := settingsFrom(ctx)
	var lc net.ListenConfig
	raw, err := lc.Listen(ctx, g.network, addr)
	if err != nil {
		return nil, err
	}
	return newListener(ctx, raw, set, g.network), nil
}

// Addr normalizes an endpoint address the way zmq4's transport does.
func (g guarded) Addr(ep string) (string, error) { return g.base.Addr(ep) }
