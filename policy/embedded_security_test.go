package policy_test

import (
	"net/netip"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// TestSecurityEmbeddedIPv4DoesNotEscapeCIDRRules: an IPv6 address that
// carries an IPv4 address (NAT64, 6to4, IPv4-compatible, IPv4-mapped)
// reaches that IPv4 host through a translator, so a cidr deny rule on the
// IPv4 address must refuse it too. Decisions only: nothing is dialled.
func TestSecurityEmbeddedIPv4DoesNotEscapeCIDRRules(t *testing.T) {
	p, err := policy.Load("sec.yaml", []byte(`version: 1
default: allow
deny:
  - cidr: 93.184.216.34/32
  - cidr: 203.0.113.0/24
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, ip string }{
		{"the IPv4 address itself", "93.184.216.34"},
		{"IPv4-mapped", "::ffff:93.184.216.34"},
		{"NAT64 (RFC 6052 well-known prefix)", "64:ff9b::5db8:d822"},
		{"6to4", "2002:5db8:d822::1"},
		{"IPv4-compatible", "::93.184.216.34"},
	} {
		t.Run("a cidr deny rule refuses the "+tt.name+" form", func(t *testing.T) {
			d := p.Decide(policy.Request{IP: netip.MustParseAddr(tt.ip), Port: 443})
			if d.Allowed() || d.Reason != policy.ReasonDeniedByRule {
				t.Fatalf("decision %v %s, want deny denied_by_rule", d.Verdict, d.Reason)
			}
		})
	}
	t.Run("a name resolving to a NAT64 form of a denied address is refused", func(t *testing.T) {
		d := p.Decide(policy.Request{Host: "example.com", IP: netip.MustParseAddr("64:ff9b::5db8:d822"), Port: 443})
		if d.Allowed() {
			t.Fatalf("decision %v %s, want deny", d.Verdict, d.Reason)
		}
	})
	t.Run("a NAT64 form of an address no rule names stays allowed", func(t *testing.T) {
		d := p.Decide(policy.Request{IP: netip.MustParseAddr("64:ff9b::5db8:d823"), Port: 443})
		if !d.Allowed() {
			t.Fatalf("decision %v %s, want allow", d.Verdict, d.Reason)
		}
	})
}

// TestSecurityMoreMetadataEndpoints: metadata services that are not at
// 169.254.169.254 are refused as metadata (lifted only by a cidr naming
// them), not as ordinary private addresses an exact host rule can lift.
func TestSecurityMoreMetadataEndpoints(t *testing.T) {
	p, err := policy.Load("m.yaml", []byte(`version: 1
default: allow
allow:
  - host: innocent.example
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, ip string }{
		{"GCP metadata over IPv6", "fd20:ce::254"},
		{"Azure WireServer", "168.63.129.16"},
		{"Azure WireServer through NAT64", "64:ff9b::a83f:8110"},
	} {
		t.Run(tt.name+" is a metadata address even for an exactly allowed name", func(t *testing.T) {
			d := p.Decide(policy.Request{Host: "innocent.example", IP: netip.MustParseAddr(tt.ip), Port: 80})
			if d.Allowed() || d.Reason != policy.ReasonGuardMetadata {
				t.Fatalf("decision %v %s, want deny guard_metadata", d.Verdict, d.Reason)
			}
		})
	}
}
