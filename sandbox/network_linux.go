package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
)

// TableName is the nftables table (family inet) Configure installs.
const TableName = "egress"

// Redirect says where Configure sends the namespace's traffic: ports on
// the loopback addresses of the namespace, where egress's listeners are.
type Redirect struct {
	TCP    uint16   // every TCP connection (the transparent listener)
	DNS    uint16   // UDP port 53 (the DNS listener)
	DNSTCP uint16   // TCP port 53 (the DNS listener); 0 means TCP
	Exempt []uint16 // TCP ports on loopback left alone: egress's own listeners
	// LogGroup is the NFLOG group dropped packets are copied to (see
	// OpenDropLog); 0 logs nothing.
	LogGroup uint16
	// Filter, when set, refuses at connect() time the new TCP connections
	// it refuses (see policy.ConnectFilter and addFilterRules); nil sends
	// every TCP connection to TCP.
	Filter *policy.ConnectFilter
}

// Configure sets up the current network namespace, which must be new and
// empty, so that egress is its only way out:
//
//   - lo is up, and the default routes (IPv4 and IPv6) point at it with
//     source 127.0.0.1 and ::1. A connect() to any address then reaches
//     netfilter instead of failing with ENETUNREACH, and every client
//     egress sees has a loopback source address, whatever allow_from says.
//   - nftables (table inet egress) redirects every TCP connection to
//     r.TCP, except those to r.Exempt on loopback, and every DNS query
//     (UDP and TCP port 53) to r.DNS / r.DNSTCP.
//   - Other UDP (QUIC included) is rejected with an ICMP port unreachable,
//     ICMP and other protocols to non-loopback addresses with
//     admin-prohibited, so clients fail at once instead of timing out;
//     each rejected packet is copied to NFLOG group r.LogGroup.
//
// IPv6 is held exactly like IPv4. No packet can leave the namespace
// anyway (it has no other interface): the rules decide where connections
// go inside it and how fast the rest fails.
func Configure(r Redirect) error {
	if err := configureRoutes(); err != nil {
		return err
	}
	return configureNftables(r)
}

func configureRoutes() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	v4 := &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		Src:       net.IPv4(127, 0, 0, 1),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if err := netlink.RouteAdd(v4); err != nil {
		return fmt.Errorf("add IPv4 default route via lo: %w", err)
	}
	v6 := &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		Src:       net.IPv6loopback,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if err := netlink.RouteAdd(v6); err != nil && !ipv6Disabled(err) {
		return fmt.Errorf("add IPv6 default route via lo: %w", err)
	}
	return nil
}

// ipv6Disabled reports whether err means the kernel has no IPv6 (booted
// with ipv6.disable=1): then there is no IPv6 way out to hold either.
func ipv6Disabled(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)
}

func configureNftables(r Redirect) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	dnsTCP := r.DNSTCP
	if dnsTCP == 0 {
		dnsTCP = r.TCP
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})

	// NAT at output: where connections go.
	nat := c.AddChain(&nftables.Chain{
		Name: "redirect", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest,
	})
	for _, p := range r.Exempt {
		for _, fam := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
			c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(
				loopbackDst(fam), l4(unix.IPPROTO_TCP), dport(p), verdict(expr.VerdictAccept))})
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(
		l4(unix.IPPROTO_UDP), dport(53), redirectTo(r.DNS))})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(
		l4(unix.IPPROTO_TCP), dport(53), redirectTo(dnsTCP))})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(
		l4(unix.IPPROTO_TCP), redirectTo(r.TCP))})

	// Filter before NAT (priority -150, after conntrack at -200): what is
	// refused. Destinations here are the original ones.
	filter := c.AddChain(&nftables.Chain{
		Name: "refuse", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(-150),
		Policy: ptr(nftables.ChainPolicyAccept),
	})
	logged := func(prefix string) []expr.Any {
		if r.LogGroup == 0 {
			return nil
		}
		return []expr.Any{&expr.Log{
			Key:     1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN,
			Group:   r.LogGroup,
			Data:    []byte(prefix),
			Snaplen: 128, // IP and transport headers are all we read
		}}
	}
	accept := func(e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: concat(append(e, verdict(expr.VerdictAccept))...)})
	}
	if r.Filter != nil {
		if err := addFilterRules(c, t, filter, r.Filter, r.Exempt, logged); err != nil {
			return err
		}
	}
	accept(l4(unix.IPPROTO_TCP))
	accept(l4(unix.IPPROTO_UDP), dport(53))
	accept(loopbackDst(unix.NFPROTO_IPV4))
	accept(loopbackDst(unix.NFPROTO_IPV6))
	c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: concat(
		l4(unix.IPPROTO_UDP), []expr.Any{&expr.Counter{}}, logged("udp"),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: concat(
		[]expr.Any{&expr.Counter{}}, logged("other"),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}})})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables rules: %w", err)
	}
	return nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// l4 matches the transport protocol.
func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// dport matches the transport destination port (TCP and UDP both keep it
// at offset 2).
func dport(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(p)},
	}
}

// loopbackDst matches family fam and a loopback destination: 127.0.0.0/8
// or ::1.
func loopbackDst(fam byte) []expr.Any {
	m := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
	}
	if fam == unix.NFPROTO_IPV4 {
		return append(m,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 0}},
		)
	}
	return append(m,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.IPv6loopback},
	)
}

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: be16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}
