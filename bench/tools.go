package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"
	"unsafe"

	"github.com/go-zeromq/zmq4"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// The baselines below are deliberately minimal: they show what the
// transport and the disk can do with no protocol, no hashing and no flow
// control beyond what the socket gives.

var (
	zmqHello = []byte("HELLO")
	zmqDone  = []byte("DONE")
)

// ZMQServe binds a zmq4 ROUTER on endpoint, calls ready with the bound
// address, waits for one DEALER to say hello, then sends the file at path
// to it as frames of chunk bytes (one frame per message, read into one
// reused buffer: zmq4's ROUTER writes synchronously to the connection, so
// the socket itself is the only flow control), then an empty frame. It
// returns after the receiver acknowledges the end, or when ctx is done.
func ZMQServe(ctx context.Context, endpoint, path string, chunk int, ready func(addr string)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sock := zmq4.NewRouter(ctx, zmq4.WithID(zmq4.SocketIdentity("zbench-router")))
	defer sock.Close()
	if err := sock.Listen(endpoint); err != nil {
		return 0, fmt.Errorf("listen %s: %w", endpoint, err)
	}
	stop := context.AfterFunc(ctx, func() { sock.Close() })
	defer stop()
	if ready != nil {
		ready("tcp://" + sock.Addr().String())
	}
	var peer []byte
	for peer == nil {
		msg, err := sock.Recv()
		if err != nil {
			return 0, fmt.Errorf("waiting for hello: %w", err)
		}
		if msg.Type == zmq4.CmdMsg || len(msg.Frames) != 2 || !bytes.Equal(msg.Frames[1], zmqHello) {
			continue
		}
		peer = msg.Frames[0]
	}
	buf := make([]byte, chunk)
	var sent int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if err := sock.Send(zmq4.NewMsgFrom(peer, buf[:n])); err != nil {
				return sent, fmt.Errorf("send: %w", err)
			}
			sent += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return sent, err
		}
	}
	if err := sock.Send(zmq4.NewMsgFrom(peer, nil)); err != nil {
		return sent, fmt.Errorf("send end: %w", err)
	}
	for {
		msg, err := sock.Recv()
		if err != nil {
			return sent, fmt.Errorf("waiting for ack: %w", err)
		}
		if msg.Type != zmq4.CmdMsg && len(msg.Frames) == 2 && bytes.Equal(msg.Frames[1], zmqDone) {
			return sent, nil
		}
	}
}

// ZMQFetch dials endpoint with a zmq4 DEALER, says hello, and receives
// frames until an empty one. With out == "" the data is discarded;
// otherwise it is written to out, which is fsynced and closed before the
// end is acknowledged. With direct, out is written with O_DIRECT (see
// directWriter). It returns the number of payload bytes received.
func ZMQFetch(ctx context.Context, endpoint, out string, direct bool) (int64, error) {
	var f io.WriteCloser
	var syncer interface{ Sync() error }
	switch {
	case out != "" && direct:
		dw, err := newDirectWriter(out)
		if err != nil {
			return 0, err
		}
		defer dw.abort()
		f, syncer = dw, dw
	case out != "":
		of, err := os.Create(out)
		if err != nil {
			return 0, err
		}
		defer of.Close()
		f, syncer = of, of
	}
	sock := zmq4.NewDealer(ctx, zmq4.WithDialerMaxRetries(-1))
	defer sock.Close()
	stop := context.AfterFunc(ctx, func() { sock.Close() })
	defer stop()
	if err := sock.Dial(endpoint); err != nil {
		return 0, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	if err := sock.Send(zmq4.NewMsg(zmqHello)); err != nil {
		return 0, err
	}
	var got int64
	for {
		msg, err := sock.Recv()
		if err != nil {
			return got, fmt.Errorf("recv: %w", err)
		}
		if msg.Type == zmq4.CmdMsg || len(msg.Frames) != 1 {
			continue
		}
		data := msg.Frames[0]
		if len(data) == 0 {
			break
		}
		if f != nil {
			if _, err := f.Write(data); err != nil {
				return got, err
			}
		}
		got += int64(len(data))
	}
	if f != nil {
		if err := syncer.Sync(); err != nil {
			return got, err
		}
		if err := f.Close(); err != nil {
			return got, err
		}
	}
	return got, sock.Send(zmq4.NewMsg(zmqDone))
}

// directWriter writes a file with O_DIRECT, bypassing the page cache: data
// is staged in a page-aligned buffer (mmap) and written in whole aligned
// blocks; Sync pads the last partial block, writes it, truncates the file
// to its real length and fsyncs.
type directWriter struct {
	f    *os.File
	buf  []byte // page aligned
	n    int    // bytes staged in buf
	off  int64  // file offset of buf[0]
	done bool
}

const directBlock = 4096

func newDirectWriter(path string) (*directWriter, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_DIRECT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s with O_DIRECT: %w", path, err)
	}
	buf, err := unix.Mmap(-1, 0, 4<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &directWriter{f: os.NewFile(uintptr(fd), path), buf: buf}, nil
}

func (w *directWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		c := copy(w.buf[w.n:], p)
		w.n += c
		p = p[c:]
		if w.n == len(w.buf) {
			if err := w.flush(w.n); err != nil {
				return total - len(p), err
			}
		}
	}
	return total, nil
}

