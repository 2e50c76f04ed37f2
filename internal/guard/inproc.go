package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4/transport"
)

// SchemeInproc is the guarded in-process transport: inproc://NAME
// endpoints of one process, connected through a Unix socket pair (kernel
// buffers, no file system name), with the guard's checks like the others.
// zmq4's own inproc transport corrupts frames under load (its reader
// panicked on a garbage length in our transfer tests), so Endpoint maps
// inproc:// here.
const SchemeInproc = "guard-inproc"

// inprocListeners holds the live inproc listeners by name.
var inprocListeners struct {
	sync.Mutex
	m map[string]*pipeListener
}

// pipeListener is the raw listener of one inproc name.
type pipeListener struct {
	name  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

type pipeAddr string

func (a pipeAddr) Network() string { return "inproc" }
func (a pipeAddr) String() string  { return string(a) }

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		inprocListeners.Lock()
		if inprocListeners.m[l.name] == l {
			delete(inprocListeners.m, l.name)
		}
		inprocListeners.Unlock()
		for {
			select {
			case c := <-l.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr(l.name) }

// inprocTransport implements zmq4's transport.Transport for SchemeInproc.
type inprocTransport struct{}

// ErrNoInprocListener is returned by a dial to an inproc name nobody
// listens on (zmq4 retries the dial).
var ErrNoInprocListener = errors.New("guard: no inproc listener of that name")

func (inprocTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, fmt.Errorf("guard: inproc endpoint without a name")
	}
	inprocListeners.Lock()
	defer inprocListeners.Unlock()
	if inprocListeners.m == nil {
		inprocListeners.m = map[string]*pipeListener{}
	}
	if _, taken := inprocListeners.m[addr]; taken {
		return nil, fmt.Errorf("guard: inproc://%s: address in use", addr)
	}
	raw := &pipeListener{name: addr, conns: make(chan net.Conn), done: make(chan struct{})}
	inprocListeners.m[addr] = raw
	return newListener(ctx, raw, settingsFrom(ctx), "inproc"), nil
}

func (inprocTransport) Dial(ctx context.Context, _ transport.Dialer, addr string) (net.Conn, error) {
	return dialInproc(ctx, addr)
}

func dialInproc(ctx context.Context, addr string) (net.Conn, error) {
	inprocListeners.Lock()
	l := inprocListeners.m[addr]
	inprocListeners.Unlock()
	if l == nil {
		return nil, fmt.Errorf("inproc://%s: %w", addr, ErrNoInprocListener)
	}
	mine, theirs, err := socketPair()
	if err != nil {
		return nil, err
	}
	select {
	case l.conns <- theirs:
	case <-l.done:
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("inproc://%s: %w", addr, ErrNoInprocListener)
	case <-ctx.Done():
		mine.Close()
		theirs.Close()
		return nil, ctx.Err()
	}
	set := settingsFrom(ctx)
	set.add(cDialed, 1)
	c := newConn(mine, set, "inproc")
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

// socketPair returns two connected Unix stream sockets as net.Conns.
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("guard: socketpair: %w", err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "inproc")
		c, err := net.FileConn(f) // dups fd
		f.Close()
		if err != nil {
			if i == 1 {
				conns[0].Close()
			} else {
				syscall.Close(fds[1])
			}
			return nil, nil, fmt.Errorf("guard: socketpair: %w", err)
		}
		conns[i] = c
	}
	return conns[0], conns[1], nil
}

func (inprocTransport) Addr(ep string) (string, error) { return ep, nil }
