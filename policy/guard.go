package policy

import (
	"net/netip"
	"sort"
	"strings"
)

// guardRange is one guarded address range and the reason it is refused.
type guardRange struct {
	prefix netip.Prefix
	reason Reason
}

// guardRanges lists every guarded range. When ranges overlap the most
// specific one applies (metadata addresses inside link-local or CGNAT).
// Sources: IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890),
// entries whose "Globally Reachable" is False, plus multicast and the cloud
// metadata endpoints; for IPv6, everything outside global unicast 2000::/3.
// Every guard is a prefix here: ConnectFilter hands this list to the kernel.
var guardRanges = []guardRange{
	// Cloud metadata services.
	{mustPrefix("169.254.169.254/32"), ReasonGuardMetadata}, // AWS, GCP, Azure, OpenStack, ...
	{mustPrefix("169.254.170.2/32"), ReasonGuardMetadata},   // AWS ECS task metadata
	{mustPrefix("fd00:ec2::254/128"), ReasonGuardMetadata},  // AWS IMDS over IPv6
	{mustPrefix("100.100.100.200/32"), ReasonGuardMetadata}, // Alibaba Cloud
	{mustPrefix("fd20:ce::254/128"), ReasonGuardMetadata},   // GCP metadata over IPv6
	{mustPrefix("168.63.129.16/32"), ReasonGuardMetadata},   // Azure WireServer (a public address reachable only from Azure VMs)

	{mustPrefix("127.0.0.0/8"), ReasonGuardLoopback}, // RFC 1122
	{mustPrefix("::1/128"), ReasonGuardLoopback},     // RFC 4291

	{mustPrefix("10.0.0.0/8"), ReasonGuardPrivate},     // RFC 1918
	{mustPrefix("172.16.0.0/12"), ReasonGuardPrivate},  // RFC 1918
	{mustPrefix("192.168.0.0/16"), ReasonGuardPrivate}, // RFC 1918
	{mustPrefix("fc00::/7"), ReasonGuardPrivate},       // RFC 4193 unique local

	{mustPrefix("169.254.0.0/16"), ReasonGuardLinkLocal}, // RFC 3927
	{mustPrefix("fe80::/10"), ReasonGuardLinkLocal},      // RFC 4291

	{mustPrefix("100.64.0.0/10"), ReasonGuardCGNAT}, // RFC 6598

	{mustPrefix("224.0.0.0/4"), ReasonGuardMulticast}, // RFC 5771
	{mustPrefix("ff00::/8"), ReasonGuardMulticast},    // RFC 4291

	{mustPrefix("0.0.0.0/8"), ReasonGuardSpecial},          // RFC 791 "this network"
	{mustPrefix("192.0.0.0/24"), ReasonGuardSpecial},       // RFC 6890 IETF protocol assignments
	{mustPrefix("192.0.2.0/24"), ReasonGuardSpecial},       // RFC 5737 TEST-NET-1
	{mustPrefix("192.88.99.0/24"), ReasonGuardSpecial},     // RFC 7526 deprecated 6to4 relay anycast
	{mustPrefix("198.18.0.0/15"), ReasonGuardSpecial},      // RFC 2544 benchmarking
	{mustPrefix("198.51.100.0/24"), ReasonGuardSpecial},    // RFC 5737 TEST-NET-2
	{mustPrefix("203.0.113.0/24"), ReasonGuardSpecial},     // RFC 5737 TEST-NET-3
	{mustPrefix("240.0.0.0/4"), ReasonGuardSpecial},        // RFC 1112 reserved
	{mustPrefix("255.255.255.255/32"), ReasonGuardSpecial}, // RFC 919 limited broadcast

	{mustPrefix("::/128"), ReasonGuardSpecial},         // RFC 4291 unspecified
	{mustPrefix("100::/64"), ReasonGuardSpecial},       // RFC 6666 discard-only
	{mustPrefix("100:0:0:1::/64"), ReasonGuardSpecial}, // RFC 9780 dummy prefix
	{mustPrefix("2001::/23"), ReasonGuardSpecial},      // RFC 2928 IETF protocol assignments (Teredo 2001::/32, 2001:2::/48, ORCHID, ...)
	{mustPrefix("2001:db8::/32"), ReasonGuardSpecial},  // RFC 3849 documentation
	{mustPrefix("3fff::/20"), ReasonGuardSpecial},      // RFC 9637 documentation
	{mustPrefix("5f00::/16"), ReasonGuardSpecial},      // RFC 9602 SRv6 SIDs
	{mustPrefix("64:ff9b:1::/48"), ReasonGuardSpecial}, // RFC 8215 local-use IPv4/IPv6 translation

	// IPv6 outside global unicast 2000::/3 (RFC 4291 §2.4): reserved by
	// the IETF or unassigned, public nowhere. What lies inside these and
	// has a reason of its own (fc00::/7, fe80::/10, ff00::/8, ::1, ...)
	// is listed above and wins as the longer prefix. The forms that carry
	// an IPv4 address (::a.b.c.d, ::ffff:0:a.b.c.d, 64:ff9b::/96) are
	// decided on that address instead (see embedded).
	{mustPrefix("::/3"), ReasonGuardSpecial},      // RFC 4291 reserved and unassigned
	{mustPrefix("4000::/2"), ReasonGuardSpecial},  // unassigned
	{mustPrefix("8000::/1"), ReasonGuardSpecial},  // unassigned, and the ranges below
	{mustPrefix("fec0::/10"), ReasonGuardSpecial}, // RFC 3879 deprecated site-local
}

