package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	cases := []struct {
		name, in string
		host     string // want name, or
		ip       string // want address, or
		bad      bool   // want ErrInvalidHost
	}{
		{"a normal name is kept", "api.example.com", "api.example.com", "", false},
		{"upper case is lowered", "API.Example.COM", "api.example.com", "", false},
		{"a trailing dot is removed", "api.example.com.", "api.example.com", "", false},
		{"an IDN becomes punycode", "bücher.example", "xn--bcher-kva.example", "", false},
		{"an upper-case IDN becomes punycode", "BÜCHER.example", "xn--bcher-kva.example", "", false},
		{"full-width dots are dots", "api。example。com", "api.example.com", "", false},
		{"underscores are kept", "_dmarc.example.com", "_dmarc.example.com", "", false},
		{"a single label", "localhost", "localhost", "", false},
		{"a dotted quad", "127.0.0.1", "", "127.0.0.1", false},
		{"a dotted quad with a trailing dot", "127.0.0.1.", "", "127.0.0.1", false},
		{"a decimal integer", "2130706433", "", "127.0.0.1", false},
		{"octal parts", "0177.0.0.1", "", "127.0.0.1", false},
		{"hex parts", "0x7f.0.0.1", "", "127.0.0.1", false},
		{"upper-case hex", "0X7F.0.0.1", "", "127.0.0.1", false},
		{"a hex integer", "0x7f000001", "", "127.0.0.1", false},
		{"an octal integer", "017700000001", "", "127.0.0.1", false},
		{"two parts", "127.1", "", "127.0.0.1", false},
		{"three parts", "127.0.1", "", "127.0.0.1", false},
		{"mixed bases", "0x7f.0.00.01", "", "127.0.0.1", false},
		{"metadata in hex", "0xa9.0xfe.0xa9.0xfe", "", "169.254.169.254", false},
		{"full-width digits", "１２７.０.０.１", "", "127.0.0.1", false},
		{"IPv6", "::1", "", "::1", false},
		{"IPv6 in brackets", "[::1]", "", "::1", false},
		{"IPv6 upper case", "FE80::1", "", "fe80::1", false},
		{"IPv6 with a zone", "fe80::1%eth0", "", "fe80::1", false},
		{"IPv6 in brackets with a URL-encoded zone", "[fe80::1%25eth0]", "", "fe80::1", false},
		{"IPv4-mapped IPv6", "::ffff:127.0.0.1", "", "127.0.0.1", false},
		{"IPv4-mapped IPv6 in hex", "[::ffff:7f00:1]", "", "127.0.0.1", false},
		{"the empty string", "", "", "", true},
		{"a dot alone", ".", "", "", true},
		{"an empty label", "a..b", "", "", true},
		{"a leading dot", ".example.com", "", "", true},
		{"two trailing dots", "example.com..", "", "", true},
		{"a space", "a b.com", "", "", true},
		{"a slash", "evil.com/x", "", "", true},
		{"a NUL", "evil.com\x00.good.com", "", "", true},
		{"a percent", "evil%2ecom", "", "", true},
		{"an at sign", "user@evil.com", "", "", true},
		{"a backslash", `evil.com\good.com`, "", "", true},
		{"a wildcard", "*.example.com", "", "", true},
		{"a port", "example.com:80", "", "", true},
		{"unbalanced brackets", "[::1", "", "", true},
		{"IPv4 in brackets", "[127.0.0.1]", "", "", true},
		{"too many parts", "1.2.3.4.5", "", "", true},
		{"a part too large", "256.0.0.1", "", "", true},
		{"an integer too large", "4294967296", "", "", true},
		{"a last part too large", "127.16777216", "", "", true},
		{"a bad octal digit", "08.0.0.1", "", "", true},
		{"a bad octal number alone", "008", "", "", true},
		{"a name ending in a bad octal number", "a.09", "", "", true},
		{"a name ending in a number", "example.123", "", "", true},
		{"a label of 64 characters", strings.Repeat("a", 64) + ".com", "", "", true},
		{"a name of 254 characters", strings.Repeat("a.", 127) + "ab", "", "", true},
		{"a label of 63 characters", strings.Repeat("a", 63) + ".com", strings.Repeat("a", 63) + ".com", "", false},
		{"a zone alone", "fe80::1%", "", "", true},
		{"an invalid IDN", "xn--a.example\u200d", "", "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name, ip, err := NormalizeHost(c.in)
			if c.bad {
				if err == nil || !errors.Is(err, ErrInvalidHost) {
					t.Fatalf("NormalizeHost(%q) = %q, %v, %v; want ErrInvalidHost", c.in, name, ip, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizeHost(%q): %v", c.in, err)
			}
			gotIP := ""
			if ip.IsValid() {
				gotIP = ip.String()
			}
			if name != c.host || gotIP != c.ip {
				t.Errorf("NormalizeHost(%q) = %q, %q; want %q, %q", c.in, name, gotIP, c.host, c.ip)
			}
			// The normal form is a fixed point.
			if name != "" {
				if n2, _, err := NormalizeHost(name); err != nil || n2 != name {
					t.Errorf("NormalizeHost(%q) = %q, %v; not a fixed point", name, n2, err)
				}
			}
		})
	}
}

func TestNormalizeHostDoesNotAllocateForANormalName(t *testing.T) {
	for _, s := range []string{"api.example.com", "127.0.0.1", "a-b_c.example"} {
		if n := testing.AllocsPerRun(100, func() { _, _, _ = NormalizeHost(s) }); n != 0 {
			t.Errorf("NormalizeHost(%q) allocates %v times", s, n)
		}
	}
}
