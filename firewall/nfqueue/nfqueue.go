// Package nfqueue holds the SYN of a new TCP connection in an NFQUEUE
// queue until egress has a verdict for it: the packets a rule sends to the
// queue (the xtables NFQUEUE target through nft_compat, see Target; the
// nftables queue statement needs CONFIG_NFT_QUEUE, which kernels often
// leave out) are read here, and each is accepted (with a mark, which
// later rules may answer with a reset or an ICMP error) or dropped. It
// opens the netlink socket, parses the packets' addresses and sends
// verdicts; what to decide is up to its caller.
package nfqueue

import "net/netip"

// Packet is one held packet: a TCP SYN, by its addresses.
type Packet struct {
	ID  uint32
	Src netip.AddrPort
	Dst netip.AddrPort
}

// Verdict is what becomes of a held packet.
type Verdict struct {
	Accept bool
	// Mark, when not zero, is set on an accepted packet, for later rules.
	Mark uint32
}