// guardsByFamily holds guardRanges per address family, longest prefix
// first: the first range that contains an address is the most specific
// one. A linear scan of a few dozen prefixes beats hashing.
var guardsByFamily = func() (fam [2][]guardRange) {
	for _, g := range guardRanges {
		f := family(g.prefix.Addr())
		fam[f] = append(fam[f], g)
	}
	for f := range fam {
		sort.SliceStable(fam[f], func(i, j int) bool { return fam[f][i].prefix.Bits() > fam[f][j].prefix.Bits() })
	}
	return fam
}()

// Forms of IPv6 address that carry an IPv4 address. A packet to one of
// them reaches the IPv4 host it carries through a translator, a relay or a
// tunnel, so the guards and the cidr rules are checked on that IPv4 address
// too (see embedded).
var (
	ipv4Compat    = mustPrefix("::/96")           // RFC 4291 §2.5.5.1 IPv4-compatible (deprecated)
	siit          = mustPrefix("::ffff:0:0:0/96") // RFC 2765 §2.1 IPv4-translated, ::ffff:0:a.b.c.d
	nat64         = mustPrefix("64:ff9b::/96")    // RFC 6052 §2.1 well-known prefix
	nat64LocalUse = mustPrefix("64:ff9b:1::/48")  // RFC 8215 local-use prefix
	sixToFour     = mustPrefix("2002::/16")       // RFC 3056
	teredo        = mustPrefix("2001::/32")       // RFC 4380
	globalUnicast = mustPrefix("2000::/3")        // RFC 4291 §2.4
	uniqueLocal   = mustPrefix("fc00::/7")        // RFC 4193
	metaNames     = map[string]bool{
		"metadata":                     true, // GCP short name
		"metadata.google.internal":     true,
		"metadata.goog":                true,
		"instance-data":                true, // AWS
		"instance-data.ec2.internal":   true,
		"metadata.azure.com":           true,
		"metadata.tencentyun.com":      true,
		"metadata.platformequinix.com": true,
	}
)

