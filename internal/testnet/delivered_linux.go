//go:build linux

package testnet

import (
	"fmt"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/internal/testwait"
)

// Delivered waits until every byte written to c, a TCP connection, has
// been acknowledged by its peer (the socket's send queue, SIOCOUTQ, is
// empty): on loopback, those bytes then sit in the peer's socket. For a
// test whose next step needs them there, not only sent (stale bytes in
// a pooled connection, say). It fails tb after testwait.Timeout.
func Delivered(tb testing.TB, c net.Conn) {
	tb.Helper()
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		tb.Fatalf("testnet.Delivered: %T is no socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	testwait.UntilNil(tb, testwait.Timeout, func() error {
		queued, qerr := 0, error(nil)
		if err := rc.Control(func(fd uintptr) { queued, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
			return err
		}
		if qerr != nil {
			return qerr
		}
		if queued > 0 {
			return fmt.Errorf("%d bytes written to %v not yet acknowledged by its peer", queued, c.RemoteAddr())
		}
		return nil
	})
}
