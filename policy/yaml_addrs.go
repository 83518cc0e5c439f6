package policy

import (
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// prefix parses a cidr or a bare address (/32 or /128). IPv4-mapped IPv6
// prefixes become IPv4 ones, the form addresses are matched in.
func (l *loader) prefix(n *yaml.Node, s, what string) netip.Prefix {
	var p netip.Prefix
	if t, ok := parseURL(s); ok && what == "cidr" {
		l.errf(n, "%s", urlMessage("cidr", s, t))
		return netip.Prefix{}
	}
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			l.errf(n, "%s %q is not a cidr such as 10.0.0.0/8 or 2001:db8::/32", what, s)
			return netip.Prefix{}
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			l.errf(n, "%s %q is not an address or cidr such as 10.0.0.5 or 10.0.0.0/8", what, s)
			return netip.Prefix{}
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		l.errf(n, "%s %q has bits set after the /%d: write %s (or %s for the address alone)", what, s, p.Bits(), m, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		return netip.Prefix{}
	}
	return p
}

func (l *loader) prefixes(n *yaml.Node, what string) []netip.Prefix {
	var out []netip.Prefix
	for _, item := range l.seq(n, what) {
		if s, ok := l.str(item, what+" entry"); ok {
			if p := l.prefix(l.node(item), s, what+" entry"); p.IsValid() {
				out = append(out, p)
			}
		}
	}
	return out
}

// nat64Prefixes validates nat64_prefixes: IPv6 prefixes of the lengths RFC
// 6052 §2.2 defines, with the u-octet (bits 64-71) zero, in global unicast,
// unique local or the RFC 6052/8215 prefixes, apart from the other forms
// that carry IPv4 addresses and from the metadata addresses, and not
// overlapping each other (an address must have one reading).
func (l *loader) nat64Prefixes(n *yaml.Node) []netip.Prefix {
	const what = "nat64_prefixes entry"
	var out []netip.Prefix
	for _, item := range l.seq(n, "nat64_prefixes") {
		s, ok := l.str(item, what)
		if !ok {
			continue
		}
		item = l.node(item)
		if !strings.Contains(s, "/") {
			if _, err := netip.ParseAddr(s); err == nil {
				l.errf(item, "%s %q needs a length: write %s/96 (or /32, /40, /48, /56, /64)", what, s, s)
				continue
			}
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			l.errf(item, "%s %q is not a cidr such as 64:ff9b::/96", what, s)
			continue
		}
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			l.errf(item, "%s %q is not an IPv6 prefix such as 64:ff9b::/96", what, s)
			continue
		}
		if m := p.Masked(); m != p {
			l.errf(item, "%s %q has bits set after the /%d: write %s", what, s, p.Bits(), m)
			continue
		}
		switch p.Bits() {
		case 32, 40, 48, 56, 64, 96:
		default:
			l.errf(item, "%s %q: the length must be 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)", what, s)
			continue
		}
		if p.Bits() == 96 && p.Addr().As16()[8] != 0 {
			l.errf(item, "%s %q: bits 64-71 (the u-octet) must be zero (RFC 6052 §2.2)", what, s)
			continue
		}
		if !(globalUnicast.Contains(p.Addr()) || uniqueLocal.Contains(p.Addr()) || nat64.Overlaps(p) && p.Bits() >= nat64.Bits() || nat64LocalUse.Overlaps(p) && p.Bits() >= nat64LocalUse.Bits()) {
			l.errf(item, "%s %q must be global unicast (2000::/3), unique local (fc00::/7) or inside 64:ff9b::/96 or 64:ff9b:1::/48", what, s)
			continue
		}
		if msg := nat64Clash(p, out); msg != "" {
			l.errf(item, "%s %q %s", what, s, msg)
			continue
		}
		out = append(out, p)
	}
	return out
}

// nat64Clash says why p cannot be a NAT64 prefix next to the ones already
// declared, or "".
func nat64Clash(p netip.Prefix, declared []netip.Prefix) string {
	for _, f := range []struct {
		name string
		p    netip.Prefix
	}{{"6to4", sixToFour}, {"Teredo", teredo}} {
		if f.p.Overlaps(p) {
			return "overlaps " + f.name + " " + f.p.String()
		}
	}
	for _, g := range guardRanges {
		if g.reason == ReasonGuardMetadata && p.Contains(g.prefix.Addr()) {
			return "contains the metadata address " + g.prefix.Addr().String()
		}
	}
	for _, q := range declared {
		if q.Overlaps(p) {
			return "overlaps " + strconv.Quote(q.String())
		}
	}
	return ""
}

func (l *loader) ports(n *yaml.Node) []PortRange {
	items := l.seq(n, "ports")
	if len(items) == 0 && l.node(n).Kind == yaml.SequenceNode {
		l.errf(l.node(n), "ports is empty: leave ports out to mean any port")
	}
	var out []PortRange
	for _, item := range items {
		item = l.node(item)
		if item.Kind != yaml.ScalarNode || (item.Tag != "!!int" && item.Tag != "!!str") {
			l.errf(item, "a port must be a number or a range such as \"8000-8100\", not %s", kindName(item))
			continue
		}
		s := strings.TrimSpace(item.Value)
		lo, hi, isRange := strings.Cut(s, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := parsePort(lo)
		b, err2 := parsePort(hi)
		switch {
		case err1 != nil || err2 != nil:
			l.errf(item, "port %q: want a number from 1 to 65535 or a range such as \"8000-8100\"", item.Value)
			continue
		case a > b:
			l.errf(item, "port range %q is backwards: write \"%d-%d\"", item.Value, b, a)
			continue
		}
		if a == 0 {
			l.warnf(l.file, item.Line, item.Column, "port 0 is never dialled: remove it (leave ports out to mean any port)")
		}
		out = append(out, PortRange{Lo: a, Hi: b})
	}
	return out
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, strconv.ErrSyntax
	}
	v, err := strconv.ParseUint(s, 10, 16)
	return uint16(v), err
}