// flush writes the first n staged bytes (a multiple of the block size).
func (w *directWriter) flush(n int) error {
	if _, err := w.f.WriteAt(w.buf[:n], w.off); err != nil {
		return err
	}
	w.off += int64(n)
	w.n = copy(w.buf, w.buf[n:w.n])
	return nil
}

func (w *directWriter) Sync() error {
	size := w.off + int64(w.n)
	if w.n > 0 {
		padded := (w.n + directBlock - 1) / directBlock * directBlock
		clear(w.buf[w.n:padded])
		w.n = padded
		if err := w.flush(padded); err != nil {
			return err
		}
	}
	if err := w.f.Truncate(size); err != nil {
		return err
	}
	return w.f.Sync()
}

func (w *directWriter) Close() error {
	w.done = true
	err := w.f.Close()
	_ = unix.Munmap(w.buf)
	return err
}

func (w *directWriter) abort() {
	if !w.done {
		w.Close()
	}
}

// TCPServe listens on addr, calls ready with the bound address, accepts
// one connection and writes the file at path to it with writes of chunk
// bytes (a read/write loop, not sendfile), then closes it.
func TCPServe(ctx context.Context, addr, path string, chunk int, ready func(addr string)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if ready != nil {
		ready(ln.Addr().String())
	}
	c, err := ln.Accept()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stopc := context.AfterFunc(ctx, func() { c.Close() })
	defer stopc()
	buf := make([]byte, chunk)
	var sent int64
	for {
		n, rerr := f.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return sent, err
			}
			sent += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return sent, rerr
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		// Wait for the receiver to finish (it closes after its fsync), so
		// both sides end together as with the other contenders.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		_, _ = io.Copy(io.Discard, c)
	}
	return sent, nil
}

// TCPFetch dials addr and reads until EOF with reads of chunk bytes,
// discarding the data (out == "") or writing it to out and fsyncing it.
func TCPFetch(ctx context.Context, addr, out string, chunk int) (int64, error) {
	var f *os.File
	if out != "" {
		var err error
		if f, err = os.Create(out); err != nil {
			return 0, err
		}
		defer f.Close()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := make([]byte, chunk)
	var got int64
	for {
		n, rerr := c.Read(buf)
		if n > 0 {
			if f != nil {
				if _, err := f.Write(buf[:n]); err != nil {
					return got, err
				}
			}
			got += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return got, rerr
		}
	}
	if f != nil {
		if err := f.Sync(); err != nil {
			return got, err
		}
		if err := f.Close(); err != nil {
			return got, err
		}
	}
	return got, nil
}

// GenFile writes size pseudo-random (incompressible) bytes to path, seeded
// by seed, and returns their BLAKE3 digest (hex). It does not fsync.
func GenFile(path string, size int64, seed uint64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	h := blake3.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := int64(len(buf))
		if left < n {
			n = left
		}
		_, _ = src.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			return "", err
		}
		h.Write(buf[:n])
		left -= n
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// HashFile returns the BLAKE3 digest (hex) and size of the file at path.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := blake3.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", n, err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), n, nil
}

// errShort reports a transfer that delivered the wrong number of bytes.
var errShort = errors.New("wrong byte count")

// CheckCount returns an error if got != want.
func CheckCount(got, want int64) error {
	if got != want {
		return fmt.Errorf("%w: got %d bytes, want %d", errShort, got, want)
	}
	return nil
}

// MakeFiles is the local floor of the small-files scenario: it creates n
// files of size bytes in dir (f0000, f0001, ...) with the same file-system
// steps zrecv takes for a file of one chunk, and nothing else (no network,
// no hashing): an unnamed file (O_TMPFILE) per file, written, its mode and
// mtime set; then per batch of 128, one syncfs, a link into place per
// file and one directory fsync. It returns the bytes written.
func MakeFiles(ctx context.Context, dir string, n int, size int64) (int64, error) {
	const batch = 128 // zrecv's commit batch
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(dfd)
	mtime := []unix.Timespec{unix.NsecToTimespec(time.Now().UnixNano()), unix.NsecToTimespec(time.Now().UnixNano())}
	var total int64
	for start := 0; start < n; start += batch {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var fds []int
		for i := start; i < min(start+batch, n); i++ {
			fd, err := unix.Openat(dfd, ".", unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return total, fmt.Errorf("O_TMPFILE in %s: %w", dir, err)
			}
			fds = append(fds, fd)
			if _, err := unix.Pwrite(fd, data, 0); err != nil {
				return total, err
			}
			if err := unix.Fchmod(fd, 0o644); err != nil {
				return total, err
			}
			// futimens: utimensat(fd, NULL, times, 0), as zrecv does.
			if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&mtime[0])), 0, 0, 0); e != 0 {
				return total, e
			}
			total += size
		}
		if err := unix.Syncfs(dfd); err != nil {
			return total, err
		}
		for k, fd := range fds {
			name := fmt.Sprintf("f%04d", start+k)
			if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), dfd, name, unix.AT_SYMLINK_FOLLOW); err != nil {
				return total, fmt.Errorf("linking %s: %w", name, err)
			}
			unix.Close(fd)
		}
		if err := unix.Fsync(dfd); err != nil {
			return total, err
		}
	}
	return total, nil
}
