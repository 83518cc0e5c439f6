//go:build !linux

package transparent

import "net"

// whileUpstreamSilent is c itself here: the reader of the first bytes
// waits its timeout for a client whose server speaks first.
func whileUpstreamSilent(c *net.TCPConn, up net.Conn) (_ net.Conn, stop func()) {
	return c, func() {}
}
