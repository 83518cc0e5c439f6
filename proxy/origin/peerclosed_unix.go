//go:build unix

package origin

import (
	"net"
	"syscall"
)

// peerClosed reports whether an idle upstream connection is unusable: the
// origin closed it (a FIN or RST waits in the socket) or sent bytes nobody
// asked for. It peeks without blocking, one system call; net/http's
// Transport learns the same from a goroutine reading every idle
// connection.
func peerClosed(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = n > 0 || (err == nil && n == 0) || (err != nil && err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR)
		return true
	})
	return closed
}
