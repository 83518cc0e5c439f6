// Package nflog reads the packets nftables rules copy to an NFLOG group
// (the log statement's group): egress's own refusals, which it reports
// like any other denial. It opens the netlink socket and parses packets;
// what the rules log is up to their author.
package nflog

import "net/netip"

// Packet is one logged packet.
type Packet struct {
	Proto string         // "tcp", "udp", "icmp", "ipv6-icmp" or the protocol number
	Src   netip.AddrPort // the sender; port 0 when the protocol has none
	Dst   netip.AddrPort // port 0 when the protocol has none
}

// String is "PROTO DST".
func (d Packet) String() string {
	if d.Dst.Port() == 0 {
		return d.Proto + " " + d.Dst.Addr().String()
	}
	return d.Proto + " " + d.Dst.String()
}
