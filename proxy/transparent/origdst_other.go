//go:build !linux

package transparent

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst needs netfilter's SO_ORIGINAL_DST: on other systems set
// Server.OriginalDst (for example from a PF or TPROXY lookup).
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: only supported on Linux (netfilter)")
}
