package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/firewall/nftexpr"
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
	// it refuses (see firewall.AddRules); nil sends every TCP connection
	// to TCP.
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
	c, err := firewall.NewConn()
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
			c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: nftexpr.Concat(
				nftexpr.LoopbackDst(fam), nftexpr.L4(unix.IPPROTO_TCP), nftexpr.DPort(p), nftexpr.Verdict(expr.VerdictAccept))})
		}
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_UDP), nftexpr.DPort(53), nftexpr.RedirectTo(r.DNS))})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_TCP), nftexpr.DPort(53), nftexpr.RedirectTo(dnsTCP))})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_TCP), nftexpr.RedirectTo(r.TCP))})

	// Filter before NAT (priority -150, after conntrack at -200): what is
	// refused. Destinations here are the original ones.
	policyAccept := nftables.ChainPolicyAccept
	filter := c.AddChain(&nftables.Chain{
		Name: "refuse", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRef(-150),
		Policy: &policyAccept,
	})
	logged := func(prefix string) []expr.Any { return nftexpr.Log(r.LogGroup, prefix) }
	accept := func(e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: nftexpr.Concat(append(e, nftexpr.Verdict(expr.VerdictAccept))...)})
	}
	if r.Filter != nil {
		if err := firewall.AddRules(c, t, filter, r.Filter, r.Exempt, r.LogGroup); err != nil {
			return err
		}
	}
	accept(nftexpr.L4(unix.IPPROTO_TCP))
	accept(nftexpr.L4(unix.IPPROTO_UDP), nftexpr.DPort(53))
	accept(nftexpr.LoopbackDst(unix.NFPROTO_IPV4))
	accept(nftexpr.LoopbackDst(unix.NFPROTO_IPV6))
	c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: nftexpr.Concat(
		nftexpr.L4(unix.IPPROTO_UDP), []expr.Any{&expr.Counter{}}, logged("udp"),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: nftexpr.Concat(
		[]expr.Any{&expr.Counter{}}, logged("other"),
		[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}})})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables rules: %w", err)
	}
	return nil
}

// configureHold adds the chains that hold each new connection's SYN in
// queue holdQueue to the table Configure made, and opens the queue. It
// fails where the kernel has no NFQUEUE target (nft_compat and
// xt_NFQUEUE) or nfnetlink_queue; nothing is then held.
func configureHold(exempt []uint16) (*os.File, error) {
	// The socket is bound first: a SYN sent between the rules and the
	// bind would be accepted unheld (bypass), not lost.
	f, err := nfqueue.Open(holdQueue)
	if err != nil {
		return nil, err
	}
	c, err := firewall.NewConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	firewall.AddHold(c, t, holdQueue, exempt, nil)
	if err := c.Flush(); err != nil {
		f.Close()
		return nil, fmt.Errorf("install the NFQUEUE rules (needs nft_compat and xt_NFQUEUE): %w", err)
	}
	return f, nil
}
