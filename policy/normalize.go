package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// ErrInvalidHost is wrapped by every NormalizeHost error.
var ErrInvalidHost = errors.New("invalid host")

// maxNameLen is the longest name in presentation form without the trailing
// dot (RFC 1035 §2.3.4: 255 octets on the wire).
const maxNameLen = 253

// NormalizeHost returns the normal form of a host as a client may spell it:
// a lowercase ASCII name without trailing dot (IDNs in punycode), or, when
// it is an IP literal in any form, the zero name and the address.
//
// Every spelling a resolver or a URL parser would turn into an address is
// turned into that address here, so that a rule or guard cannot be bypassed
// by spelling: "2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1" (the
// inet_aton forms, WHATWG URL §3.5), "[::1]", "fe80::1%eth0" (the zone is
// dropped), "::ffff:127.0.0.1" (returned as the IPv4 address). A name whose
// last label is a number must be such a literal (WHATWG "ends in a number"),
// so "1.2.3.4.5" is refused rather than sent to a resolver.
//
// For a name already in normal form it does not allocate.
func NormalizeHost(s string) (name string, ip netip.Addr, err error) {
	if s == "" {
		return "", netip.Addr{}, fmt.Errorf("%w: empty", ErrInvalidHost)
	}
	// Brackets: an IPv6 literal as written in a URL authority.
	if s[0] == '[' {
		if len(s) < 2 || s[len(s)-1] != ']' {
			return "", netip.Addr{}, fmt.Errorf("%w %q: unbalanced brackets", ErrInvalidHost, s)
		}
		ip, ok := parseIPv6Literal(s[1 : len(s)-1])
		if !ok {
			return "", netip.Addr{}, fmt.Errorf("%w %q: not an IPv6 address", ErrInvalidHost, s)
		}
		return "", ip, nil
	}
	if strings.IndexByte(s, ':') >= 0 {
		ip, ok := parseIPv6Literal(s)
		if !ok {
			return "", netip.Addr{}, fmt.Errorf("%w %q: a name cannot contain ':'", ErrInvalidHost, s)
		}
		return "", ip, nil
	}
	if !isASCII(s) {
		// IDNA 2008 with UTS #46 mapping, as browsers look names up: case
		// folding, full-width dots and digits, then punycode.
		a, err := idna.Lookup.ToASCII(s)
		if err != nil {
			return "", netip.Addr{}, fmt.Errorf("%w %q: %v", ErrInvalidHost, s, err)
		}
		if !isASCII(a) {
			return "", netip.Addr{}, fmt.Errorf("%w %q", ErrInvalidHost, s)
		}
		s = a
		if strings.IndexByte(s, ':') >= 0 || strings.IndexByte(s, '[') >= 0 {
			return "", netip.Addr{}, fmt.Errorf("%w %q", ErrInvalidHost, s)
		}
	}
	if n := len(s); n > 1 && s[n-1] == '.' {
		s = s[:n-1]
	}
	if ip, isNum, ok := parseIPv4Literal(s); isNum {
		if !ok {
			return "", netip.Addr{}, fmt.Errorf("%w %q: ends in a number but is not an IPv4 address", ErrInvalidHost, s)
		}
		return "", ip, nil
	}
	if err := checkName(s, false); err != nil {
		return "", netip.Addr{}, fmt.Errorf("%w %q: %v", ErrInvalidHost, s, err)
	}
	return lowerASCII(s), netip.Addr{}, nil
}

// parseIPv6Literal parses an IPv6 address with an optional zone ("%eth0", or
// "%25eth0" as in a URL) and returns it without the zone, IPv4-mapped
// addresses unmapped. A zone never makes an address less guarded.
func parseIPv6Literal(s string) (netip.Addr, bool) {
	if i := strings.IndexByte(s, '%'); i >= 0 {
		if i == len(s)-1 {
			return netip.Addr{}, false
		}
		s = s[:i]
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is6() {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// parseIPv4Literal parses the IPv4 forms inet_aton(3) and WHATWG URL accept:
// one to four parts, each decimal, octal (leading 0) or hex (0x). isNum
// reports whether the last label is a number at all, in which case s must
// be an address (ok) or is invalid.
func parseIPv4Literal(s string) (ip netip.Addr, isNum, ok bool) {
	last := s
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		last = s[i+1:]
	}
	// WHATWG URL "ends in a number": all decimal digits, or a number in
	// any base. "008" ends in a number but is no address: refused.
	if _, good := parseNumber(last); !good && !allDigits(last) {
		return netip.Addr{}, false, false
	}
	var parts [4]uint64
	n := 0
	for rest := s; ; {
		i := strings.IndexByte(rest, '.')
		label := rest
		if i >= 0 {
			label = rest[:i]
		}
		if n == 4 {
			return netip.Addr{}, true, false
		}
		v, good := parseNumber(label)
		if !good {
			return netip.Addr{}, true, false
		}
		parts[n] = v
		n++
		if i < 0 {
			break
		}
		rest = rest[i+1:]
	}
	var v uint64
	for i := 0; i < n-1; i++ {
		if parts[i] > 255 {
			return netip.Addr{}, true, false
		}
		v |= parts[i] << (24 - 8*uint(i))
	}
	if parts[n-1] >= 1<<(8*uint(5-n)) {
		return netip.Addr{}, true, false
	}
	v |= parts[n-1]
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true, true
}

// parseNumber parses one inet_aton part: decimal, 0-prefixed octal or
// 0x-prefixed hex ("0x" alone is 0, as in WHATWG URL). Values above 2^32
// are reported as 2^32 so that the caller refuses them.
func parseNumber(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	base := uint64(10)
	switch {
	case len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'):
		base, s = 16, s[2:]
	case len(s) >= 2 && s[0] == '0':
		base, s = 8, s[1:]
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		v = v*base + d
		if v > 1<<32 {
			v = 1 << 32
		}
	}
	return v, true
}

// checkName checks that s (already without trailing dot) is a hostname:
// labels of 1 to 63 letters, digits, '-' or '_' (underscores appear in
// real names such as SRV owners), at most 253 characters. With wildcard,
// a label may be "*" (pattern checks are done by the caller).
func checkName(s string, wildcard bool) error {
	if len(s) > maxNameLen {
		return fmt.Errorf("name longer than %d characters", maxNameLen)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || wildcard && c == '*') {
				return fmt.Errorf("character %q is not allowed in a hostname", rune(c))
			}
			continue
		}
		switch l := i - start; {
		case l == 0:
			return errors.New("empty label")
		case l > 63:
			return errors.New("label longer than 63 characters")
		}
		start = i + 1
	}
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// lowerASCII lowercases s, returning s itself when it has no upper case.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