// carried is what an IPv6 address says about the IPv4 hosts it reaches: up
// to two IPv4 addresses (Teredo's server and client), and whether the IPv6
// address is judged on its own as well.
type carried struct {
	v4 [2]netip.Addr
	n  int
	// translated is true for a form that is only a spelling of the IPv4
	// address behind a translator (IPv4-compatible, SIIT, NAT64 with the
	// well-known or a declared prefix, 6to4): the address is as public as
	// the IPv4 address it carries, and the guard on its own range (::/3,
	// or the documentation range an operator's NAT64 prefix sits in) does
	// not apply. Otherwise (Teredo, the local-use NAT64 prefix) the IPv6
	// address keeps its own guard too.
	translated bool
}

// embedded returns the IPv4 addresses ip carries, with nat64 the NAT64
// prefixes the operator declared (RFC 6052 lengths, validated at load). An
// IPv4 address carries nothing.
func embedded(ip netip.Addr, declared []netip.Prefix) (c carried) {
	if !ip.Is6() {
		return c
	}
	if ip.Is4In6() {
		return carried{v4: [2]netip.Addr{ip.Unmap()}, n: 1, translated: true}
	}
	b := ip.As16()
	for _, p := range declared {
		if p.Contains(ip) {
			return carried{v4: [2]netip.Addr{rfc6052IPv4(b, p.Bits())}, n: 1, translated: true}
		}
	}
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case nat64.Contains(ip), siit.Contains(ip):
		return carried{v4: [2]netip.Addr{last}, n: 1, translated: true}
	case ipv4Compat.Contains(ip):
		// :: and ::1 are the unspecified and loopback addresses, not
		// IPv4-compatible ones.
		if b[12]|b[13]|b[14] == 0 && b[15] <= 1 {
			return c
		}
		return carried{v4: [2]netip.Addr{last}, n: 1, translated: true}
	case nat64LocalUse.Contains(ip):
		// RFC 8215 §3: a network may use a longer prefix inside it; one
		// that does declares it in nat64_prefixes (checked above).
		return carried{v4: [2]netip.Addr{rfc6052IPv4(b, 48)}, n: 1}
	case sixToFour.Contains(ip):
		return carried{v4: [2]netip.Addr{netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})}, n: 1, translated: true}
	case teredo.Contains(ip):
		// RFC 4380 §4: the server's IPv4 address in bits 32-63, the
		// client's (its NAT's external address) in bits 96-127, inverted.
		return carried{v4: [2]netip.Addr{
			netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}),
			netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}),
		}, n: 2}
	}
	return c
}

// carrierPrefixes returns the prefixes of the IPv6 addresses that carry an
// address of p, an IPv4 range, and are decided on it (see embedded's
// translated forms): under NAT64's well-known prefix, SIIT's,
// IPv4-compatible, 6to4's and each declared NAT64 prefix (RFC 6052 §2.2,
// the u-octet left zero: the prefix stops after p's last bit). An IPv6
// range carries nothing.
func carrierPrefixes(p netip.Prefix, declared []netip.Prefix) []netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if !p.Addr().Is4() {
		return nil
	}
	p = p.Masked()
	v4, n := p.Addr().As4(), p.Bits()
	under := func(base netip.Prefix) netip.Prefix {
		b := base.Masked().Addr().As16()
		pos := rfc6052Bytes(base.Bits())
		for i := 0; i < (n+7)/8; i++ {
			b[pos[i]] = v4[i]
		}
		end := base.Bits()
		if n > 0 {
			end = pos[(n-1)/8]*8 + (n-1)%8 + 1
		}
		return netip.PrefixFrom(netip.AddrFrom16(b), end)
	}
	out := []netip.Prefix{under(nat64), under(siit), under(ipv4Compat), under(sixToFour)}
	for _, d := range declared {
		out = append(out, under(d))
	}
	return out
}

// rfc6052IPv4 extracts the IPv4 address from an address under a NAT64
// prefix of bits (32, 40, 48, 56, 64 or 96): RFC 6052 §2.2 puts it right
// after the prefix, skipping bits 64-71 (the u-octet).
func rfc6052IPv4(b [16]byte, bits int) netip.Addr {
	var v [4]byte
	for i, j := range rfc6052Bytes(bits) {
		v[i] = b[j]
	}
	return netip.AddrFrom4(v)
}

