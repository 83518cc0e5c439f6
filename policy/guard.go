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
// metadata endpoints.
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

// nat64 and sixToFour embed an IPv4 address; ipv4Compat is the deprecated
// IPv4-compatible form ::a.b.c.d.
var (
	nat64      = mustPrefix("64:ff9b::/96") // RFC 6052
	sixToFour  = mustPrefix("2002::/16")    // RFC 3056
	ipv4Compat = mustPrefix("::/96")        // RFC 4291 §2.5.5.1 (deprecated)
	metaNames  = map[string]bool{
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

// guardAddr returns the address the guards look at: the IPv4 address
// embedded in an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 address, else
// ip itself.
func guardAddr(ip netip.Addr) netip.Addr {
	if ip.Is4In6() {
		return ip.Unmap()
	}
	if !ip.Is6() {
		return ip
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip), ipv4Compat.Contains(ip) && !(b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] <= 1):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	}
	return ip
}

// guardOf returns the guard that refuses ip (zone-free), the guarded range
// and the address it was found on (the embedded IPv4 address, if any). ok is
// false for a globally reachable address.
func guardOf(ip netip.Addr) (reason Reason, rng netip.Prefix, at netip.Addr, ok bool) {
	at = guardAddr(ip)
	for _, g := range guardsByFamily[family(at)] {
		if g.prefix.Contains(at) {
			return g.reason, g.prefix, at, true
		}
	}
	return "", netip.Prefix{}, at, false
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
