//go:build !linux

package firewall

import (
	"errors"
	"net/netip"
	"time"

	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/policy"
)

// HostTable is the nftables table a Host owns on Linux.
const HostTable = "egress_connect"

// MaxRules bounds the rules of a filter (see Check).
const MaxRules = 4096

// Host is the connect filter of egress serve; it needs Linux (nftables).
type Host struct{ HoldError string }

// HostConfig says whose connections to filter.
type HostConfig struct {
	UIDs   []uint32
	Exempt []uint16
	Filter policy.ConnectFilter
	Hold   bool
}

// InstallHost fails: the connect filter needs Linux (nftables).
func InstallHost(HostConfig) (*Host, error) {
	return nil, errors.New("connect filter: needs Linux (nftables)")
}

func (h *Host) Update(policy.ConnectFilter) error { return nil }
func (h *Host) Lease(netip.Addr, []policy.PortRange, bool, time.Duration) error {
	return errors.New("connect filter: needs Linux (nftables)")
}
func (h *Host) ReadRefusals(func(nflog.Packet)) {}
func (h *Host) Close() error                    { return nil }
func (h *Host) Queue() *nfqueue.Queue           { return nil }
