package testnet

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// FullBacklog returns the address of a loopback listener that never
// accepts and whose accept queue is full, so that a further connect hangs
// until it times out: a dial timeout without sending traffic anywhere but
// loopback.
func FullBacklog(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0) // SOCK_CLOEXEC is Linux-only
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4(sa.(*syscall.SockaddrInet4).Addr), uint16(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; i < 16; i++ {
		c, err := net.DialTimeout("tcp", ap.String(), 100*time.Millisecond)
		if err != nil {
			return ap // the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("cannot fill a listen backlog on this kernel (SYN cookies?)")
	return ap
}
