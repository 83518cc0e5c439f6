// Package testnet holds the loopback servers egress's tests and
// benchmarks start: real sockets on 127.0.0.1, closed when the test ends.
// It is imported by tests only.
package testnet

import (
	"net"
	"testing"
)

// ServeTCP listens on 127.0.0.1:0 and runs handle on each accepted
// connection in its own goroutine, closing the connection when handle
// returns. The listener closes when tb ends.
func ServeTCP(tb testing.TB, handle func(net.Conn)) *net.TCPAddr {
	tb.Helper()
	return ServeTCPOn(tb, "127.0.0.1", handle)
}

// ServeTCPOn is ServeTCP on host: an address of the loopback, or of an
// interface inside a network namespace the test created.
func ServeTCPOn(tb testing.TB, host string, handle func(net.Conn)) *net.TCPAddr {
	tb.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

// ClosedUDP returns a 127.0.0.1 UDP address nobody listens on: the kernel
// answers what is sent there with ICMP port unreachable (connection
// refused).
func ClosedUDP(tb testing.TB) string {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	a := pc.LocalAddr().String()
	pc.Close()
	return a
}
