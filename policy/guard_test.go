package policy

import (
	"errors"
	"strings"
	"testing"
)

// Policies for TestGuardsIPv6, by name.
var guardPolicies = map[string]string{
	"open": "version: 1\ndefault: allow\n",
	// 10.0.0.0/8, Teredo and the local-use NAT64 prefix are lifted, so
	// that what refuses 10.1.2.3's embedded forms is the deny rule.
	"deny": `version: 1
default: allow
allow:
  - cidr: 10.0.0.0/8
  - cidr: "2001::/32"
  - cidr: "64:ff9b:1::/48"
deny:
  - cidr: 10.1.2.3
  - cidr: 93.184.216.34
`,
	"nat64": `version: 1
default: allow
nat64_prefixes: ["64:ff9b::/96", "2001:db8:64::/96", "2001:db8:100::/40"]
deny:
  - cidr: 93.184.216.34
`,
}

// TestGuardsIPv6: for IPv6 only global unicast outside the special-purpose
// ranges is public, and every IPv4-embedding form is decided on the IPv4
// address it carries as well (guards and cidr deny rules).
func TestGuardsIPv6(t *testing.T) {
	tests := []struct {
		name, policy, ip string
		verdict          Verdict
		reason           Reason
	}{
		// Outside 2000::/3.
		{"fec0::1 is guarded", "open", "fec0::1", Deny, ReasonGuardSpecial},
		{"an address in ::/3 that embeds nothing is guarded", "open", "1::1", Deny, ReasonGuardSpecial},
		{"an address in 4000::/2 is guarded", "open", "4000::1", Deny, ReasonGuardSpecial},
		{"an address in 8000::/1 is guarded", "open", "8000::1", Deny, ReasonGuardSpecial},
		{"an address in e000::/4 is guarded", "open", "e000::1", Deny, ReasonGuardSpecial},
		{"unique local keeps its own reason", "open", "fd12::1", Deny, ReasonGuardPrivate},
		{"link-local keeps its own reason", "open", "fe80::1", Deny, ReasonGuardLinkLocal},
		{"multicast keeps its own reason", "open", "ff05::2", Deny, ReasonGuardMulticast},
		{"public 2606:4700::1 stays allowed", "open", "2606:4700::1", Allow, ReasonDefaultAllow},
		{"public 2a00:1450:4001::1 stays allowed", "open", "2a00:1450:4001::1", Allow, ReasonDefaultAllow},

		// Embedded IPv4 addresses and the guards.
		{"SIIT form of a private address is guard_private under default allow", "open", "::ffff:0:10.0.0.1", Deny, ReasonGuardPrivate},
		{"SIIT form of metadata is guard_metadata", "open", "::ffff:0:169.254.169.254", Deny, ReasonGuardMetadata},
		{"SIIT form of a public address is allowed", "open", "::ffff:0:93.184.216.34", Allow, ReasonDefaultAllow},
		{"IPv4-compatible form of a private address is guard_private", "open", "::10.0.0.1", Deny, ReasonGuardPrivate},
		{"IPv4-compatible form of a public address is allowed", "open", "::93.184.216.34", Allow, ReasonDefaultAllow},
		{"NAT64 form of a public address is allowed", "open", "64:ff9b::93.184.216.34", Allow, ReasonDefaultAllow},
		{"local-use NAT64 form of a private address is guard_private", "open", "64:ff9b:1:a00:0:100::", Deny, ReasonGuardPrivate},
		{"local-use NAT64 form of a public address stays guarded", "open", "64:ff9b:1:5db8:d8:2200::", Deny, ReasonGuardSpecial},
		{"Teredo with a private client is guard_private", "open", "2001:0:4136:e378:8000:63bf:f5ff:fffe", Deny, ReasonGuardPrivate},
		{"Teredo with a loopback server is guard_loopback", "open", "2001:0:7f00:1:8000:63bf:a2c8:dd7d", Deny, ReasonGuardLoopback},
		{"Teredo with public ends stays guarded", "open", "2001:0:4136:e378:8000:63bf:a2c8:dd7d", Deny, ReasonGuardSpecial},
		{"6to4 form of a private address is guard_private", "open", "2002:c0a8:101::1", Deny, ReasonGuardPrivate},
		{"6to4 form of a public address is allowed", "open", "2002:5db8:d822::1", Allow, ReasonDefaultAllow},

		// Embedded IPv4 addresses and the cidr deny rules.
		{"cidr deny on 10.1.2.3 refuses 10.1.2.3", "deny", "10.1.2.3", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses 64:ff9b::10.1.2.3", "deny", "64:ff9b::10.1.2.3", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses ::ffff:0:10.1.2.3", "deny", "::ffff:0:10.1.2.3", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses ::ffff:10.1.2.3", "deny", "::ffff:10.1.2.3", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses ::10.1.2.3", "deny", "::10.1.2.3", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses 6to4", "deny", "2002:a01:203::1", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses Teredo with that client", "deny", "2001:0:4136:e378:8000:63bf:f5fe:fdfc", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses Teredo with that server", "deny", "2001:0:a01:203:8000:63bf:a2c8:dd7d", Deny, ReasonDeniedByRule},
		{"cidr deny on 10.1.2.3 refuses the local-use NAT64 form", "deny", "64:ff9b:1:a01:2:300::", Deny, ReasonDeniedByRule},
		{"cidr deny on a public address refuses its SIIT form", "deny", "::ffff:0:93.184.216.34", Deny, ReasonDeniedByRule},
		{"a cidr allow lifting 10.0.0.0/8 lifts the SIIT form too", "deny", "::ffff:0:10.4.5.6", Allow, ReasonDefaultAllow},
		{"a cidr allow lifting 10.0.0.0/8 and 2001::/32 lifts Teredo", "deny", "2001:0:4136:e378:8000:63bf:f5fb:fafa", Allow, ReasonAllowedByRule},

		// Operator-declared NAT64 prefixes.
		{"operator-declared NAT64 prefix embeds the guarded address", "nat64", "2001:db8:64::10.0.0.1", Deny, ReasonGuardPrivate},
		{"operator-declared /40 NAT64 prefix follows the RFC 6052 layout", "nat64", "2001:db8:17f:0:1::", Deny, ReasonGuardLoopback},
		{"operator-declared NAT64 prefix carries a public address", "nat64", "2001:db8:64::1.1.1.1", Allow, ReasonDefaultAllow},
		{"cidr deny refuses the operator-declared NAT64 form", "nat64", "2001:db8:64::93.184.216.34", Deny, ReasonDeniedByRule},
		{"documentation outside the declared prefixes stays guarded", "nat64", "2001:db8:65::1.1.1.1", Deny, ReasonGuardSpecial},
	}
	policies := map[string]*Policy{}
	for name, text := range guardPolicies {
		p, err := Load(name+".yaml", []byte(text))
		if err != nil {
			t.Fatalf("load %s: %v", name, err)
		}
		policies[name] = p
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := policies[tt.policy]
			if p == nil {
				t.Fatalf("policy %s did not load", tt.policy)
			}
			for _, req := range []Request{{IP: ip(tt.ip), Port: 443}, {Host: "www.example.com", IP: ip(tt.ip), Port: 443}} {
				d := p.Decide(req)
				if d.Verdict != tt.verdict || d.Reason != tt.reason {
					t.Errorf("%+v: %s %s, want %s %s", req, d.Verdict, d.Reason, tt.verdict, tt.reason)
				}
				if d.Denied() && d.Hint == "" {
					t.Errorf("%+v: a denial without a hint", req)
				}
			}
		})
	}
}

