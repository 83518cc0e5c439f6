//go:build linux

package firewall

import (
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// NewConn opens an nftables connection in the current network namespace
// whose batches may hold many rules: the kernel acknowledges each message
// of a batch, and an acknowledgement that quotes its message (the default)
// fills the socket's receive buffer after a few hundred rules (ENOBUFS).
// NETLINK_CAP_ACK leaves the quotes out.
func NewConn() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithSockOptions(func(nc *netlink.Conn) error {
		return nc.SetOption(netlink.CapAcknowledge, true)
	}))
	return c, err
}
