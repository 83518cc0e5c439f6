//go:build linux

package tunnel

import (
	"errors"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// copyConn copies src to dst until src's EOF, like io.Copy, and returns
// the bytes copied.
//
// Between two *net.TCPConn, io.Copy splices (the bytes stay in the
// kernel), but Go's splice takes a pipe (two file descriptors) from its
// pool before it waits for data and keeps it while it waits: every idle
// tunnel would hold two pipes, four descriptors. copyConn first waits for
// src to be readable without a pipe (the netpoller), then splices exactly
// the bytes queued, so an idle tunnel holds its two sockets and nothing
// else, and pipes go back to the pool between bursts.
func copyConn(dst, src net.Conn) (int64, error) {
	s, ok1 := src.(*net.TCPConn)
	d, ok2 := dst.(*net.TCPConn)
	if !ok1 || !ok2 {
		return io.Copy(dst, src)
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var total int64
	for {
		var queued int
		var eof bool
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			var again bool
			queued, eof, again, serr = peekQueued(int(fd))
			return !again // wait for readability, then ask again
		})
		switch {
		case err != nil:
			return total, err
		case serr != nil:
			return total, serr
		case eof:
			return total, nil
		}
		n, err := d.ReadFrom(&io.LimitedReader{R: s, N: int64(queued)})
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil // EOF raced with the peek
		}
	}
}

// peekQueued reports, without blocking, how many bytes (at least 1) the
// socket fd has queued, or that it reached EOF, or (again) that nothing
// has arrived yet.
func peekQueued(fd int) (queued int, eof, again bool, err error) {
	var b [1]byte
	n, _, e := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case errors.Is(e, unix.EAGAIN) || errors.Is(e, unix.EINTR):
		again = true
	case e != nil:
		err = e
	case n == 0:
		eof = true
	default:
		queued, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
		queued = max(queued, 1)
	}
	return queued, eof, again, err
}
