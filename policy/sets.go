package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// Dest is a range of destinations: the addresses of Prefix on Ports (empty
// Ports: every port).
type Dest struct {
	Prefix netip.Prefix
	Ports  []PortRange
}

// ConnectFilter describes the policy to a filter that sees only the
// destination address and port of a new TCP connection, such as the
// nftables rules in front of egress run's transparent listener, so that it
// can refuse at connect() time what the transparent path would refuse
// after accepting.
//
// It errs on the side of passing: every destination the transparent path
// could allow passes (it then decides exactly, on the name the connection
// carries), and only destinations it always refuses are refused. A filter
// applies it in this order, the first that matches deciding:
//
//  1. a destination an address lease covers passes (see NamePorts: the
//     addresses egress's DNS returned for names that could be allowed);
//  2. a destination in Allow passes;
//  3. a destination in RefuseCarried is refused;
//  4. a destination in Carriers passes;
//  5. with RefuseRest, everything else is refused; without it, a
//     destination in Refuse is refused and the rest passes.
type ConnectFilter struct {
	RefuseRest bool
	Allow      []Dest
	// RefuseCarried are the IPv6 forms (NAT64 under the well-known and
	// the declared prefixes, SIIT, IPv4-compatible, 6to4) of the IPv4
	// ranges in Refuse: the same hosts, reached through a translator
	// (issue 18). IPv4-mapped addresses need none: they are IPv4 on the
	// wire.
	RefuseCarried []Dest
	// Carriers are the IPv6 ranges decided on the IPv4 address they
	// carry that lie in a guarded range (::/3, or wherever an operator's
	// NAT64 prefix is): what RefuseCarried leaves of them passes, and the
	// transparent path decides on the IPv4 address.
	Carriers []Dest
	Refuse   []Dest
}

// ConnectFilter returns the policy's connect filter, for every client
// policy at once (a filter that does not tell clients apart must pass what
// any of them could allow).
func (p *Policy) ConnectFilter() ConnectFilter {
	sets := append([]*ruleset{&p.top}, p.clientSets...)
	f := ConnectFilter{RefuseRest: true}
	for _, rs := range sets {
		if rs.passesUnlisted() {
			f.RefuseRest = false
		}
		for _, r := range rs.rules {
			if r.Host == "" && r.Action == Allow {
				f.Allow = append(f.Allow, Dest{Prefix: r.Prefix, Ports: r.Ports})
			}
		}
	}
	if f.RefuseRest {
		return f
	}
	// A cidr allow rule on an IPv4 range lifts its guard for the IPv6
	// forms that carry it too, and the rest passes by default: they come
	// before the refusals of those forms.
	for _, d := range f.Allow {
		f.Allow = append(f.Allow, carriedDests(d, p.NAT64Prefixes)...)
	}
	// The guards hold for every client policy. A guard lifted by a cidr
	// rule is in Allow, checked first; one lifted by an exact host rule
	// is covered by the leases of that name's addresses.
	for _, g := range guardRanges {
		f.Refuse = append(f.Refuse, Dest{Prefix: g.prefix})
	}
	// A cidr deny rule refuses for sure only when every client policy
	// enforces it: with one policy, when that policy is enforced.
	if len(sets) == 1 && p.top.mode == Enforce {
		for _, r := range p.top.rules {
			if r.Host == "" && r.Action == Deny {
				f.Refuse = append(f.Refuse, Dest{Prefix: r.Prefix, Ports: r.Ports})
			}
		}
	}
	for _, d := range f.Refuse {
		f.RefuseCarried = append(f.RefuseCarried, carriedDests(d, p.NAT64Prefixes)...)
	}
	f.Carriers = translatedDests(p.NAT64Prefixes)
	return f
}

// carriedDests returns the IPv6 forms of d, on d's ports, when d is an
// IPv4 range (see carrierPrefixes); nothing otherwise.
func carriedDests(d Dest, declared []netip.Prefix) []Dest {
	var out []Dest
	for _, p := range carrierPrefixes(d.Prefix, declared) {
		out = append(out, Dest{Prefix: p, Ports: d.Ports})
	}
	return out
}

// translatedDests are the IPv6 ranges decided on the IPv4 address they
// carry (see embedded) that a guard range covers: NAT64 (the well-known
// prefix and the declared ones), SIIT, and IPv4-compatible addresses apart
// from ::0.0.0.0/104 (::, ::1 and 0.0.0.0/8, all guarded on their own).
// IPv4-mapped addresses are IPv4 on the wire; 6to4 is in no guard range.
func translatedDests(declared []netip.Prefix) []Dest {
	out := []Dest{{Prefix: nat64}, {Prefix: siit}}
	for bits := 97; bits <= 104; bits++ {
		// ::1.0.0.0/104, ::2.0.0.0/103, ... ::128.0.0.0/97.
		b := [16]byte{}
		b[12] = 1 << (104 - bits)
		out = append(out, Dest{Prefix: netip.PrefixFrom(netip.AddrFrom16(b), bits)})
	}
	for _, p := range declared {
		out = append(out, Dest{Prefix: p})
	}
	return out
}

// passesUnlisted reports whether a connection no rule names can be let
// through: default allow, or audit mode (which lets rule denials through).
func (rs *ruleset) passesUnlisted() bool { return rs.def == Allow || rs.mode == Audit }

// NamePorts returns the ports on which a connection to an address of name
// could be allowed for client, when egress's DNS answers name with that
// address: the ports of every allow rule that matches name, whether or not
// a more specific rule overrides it (a superset, like ConnectFilter). all
// is true when any port could be; ok is false when none could (then the
// address needs no lease: its connections are refused, or passed by
// ConnectFilter's Allow, on their own).
func (p *Policy) NamePorts(client netip.Addr, name string) (ports []PortRange, all, ok bool) {
	rs := p.rulesetFor(client, "")
	n, _, err := NormalizeHost(name)
	if err != nil || n == "" {
		return nil, false, false
	}
	if rs.passesUnlisted() {
		return nil, true, true
	}
	rs.names.each(n, func(c crule) {
		if c.r.Action != Allow {
			return
		}
		ok = true
		if len(c.r.Ports) == 0 {
			all = true
		}
		ports = append(ports, c.r.Ports...)
	})
	if all {
		ports = nil
	}
	return ports, all, ok
}

// each calls fn for every pattern that matches the unconsumed labels rem
// of a name, whatever its port.
func (n *nameNode) each(rem string, fn func(crule)) {
	if rem == "" {
		for _, c := range n.here {
			fn(c)
		}
		return
	}
	for _, c := range n.below {
		fn(c)
	}
	label, next := rem, ""
	if i := strings.LastIndexByte(rem, '.'); i >= 0 {
		label, next = rem[i+1:], rem[:i]
	}
	if c := n.children[label]; c != nil {
		c.each(next, fn)
	}
	if n.star != nil {
		n.star.each(next, fn)
	}
}

// Refuses reports whether the filter could refuse a connection to addr on
// some port, leases aside: whether a lease on addr changes anything.
func (f *ConnectFilter) Refuses(addr netip.Addr) bool {
	if f.RefuseRest {
		return true
	}
	addr = addr.Unmap()
	for _, d := range slices.Concat(f.Refuse, f.RefuseCarried) {
		if d.Prefix.Contains(addr) {
			return true
		}
	}
	return false
}