// rfc6052Bytes are the bytes of an IPv6 address under a prefix of bits
// that hold the IPv4 address's four (RFC 6052 §2.2: byte 8, bits 64 to
// 71, is skipped).
func rfc6052Bytes(bits int) (pos [4]int) {
	j := bits / 8
	for i := range pos {
		if j == 8 {
			j++
		}
		pos[i] = j
		j++
	}
	return pos
}

// guardHit is one guard that refuses an address: the reason, the guarded
// range and the address it was found on (an IPv4 address ip carries, or ip).
type guardHit struct {
	reason Reason
	rng    netip.Prefix
	at     netip.Addr
}

// guardHits returns the guards that refuse ip (zone-free, IPv4-mapped
// already unmapped), with c what it carries: each IPv4 address carried
// first, then ip's own range unless c is a translated form. n is 0 for a
// globally reachable address.
func guardHits(ip netip.Addr, c carried) (hits [3]guardHit, n int) {
	for i := 0; i < c.n; i++ {
		if reason, rng, ok := guardOf(c.v4[i]); ok {
			hits[n] = guardHit{reason, rng, c.v4[i]}
			n++
		}
	}
	if !c.translated {
		if reason, rng, ok := guardOf(ip); ok {
			hits[n] = guardHit{reason, rng, ip}
			n++
		}
	}
	return hits, n
}

// guardOf returns the guard on ip's own range (the most specific one) and
// that range; ok is false outside every guarded range. It looks at ip
// alone: see guardHits for the addresses ip carries.
func guardOf(ip netip.Addr) (reason Reason, rng netip.Prefix, ok bool) {
	ip = ip.Unmap()
	for _, g := range guardsByFamily[family(ip)] {
		if g.prefix.Contains(ip) {
			return g.reason, g.prefix, true
		}
	}
	return "", netip.Prefix{}, false
}

// guardOpens says what lifting a guard opens to a client, for the hints
// and lint warnings that would lift one: an operator pasting a rule must
// see that it is not an ordinary allow.
var guardOpens = map[Reason]string{
	ReasonGuardMetadata:  "opens the cloud's metadata service and its credentials",
	ReasonGuardLoopback:  "opens this host's own services",
	ReasonGuardPrivate:   "opens your internal network",
	ReasonGuardLinkLocal: "opens hosts on the local link",
	ReasonGuardCGNAT:     "opens the carrier's or cloud's shared address space",
	ReasonGuardMulticast: "opens a multicast group",
	ReasonGuardSpecial:   "opens an address that is not on the public internet",
}

// HintLifts says what the hint of a guard's refusal opens when pasted:
// "lifts guard_loopback: opens this host's own services". "" for a
// decision whose hint lifts no guard. An operator pasting a hint must see
// that it is not an ordinary allow (issue 21).
func (d Decision) HintLifts() string {
	if d.Hint == "" || !d.Reason.IsGuard() || guardOpens[d.Reason] == "" {
		return ""
	}
	return "lifts " + string(d.Reason) + ": " + guardOpens[d.Reason]
}

// isLoopbackName reports whether name (normal form) is localhost or a name
// under .localhost, which RFC 6761 §6.3 reserves for loopback: whatever a
// resolver says, such a name means this host.
func isLoopbackName(name string) bool {
	return name == "localhost" || strings.HasSuffix(name, ".localhost")
}

// isMetadataName reports whether name (normal form) is a cloud metadata
// service name.
func isMetadataName(name string) bool { return metaNames[name] }

func mustPrefix(s string) netip.Prefix {
	p := netip.MustParsePrefix(s)
	if p != p.Masked() {
		panic("policy: unmasked prefix " + s)
	}
	return p
}
