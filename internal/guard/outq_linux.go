package guard

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// unconsumed returns how many bytes written to c the peer has not consumed
// yet (TCP: not acknowledged; unix: not read), or -1 if unknown.
func unconsumed(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}