func TestNAT64PrefixErrors(t *testing.T) {
	tests := []struct {
		name, value string
		want        string // "LINE:COL: message substring"
	}{
		{"an IPv4 prefix", `["10.0.0.0/8"]`, `3:18: nat64_prefixes entry "10.0.0.0/8" is not an IPv6 prefix`},
		{"a length RFC 6052 does not define", `["2001:db8::/33"]`, `3:18: nat64_prefixes entry "2001:db8::/33": the length must be 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)`},
		{"an address without length", `["2001:db8::"]`, `3:18: nat64_prefixes entry "2001:db8::" needs a length`},
		{"host bits set", `["2001:db8::1/96"]`, `3:18: nat64_prefixes entry "2001:db8::1/96" has bits set after the /96`},
		{"the u-octet set", `["2001:db8:0:0:ff00::/96"]`, `3:18: nat64_prefixes entry "2001:db8:0:0:ff00::/96": bits 64-71 (the u-octet) must be zero (RFC 6052 §2.2)`},
		{"a link-local prefix", `["fe80::/64"]`, `3:18: nat64_prefixes entry "fe80::/64" must be global unicast (2000::/3), unique local (fc00::/7) or inside 64:ff9b::/96 or 64:ff9b:1::/48`},
		{"a prefix over a metadata address", `["fd00:ec2::/96"]`, `3:18: nat64_prefixes entry "fd00:ec2::/96" contains the metadata address fd00:ec2::254`},
		{"a prefix over Teredo", `["2001::/32"]`, `3:18: nat64_prefixes entry "2001::/32" overlaps Teredo 2001::/32`},
		{"overlapping prefixes", `["2001:db8::/32", "2001:db8:64::/96"]`, `3:35: nat64_prefixes entry "2001:db8:64::/96" overlaps "2001:db8::/32"`},
		{"not a list", `64:ff9b::/96`, `3:17: nat64_prefixes must be a list`},
		{"a number", `[64]`, `3:18: nat64_prefixes entry must be a string, not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := "version: 1\ndefault: allow\nnat64_prefixes: " + tt.value + "\n"
			_, err := Load("n.yaml", []byte(text))
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("Load = %v; want one error", err)
			}
			if got := errs[0].String(); !strings.HasPrefix(got, "n.yaml:"+tt.want) {
				t.Errorf("error %q; want n.yaml:%s", got, tt.want)
			}
		})
	}
	p, err := Load("n.yaml", []byte("version: 1\ndefault: allow\nnat64_prefixes: [\"64:ff9b::/96\", \"2001:db8:64::/96\", \"fd00:64::/64\", \"64:ff9b:1:ab00::/56\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.NAT64Prefixes); got != 4 {
		t.Errorf("NAT64Prefixes = %v", p.NAT64Prefixes)
	}
}

func TestLintLocalUseNAT64(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		warn       bool
	}{
		{"a cidr allow inside 64:ff9b:1::/48 without a declared prefix is warned about", "version: 1\ndefault: allow\nallow:\n  - cidr: \"64:ff9b:1::/48\"\n", true},
		{"a declared prefix there silences the warning", "version: 1\ndefault: allow\nnat64_prefixes: [\"64:ff9b:1:ab00::/56\"]\nallow:\n  - cidr: \"64:ff9b:1::/48\"\n", false},
		{"a cidr allow elsewhere is not warned about", "version: 1\ndefault: allow\nallow:\n  - cidr: \"2001::/32\"\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := mustLoad(t, "w.yaml", tt.text)
			got := false
			for _, w := range p.Warnings() {
				if strings.Contains(w.Message, "64:ff9b:1::/48") {
					got = true
				}
			}
			if got != tt.warn {
				t.Errorf("warned = %v, want %v: %v", got, tt.warn, p.Warnings())
			}
		})
	}
}
