package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// Policies the decision tests run against, by name.
var testPolicies = map[string]string{
	"precedence": `version: 1
default: deny
allow:
  - host: api.example.com
    ports: [443]
  - host: "*.example.com"
  - host: "a.*.example.net"
  - host: "*.example.net"
    ports: [443]
  - host: both.example.org
  - host: ported.example.org
    ports: [443]
  - cidr: 10.0.0.0/8
  - cidr: 10.1.0.0/16
    ports: [5432]
  - cidr: 10.2.0.0/16
  - host: named.example.org
  - cidr: 2001:db8:1::/48
deny:
  - host: "*.ads.example.com"
  - host: blocked.example.com
  - host: both.example.org
  - host: ported.example.org
  - cidr: 10.0.0.5
  - cidr: 10.1.0.0/16
  - cidr: 10.2.0.0/16
    ports: [22]
  - host: sshonly.example.com
    ports: [22]
  - cidr: 93.184.216.34
`,
	"open": `version: 1
default: allow
`,
	"lifts": `version: 1
default: allow
allow:
  - cidr: 10.0.0.0/8
  - cidr: 0.0.0.0/0
  - cidr: "::/0"
  - cidr: 169.254.0.0/16
  - cidr: 127.0.0.0/8
    ports: [8080]
  - host: db.corp.example
    ports: [5432]
  - host: "*.corp.example"
  - host: metadata.google.internal
  - host: localhost
deny:
  - cidr: 10.9.9.9
`,
	"unlisted": `version: 1
default: deny
allow:
  - host: api.example.com
  - cidr: 10.20.0.5
    ports: [5432]
  - cidr: 127.0.0.0/8
    ports: [6379]
dns:
  resolve_unlisted: false
`,
	"unlisted-resolved": `version: 1
default: deny
allow:
  - cidr: 10.20.0.5
    ports: [5432]
  - cidr: 127.0.0.0/8
    ports: [6379]
`,
	"metadata": `version: 1
default: deny
allow:
  - cidr: 169.254.169.254
    ports: [80]
  - host: metadata.google.internal
`,
	"localhost": `version: 1
default: allow
allow:
  - cidr: 127.0.0.1
    ports: [8080]
  - host: "*.localhost"
  - host: app.localhost
    ports: [3000]
deny:
  - host: deny.localhost
`,
	"onlycidr": `version: 1
default: deny
allow:
  - cidr: 198.51.100.0/24
    ports: [443]
  - cidr: 203.0.114.0/24
    ports: [443]
`,
	"audit": `version: 1
default: deny
mode: audit
allow:
  - host: ok.example.com
  - host: "*.wild.example"
deny:
  - host: bad.example.com
    ports: [443]
`,
	"clients": `version: 1
default: allow
allow_from: [127.0.0.0/8, "::1/128", 10.0.0.0/8]
deny:
  - host: top-denied.example.com
clients:
  - name: vendor-a
    sources: [10.1.0.0/16]
    default: deny
    allow:
      - host: api.vendor-a.example
        ports: [443]
  - name: by-user
    users: [bob]
    mode: audit
    default: deny
`,
}

func mustLoad(t testing.TB, name, text string) *Policy {
	t.Helper()
	p, err := Load(name, []byte(text))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return p
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestDecide(t *testing.T) {
	policies := map[string]*Policy{}
	for name, text := range testPolicies {
		policies[name] = mustLoad(t, name+".yaml", text)
	}
	type want struct {
		verdict Verdict
		audit   bool
		reason  Reason
		rule    string // Rule.Text, "" = no rule
		hint    string // "" = no hint; "*" = don't check
	}
	allow := func(reason Reason, rule string) want { return want{Allow, false, reason, rule, ""} }
	deny := func(reason Reason, rule, hint string) want { return want{Deny, false, reason, rule, hint} }
	cases := []struct {
		name   string
		policy string
		req    Request
		want   want
	}{
		// Precedence between name rules.
		{"an exact allow beats a wildcard allow", "precedence", Request{Host: "api.example.com", Port: 443},
			allow(ReasonAllowedByRule, `{host: api.example.com, ports: [443]}`)},
		{"a wildcard matches a name below it", "precedence", Request{Host: "x.example.com", Port: 80},
			allow(ReasonAllowedByRule, `{host: "*.example.com"}`)},
		{"a leading wildcard matches any depth", "precedence", Request{Host: "x.y.z.example.com", Port: 80},
			allow(ReasonAllowedByRule, `{host: "*.example.com"}`)},
		{"a leading wildcard does not match the apex", "precedence", Request{Host: "example.com", Port: 80, IP: ip("203.0.114.9")},
			deny(ReasonNoRuleMatched, "", "- {host: example.com, ports: [80]}")},
		{"step 1: a name no host rule matches may still reach an allowed address", "precedence", Request{Host: "example.com", Port: 80},
			allow(ReasonPerAddress, "")},
		{"an exact allow limited to ports falls back to the wildcard on other ports", "precedence", Request{Host: "api.example.com", Port: 80},
			allow(ReasonAllowedByRule, `{host: "*.example.com"}`)},
		{"more labels beat fewer: a deeper wildcard deny wins", "precedence", Request{Host: "x.ads.example.com", Port: 443},
			deny(ReasonDeniedByRule, `{host: "*.ads.example.com"}`, "- {host: x.ads.example.com, ports: [443]}")},
		{"an exact deny beats a wildcard allow", "precedence", Request{Host: "blocked.example.com", Port: 443},
			deny(ReasonDeniedByRule, `{host: blocked.example.com}`, "- {host: blocked.example.com, ports: [443]}")},
		{"deny wins a tie between equal rules", "precedence", Request{Host: "both.example.org", Port: 443},
			deny(ReasonDeniedByRule, `{host: both.example.org}`, "- {host: both.example.org, ports: [443]}")},
		{"deny wins a tie: at port 0 no allow can beat it", "precedence", Request{Host: "both.example.org"},
			deny(ReasonDeniedByRule, `{host: both.example.org}`, "remove the deny rule at precedence.yaml:22")},
		{"a rule with ports beats one without", "precedence", Request{Host: "ported.example.org", Port: 443},
			allow(ReasonAllowedByRule, `{host: ported.example.org, ports: [443]}`)},
		{"a rule without ports decides the other ports", "precedence", Request{Host: "ported.example.org", Port: 80},
			deny(ReasonDeniedByRule, `{host: ported.example.org}`, "- {host: ported.example.org, ports: [80]}")},
		{"a middle wildcard matches exactly one label", "precedence", Request{Host: "a.b.example.net", Port: 80},
			allow(ReasonAllowedByRule, `{host: "a.*.example.net"}`)},
		{"a middle wildcard does not match two labels", "precedence", Request{Host: "a.b.c.example.net", Port: 80, IP: ip("203.0.114.9")},
			deny(ReasonNoRuleMatched, "", "*")},
		{"a middle wildcard does not match zero labels", "precedence", Request{Host: "a.example.net", Port: 80, IP: ip("203.0.114.9")},
			deny(ReasonNoRuleMatched, "", "*")},
		{"more labels beat ports: the middle wildcard wins over the ported leading one", "precedence", Request{Host: "a.b.example.net", Port: 443},
			allow(ReasonAllowedByRule, `{host: "a.*.example.net"}`)},

		// Precedence between address rules.
		{"a longer prefix deny beats a shorter allow", "precedence", Request{IP: ip("10.0.0.5"), Port: 5432},
			deny(ReasonDeniedByRule, `{cidr: 10.0.0.5/32}`, "- {cidr: 10.0.0.5/32, ports: [5432]}")},
		{"the shorter allow decides the rest of the prefix", "precedence", Request{IP: ip("10.0.0.6"), Port: 5432},
			allow(ReasonAllowedByRule, `{cidr: 10.0.0.0/8}`)},
		{"an address rule with ports beats one without on the same prefix", "precedence", Request{IP: ip("10.1.2.3"), Port: 5432},
			allow(ReasonAllowedByRule, `{cidr: 10.1.0.0/16, ports: [5432]}`)},
		{"the address rule without ports decides other ports", "precedence", Request{IP: ip("10.1.2.3"), Port: 80},
			deny(ReasonDeniedByRule, `{cidr: 10.1.0.0/16}`, "- {cidr: 10.1.2.3/32, ports: [80]}")},
		{"a deny with ports beats an allow without on its port", "precedence", Request{IP: ip("10.2.0.1"), Port: 22},
			deny(ReasonDeniedByRule, `{cidr: 10.2.0.0/16, ports: [22]}`, "*")},
		{"an allow without ports decides other ports", "precedence", Request{IP: ip("10.2.0.1"), Port: 80},
			allow(ReasonAllowedByRule, `{cidr: 10.2.0.0/16}`)},
		{"an address deny applies to a name allowed by a host rule", "precedence", Request{Host: "named.example.org", IP: ip("93.184.216.34"), Port: 443},
			deny(ReasonDeniedByRule, `{cidr: 93.184.216.34/32}`, "- {cidr: 93.184.216.34/32, ports: [443]}")},
		{"a name deny wins over an address allow", "precedence", Request{Host: "blocked.example.com", IP: ip("10.3.0.1"), Port: 443},
			deny(ReasonDeniedByRule, `{host: blocked.example.com}`, "*")},
		{"an IPv6 cidr inside the documentation range lifts its guard", "precedence", Request{IP: ip("2001:db8:1::5"), Port: 443},
			allow(ReasonAllowedByRule, `{cidr: "2001:db8:1::/48"}`)},
		{"an IPv6 address outside the cidr stays guarded", "precedence", Request{IP: ip("2001:db8:2::5"), Port: 443},
			deny(ReasonGuardSpecial, "", "- {cidr: \"2001:db8:2::5/128\", ports: [443]}")},

		// Port 0: "some port".
		{"port 0: an allow limited to ports matches", "precedence", Request{Host: "ported.example.org"},
			allow(ReasonAllowedByRule, `{host: ported.example.org, ports: [443]}`)},
		{"port 0: a deny limited to ports does not decide", "precedence", Request{Host: "sshonly.example.com"},
			allow(ReasonAllowedByRule, `{host: "*.example.com"}`)},
		{"port 0: a deny without ports decides", "precedence", Request{Host: "blocked.example.com"},
			deny(ReasonDeniedByRule, `{host: blocked.example.com}`, "remove the deny rule at precedence.yaml:21")},
		{"port 0: the hint has no ports", "precedence", Request{Host: "nothing.example.org", IP: ip("203.0.114.9")},
			deny(ReasonNoRuleMatched, "", "- {host: nothing.example.org}")},

		// Step 1: a name without an address.
		{"step 1: no name rule, a cidr allow could match: resolve and decide per address", "onlycidr", Request{Host: "svc.example.org", Port: 443},
			allow(ReasonPerAddress, "")},
		{"step 1: no name rule and no cidr allow for the port: deny", "onlycidr", Request{Host: "svc.example.org", Port: 80},
			deny(ReasonNoRuleMatched, "", "- {host: svc.example.org, ports: [80]}")},
		{"step 2: a cidr inside a guarded range lifts it", "onlycidr", Request{Host: "svc.example.org", IP: ip("198.51.100.7"), Port: 443},
			allow(ReasonAllowedByRule, `{cidr: 198.51.100.0/24, ports: [443]}`)},
		{"step 2: a public address allowed by cidr", "onlycidr", Request{Host: "svc.example.org", IP: ip("203.0.114.7"), Port: 443},
			allow(ReasonAllowedByRule, `{cidr: 203.0.114.0/24, ports: [443]}`)},
		{"step 2: a public address outside the cidr", "onlycidr", Request{Host: "svc.example.org", IP: ip("203.0.115.7"), Port: 443},
			deny(ReasonNoRuleMatched, "", "- {host: svc.example.org, ports: [443]}")},
		{"step 1 with default allow: allowed, addresses decide later", "open", Request{Host: "example.com", Port: 80},
			allow(ReasonDefaultAllow, "")},

		// Localhost names (RFC 6761 §6.3) are loopback by name.
		{"localhost: refused by name at step 1", "open", Request{Host: "localhost", Port: 5432},
			deny(ReasonGuardLoopback, "", "- {host: localhost, ports: [5432]}")},
		{"localhost: any spelling", "open", Request{Host: "LocalHost.", Port: 80}, deny(ReasonGuardLoopback, "", "- {host: localhost, ports: [80]}")},
		{"localhost: a name under .localhost, any port (a DNS query)", "open", Request{Host: "app.localhost"},
			deny(ReasonGuardLoopback, "", "- {host: app.localhost}")},
		{"localhost: a name that only looks like it is not", "open", Request{Host: "localhost.example.com", Port: 80}, allow(ReasonDefaultAllow, "")},
		{"localhost: a label ending in localhost is not", "open", Request{Host: "notlocalhost", Port: 80}, allow(ReasonDefaultAllow, "")},
		{"localhost: resolving off loopback is still loopback", "open", Request{Host: "localhost", IP: ip("93.184.216.34"), Port: 80},
			deny(ReasonGuardLoopback, "", "- {host: localhost, ports: [80]}")},
		{"localhost: an exact host rule lifts it at step 1", "lifts", Request{Host: "localhost", Port: 80},
			allow(ReasonAllowedByRule, `{host: localhost}`)},
		{"localhost: an exact host rule lifts it wherever it resolves", "localhost", Request{Host: "app.localhost", IP: ip("10.0.0.1"), Port: 3000},
			allow(ReasonAllowedByRule, `{host: app.localhost, ports: [3000]}`)},
		{"localhost: the exact rule only on its ports", "localhost", Request{Host: "app.localhost", Port: 3001},
			deny(ReasonGuardLoopback, "", "- {host: app.localhost, ports: [3001]}")},
		{"localhost: a wildcard never lifts it", "localhost", Request{Host: "x.localhost", Port: 443},
			deny(ReasonGuardLoopback, "", "- {host: x.localhost, ports: [443]}")},
		{"localhost: a deny rule still wins", "localhost", Request{Host: "deny.localhost", Port: 80},
			deny(ReasonDeniedByRule, `{host: deny.localhost}`, "*")},
		{"localhost: a loopback cidr for the port leaves it to the addresses", "localhost", Request{Host: "localhost", Port: 8080},
			allow(ReasonPerAddress, "")},
		{"localhost: the loopback cidr lifts it on its address", "localhost", Request{Host: "localhost", IP: ip("127.0.0.1"), Port: 8080},
			allow(ReasonAllowedByRule, `{cidr: 127.0.0.1/32, ports: [8080]}`)},
		{"localhost: not on another loopback address", "localhost", Request{Host: "localhost", IP: ip("::1"), Port: 8080},
			deny(ReasonGuardLoopback, "", "*")},
		{"localhost: not on another port", "localhost", Request{Host: "localhost", Port: 8081},
			deny(ReasonGuardLoopback, "", "- {host: localhost, ports: [8081]}")},

		// Guards, default allow.
		{"guard: metadata", "open", Request{IP: ip("169.254.169.254"), Port: 80},
			deny(ReasonGuardMetadata, "", "- {cidr: 169.254.169.254/32, ports: [80]}")},
		{"guard: ECS metadata", "open", Request{IP: ip("169.254.170.2"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: IPv6 metadata", "open", Request{IP: ip("fd00:ec2::254"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: Alibaba metadata", "open", Request{IP: ip("100.100.100.200"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: metadata name at step 1", "open", Request{Host: "metadata.google.internal", Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: metadata name, any spelling", "open", Request{Host: "METADATA.google.internal.", Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: metadata short name", "open", Request{Host: "metadata", Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: AWS instance-data", "open", Request{Host: "instance-data.ec2.internal", Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: metadata name resolving elsewhere", "open", Request{Host: "metadata", IP: ip("93.184.216.34"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: loopback", "open", Request{IP: ip("127.0.0.1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: loopback anywhere in 127/8", "open", Request{IP: ip("127.255.0.1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: IPv6 loopback", "open", Request{IP: ip("::1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: a name resolving to loopback", "open", Request{Host: "localhost", IP: ip("127.0.0.1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: 10/8", "open", Request{IP: ip("10.1.2.3"), Port: 80}, deny(ReasonGuardPrivate, "", "*")},
		{"guard: 172.16/12", "open", Request{IP: ip("172.31.255.255"), Port: 80}, deny(ReasonGuardPrivate, "", "*")},
		{"guard: 172.32 is public", "open", Request{IP: ip("172.32.0.1"), Port: 80}, allow(ReasonDefaultAllow, "")},
		{"guard: 192.168/16", "open", Request{IP: ip("192.168.0.1"), Port: 80}, deny(ReasonGuardPrivate, "", "*")},
		{"guard: ULA", "open", Request{IP: ip("fd12:3456::1"), Port: 80}, deny(ReasonGuardPrivate, "", "*")},
		{"guard: link-local", "open", Request{IP: ip("169.254.1.1"), Port: 80}, deny(ReasonGuardLinkLocal, "", "*")},
		{"guard: IPv6 link-local with a zone", "open", Request{IP: ip("fe80::1%eth0"), Port: 80}, deny(ReasonGuardLinkLocal, "", "*")},
		{"guard: CGNAT", "open", Request{IP: ip("100.64.0.1"), Port: 80}, deny(ReasonGuardCGNAT, "", "*")},
		{"guard: multicast", "open", Request{IP: ip("224.0.0.251"), Port: 5353}, deny(ReasonGuardMulticast, "", "*")},
		{"guard: IPv6 multicast", "open", Request{IP: ip("ff02::1"), Port: 80}, deny(ReasonGuardMulticast, "", "*")},
		{"guard: this network", "open", Request{IP: ip("0.0.0.0"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: IETF protocol assignments", "open", Request{IP: ip("192.0.0.8"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: TEST-NET-1", "open", Request{IP: ip("192.0.2.1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: benchmarking", "open", Request{IP: ip("198.19.0.1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: TEST-NET-2", "open", Request{IP: ip("198.51.100.1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: TEST-NET-3", "open", Request{IP: ip("203.0.113.1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: reserved 240/4", "open", Request{IP: ip("250.1.2.3"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: limited broadcast", "open", Request{IP: ip("255.255.255.255"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: IPv6 unspecified", "open", Request{IP: ip("::"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: discard-only", "open", Request{IP: ip("100::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: IPv6 documentation", "open", Request{IP: ip("2001:db8::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: IPv6 documentation 3fff::/20", "open", Request{IP: ip("3fff:0fff::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: Teredo", "open", Request{IP: ip("2001:0:4136:e378::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: benchmarking IPv6", "open", Request{IP: ip("2001:2::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: local-use NAT64", "open", Request{IP: ip("64:ff9b:1::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: SRv6", "open", Request{IP: ip("5f00::1"), Port: 80}, deny(ReasonGuardSpecial, "", "*")},
		{"guard: IPv4-mapped loopback", "open", Request{IP: ip("::ffff:127.0.0.1"), Port: 80}, deny(ReasonGuardLoopback, "", "- {cidr: 127.0.0.1/32, ports: [80]}")},
		{"guard: IPv4-mapped metadata", "open", Request{IP: ip("::ffff:169.254.169.254"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: NAT64 of a private address", "open", Request{IP: ip("64:ff9b::10.0.0.1"), Port: 80}, deny(ReasonGuardPrivate, "", "- {cidr: 10.0.0.1/32, ports: [80]}")},
		{"guard: NAT64 of metadata", "open", Request{IP: ip("64:ff9b::a9fe:a9fe"), Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"guard: NAT64 of a public address is allowed", "open", Request{IP: ip("64:ff9b::5db8:d822"), Port: 80}, allow(ReasonDefaultAllow, "")},
		{"guard: 6to4 of loopback", "open", Request{IP: ip("2002:7f00:1::1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: 6to4 of a public address is allowed", "open", Request{IP: ip("2002:5db8:d822::1"), Port: 80}, allow(ReasonDefaultAllow, "")},
		{"guard: IPv4-compatible loopback", "open", Request{IP: ip("::127.0.0.1"), Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"guard: a public address is allowed", "open", Request{IP: ip("93.184.216.34"), Port: 443}, allow(ReasonDefaultAllow, "")},
		{"guard: a public IPv6 address is allowed", "open", Request{IP: ip("2606:2800:220:1::1"), Port: 443}, allow(ReasonDefaultAllow, "")},

		// Guard lifting.
		{"lift: a cidr inside the private range lifts it", "lifts", Request{IP: ip("10.4.5.6"), Port: 80},
			allow(ReasonAllowedByRule, `{cidr: 10.0.0.0/8}`)},
		{"lift: 0.0.0.0/0 lifts nothing", "lifts", Request{IP: ip("192.168.1.1"), Port: 80},
			deny(ReasonGuardPrivate, "", "- {cidr: 192.168.1.1/32, ports: [80]}")},
		{"lift: ::/0 lifts nothing", "lifts", Request{IP: ip("fd00::1"), Port: 80}, deny(ReasonGuardPrivate, "", "*")},
		{"lift: a link-local cidr lifts link-local", "lifts", Request{IP: ip("169.254.3.4"), Port: 80},
			allow(ReasonAllowedByRule, `{cidr: 169.254.0.0/16}`)},
		{"lift: a link-local cidr does not lift metadata", "lifts", Request{IP: ip("169.254.169.254"), Port: 80},
			deny(ReasonGuardMetadata, "", "*")},
		{"lift: an exact host does not lift metadata", "lifts", Request{Host: "metadata.google.internal", IP: ip("169.254.169.254"), Port: 80},
			deny(ReasonGuardMetadata, "", "*")},
		{"lift: a cidr lifts only on its ports", "lifts", Request{IP: ip("127.0.0.1"), Port: 8080},
			allow(ReasonAllowedByRule, `{cidr: 127.0.0.0/8, ports: [8080]}`)},
		{"lift: not on other ports", "lifts", Request{IP: ip("127.0.0.1"), Port: 8081}, deny(ReasonGuardLoopback, "", "*")},
		{"lift: an exact host lifts the guard for its addresses", "lifts", Request{Host: "db.corp.example", IP: ip("192.168.7.7"), Port: 5432},
			allow(ReasonAllowedByRule, `{host: db.corp.example, ports: [5432]}`)},
		{"lift: an exact host lifts only on its ports", "lifts", Request{Host: "db.corp.example", IP: ip("192.168.7.7"), Port: 22},
			deny(ReasonGuardPrivate, "", "*")},
		{"lift: a wildcard host never lifts", "lifts", Request{Host: "x.corp.example", IP: ip("192.168.7.7"), Port: 80},
			deny(ReasonGuardPrivate, "", "*")},
		{"lift: an exact host rule for localhost lifts loopback", "lifts", Request{Host: "localhost", IP: ip("127.0.0.1"), Port: 80},
			allow(ReasonAllowedByRule, `{host: localhost}`)},
		{"lift: an explicit deny still applies inside a lifted range", "lifts", Request{IP: ip("10.9.9.9"), Port: 80},
			deny(ReasonDeniedByRule, `{cidr: 10.9.9.9/32}`, "*")},
		{"lift: an IPv4 cidr lifts the guard on a NAT64 form", "lifts", Request{IP: ip("64:ff9b::10.0.0.1"), Port: 80},
			allow(ReasonAllowedByRule, `{cidr: "::/0"}`)},
		{"lift: a metadata cidr lifts metadata", "metadata", Request{IP: ip("169.254.169.254"), Port: 80},
			allow(ReasonAllowedByRule, `{cidr: 169.254.169.254/32, ports: [80]}`)},
		{"lift: a metadata cidr lifts metadata for the name too", "metadata", Request{Host: "metadata.google.internal", IP: ip("169.254.169.254"), Port: 80},
			allow(ReasonAllowedByRule, `{host: metadata.google.internal}`)},
		{"lift: step 1 lets a metadata name through when a cidr names the address", "metadata", Request{Host: "metadata.google.internal", Port: 80},
			allow(ReasonPerAddress, "")},
		{"lift: the metadata cidr is limited to its port", "metadata", Request{IP: ip("169.254.169.254"), Port: 8080},
			deny(ReasonGuardMetadata, "", "*")},
		{"lift: a metadata name on a port no metadata cidr allows is refused unresolved", "metadata", Request{Host: "metadata", Port: 8080},
			deny(ReasonGuardMetadata, "", "*")},

		// dns.resolve_unlisted: whether a name no host rule allows is
		// resolved because a cidr rule could allow its addresses.
		{"unlisted: by default a name on a cidr-allowed port is decided per address", "unlisted-resolved", Request{Host: "evil.example", Port: 5432},
			allow(ReasonPerAddress, "")},
		{"unlisted: resolve_unlisted false refuses it unresolved", "unlisted", Request{Host: "evil.example", Port: 5432},
			deny(ReasonNoRuleMatched, "", "- {host: evil.example, ports: [5432]}")},
		{"unlisted: resolve_unlisted false refuses it to DNS too", "unlisted", Request{Host: "evil.example"},
			deny(ReasonNoRuleMatched, "", "- {host: evil.example}")},
		{"unlisted: resolve_unlisted false keeps host rules", "unlisted", Request{Host: "api.example.com", Port: 443},
			allow(ReasonAllowedByRule, "{host: api.example.com}")},
		{"unlisted: resolve_unlisted false keeps the cidr rule for addresses", "unlisted", Request{IP: ip("10.20.0.5"), Port: 5432},
			allow(ReasonAllowedByRule, "{cidr: 10.20.0.5/32, ports: [5432]}")},
		{"unlisted: by default a localhost name is decided on its addresses where a loopback cidr lifts the guard", "unlisted-resolved", Request{Host: "cache.localhost", Port: 6379},
			allow(ReasonPerAddress, "")},
		{"unlisted: resolve_unlisted false refuses a localhost name no host rule lists", "unlisted", Request{Host: "cache.localhost", Port: 6379},
			deny(ReasonGuardLoopback, "", "- {host: cache.localhost, ports: [6379]}")},
		{"unlisted: a name on a port no cidr rule allows is refused either way", "unlisted-resolved", Request{Host: "evil.example", Port: 443},
			deny(ReasonNoRuleMatched, "", "- {host: evil.example, ports: [443]}")},

		// Spelling: the same destination however it is written.
		{"spelling: decimal integer", "open", Request{Host: "2130706433", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: octal", "open", Request{Host: "0177.0.0.1", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: hex", "open", Request{Host: "0x7f.0.0.1", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: short form", "open", Request{Host: "127.1", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: mapped", "open", Request{Host: "::ffff:127.0.0.1", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: brackets", "open", Request{Host: "[::1]", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: zone", "open", Request{Host: "fe80::1%eth0", Port: 80}, deny(ReasonGuardLinkLocal, "", "*")},
		{"spelling: hex metadata", "open", Request{Host: "0xa9fea9fe", Port: 80}, deny(ReasonGuardMetadata, "", "*")},
		{"spelling: full-width digits", "open", Request{Host: "１２７.０.０.１", Port: 80}, deny(ReasonGuardLoopback, "", "*")},
		{"spelling: upper case and trailing dot match an exact rule", "precedence", Request{Host: "API.Example.COM.", Port: 443},
			allow(ReasonAllowedByRule, `{host: api.example.com, ports: [443]}`)},
		{"spelling: an invalid host is refused", "open", Request{Host: "evil.com/..", Port: 80}, deny(ReasonInvalidHost, "", "")},
		{"spelling: a space is refused", "open", Request{Host: "a b.com", Port: 80}, deny(ReasonInvalidHost, "", "")},
		{"spelling: a name ending in a number that is no address is refused", "open", Request{Host: "1.2.3.4.5", Port: 80}, deny(ReasonInvalidHost, "", "")},
		{"spelling: an empty request is refused", "open", Request{Port: 80}, deny(ReasonInvalidHost, "", "")},

		// Audit mode.
		{"audit: a would-be denial passes, flagged", "audit", Request{Host: "other.example.com", Port: 443},
			want{Allow, true, ReasonNoRuleMatched, "", "- {host: other.example.com, ports: [443]}"}},
		{"audit: a deny rule passes, flagged, with its rule", "audit", Request{Host: "bad.example.com", Port: 443},
			want{Allow, true, ReasonDeniedByRule, `{host: bad.example.com, ports: [443]}`, "remove the deny rule at audit.yaml:8"}},
		{"audit: a guard is still enforced", "audit", Request{Host: "x.wild.example", IP: ip("10.0.0.1"), Port: 443},
			want{Deny, false, ReasonGuardPrivate, "", "*"}},
		{"audit: the metadata guard is still enforced", "audit", Request{IP: ip("169.254.169.254"), Port: 80},
			want{Deny, false, ReasonGuardMetadata, "", "*"}},
		{"audit: an allow is a plain allow", "audit", Request{Host: "ok.example.com", Port: 443},
			allow(ReasonAllowedByRule, `{host: ok.example.com}`)},
		{"audit: an invalid host is still refused", "audit", Request{Host: "a b", Port: 443}, deny(ReasonInvalidHost, "", "")},

		// Clients and allow_from.
		{"clients: a source outside allow_from is refused", "clients", Request{Host: "x.example.com", Port: 443, Client: ip("192.0.2.9")},
			deny(ReasonClientRefused, "", "")},
		{"clients: an IPv4-mapped source inside allow_from is served", "clients", Request{Host: "x.example.com", Port: 443, Client: ip("::ffff:127.0.0.1")},
			allow(ReasonDefaultAllow, "")},
		{"clients: the top-level policy applies to other clients", "clients", Request{Host: "top-denied.example.com", Port: 443, Client: ip("127.0.0.1")},
			deny(ReasonDeniedByRule, `{host: top-denied.example.com}`, "*")},
		{"clients: an entry selects by source", "clients", Request{Host: "api.vendor-a.example", Port: 443, Client: ip("10.1.2.3")},
			allow(ReasonAllowedByRule, `{host: api.vendor-a.example, ports: [443]}`)},
		{"clients: the entry's default applies, not the top-level one", "clients", Request{Host: "x.example.com", Port: 443, Client: ip("10.1.2.3")},
			deny(ReasonNoRuleMatched, "", "*")},
		{"clients: an entry selects by user", "clients", Request{Host: "x.example.com", Port: 443, Client: ip("127.0.0.1"), User: "bob"},
			want{Allow, true, ReasonNoRuleMatched, "", "*"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := policies[c.policy]
			d := p.Decide(c.req)
			if d.Verdict != c.want.verdict || d.Audit != c.want.audit || d.Reason != c.want.reason {
				t.Errorf("Decide(%+v) = %s audit=%v %s; want %s audit=%v %s", c.req, d.Verdict, d.Audit, d.Reason, c.want.verdict, c.want.audit, c.want.reason)
			}
			text := ""
			if d.Rule != nil {
				text = d.Rule.Text
				if d.Rule.File != c.policy+".yaml" || d.Rule.Line == 0 {
					t.Errorf("rule location %s", d.Rule.Location())
				}
			}
			if text != c.want.rule {
				t.Errorf("rule = %q; want %q", text, c.want.rule)
			}
			if c.want.hint != "*" && d.Hint != c.want.hint {
				t.Errorf("hint = %q; want %q", d.Hint, c.want.hint)
			}
			if d.Denied() && d.Reason != ReasonInvalidHost && d.Reason != ReasonClientRefused && d.Hint == "" {
				t.Errorf("a denial without a hint")
			}
			if d.Source != c.policy+".yaml" {
				t.Errorf("source = %q", d.Source)
			}
		})
	}
}

// Each hint, pasted under allow:, must allow the destination it was given
// for (unless it says to remove a rule).
func TestHintsAllowWhatTheyName(t *testing.T) {
	reqs := []struct {
		policy string
		req    Request
	}{
		{"precedence", Request{Host: "example.com", Port: 80, IP: ip("203.0.114.9")}},
		{"precedence", Request{Host: "x.ads.example.com", Port: 443}},
		{"precedence", Request{IP: ip("10.0.0.5"), Port: 5432}},
		{"precedence", Request{IP: ip("10.1.2.3"), Port: 80}},
		{"onlycidr", Request{Host: "svc.example.org", Port: 80}},
		{"open", Request{IP: ip("169.254.169.254"), Port: 80}},
		{"open", Request{IP: ip("::1"), Port: 80}},
		{"open", Request{IP: ip("64:ff9b::10.0.0.1"), Port: 80}},
		{"lifts", Request{Host: "x.corp.example", IP: ip("192.168.7.7"), Port: 80}},
	}
	for _, r := range reqs {
		text := testPolicies[r.policy]
		d := mustLoad(t, "p.yaml", text).Decide(r.req)
		if !d.Denied() || strings.HasPrefix(d.Hint, "remove") {
			t.Fatalf("%+v: %s %q", r.req, d.Verdict, d.Hint)
		}
		var patched string
		if strings.Contains(text, "\nallow:\n") {
			patched = strings.Replace(text, "\nallow:\n", "\nallow:\n  "+d.Hint+"\n", 1)
		} else {
			patched = text + "allow:\n  " + d.Hint + "\n"
		}
		d2 := mustLoad(t, "patched.yaml", patched).Decide(r.req)
		if d2.Denied() {
			t.Errorf("%+v: after adding %s: still %s %s", r.req, d.Hint, d2.Verdict, d2.Reason)
		}
	}
}

func TestRuleTextIsValidYAML(t *testing.T) {
	for _, host := range []string{"null", "true", "no", "on", "y", "~x", "a.null", "1e3.example", "0x10.example", "inf", "_x", "-x.example", "xn--bcher-kva.example", "*.example.com", "a.*.b"} {
		text := "version: 1\ndefault: deny\nallow:\n  - " + ruleText(&Rule{Host: host}) + "\n"
		p, err := Load("t.yaml", []byte(text))
		if err != nil {
			if strings.Contains(err.Error(), "must be a string") {
				t.Errorf("host %q: rule text %s is not a string: %v", host, ruleText(&Rule{Host: host}), err)
			}
			continue
		}
		if got := p.Rules()[0].Host; got != host {
			t.Errorf("host %q reads back as %q", host, got)
		}
	}
}

func TestDecideLineNumbers(t *testing.T) {
	p := mustLoad(t, "lines.yaml", "version: 1\ndefault: deny\nallow:\n  - host: a.example.com\n  - {cidr: 10.0.0.0/8, ports: [5432, \"8000-8100\"]}\n")
	d := p.Decide(Request{Host: "a.example.com", Port: 1})
	if got := d.RuleLocation(); got != "lines.yaml:4" || d.Rule.Column != 5 {
		t.Errorf("location %s col %d", got, d.Rule.Column)
	}
	d = p.Decide(Request{IP: ip("10.0.0.1"), Port: 8050})
	if got := d.RuleLocation(); got != "lines.yaml:5" || d.Rule.Text != `{cidr: 10.0.0.0/8, ports: [5432, "8000-8100"]}` {
		t.Errorf("location %s text %s", got, d.Rule.Text)
	}
	if d.Policy != "default" {
		t.Errorf("policy %q", d.Policy)
	}
}

func TestWithAllows(t *testing.T) {
	base := mustLoad(t, "base.yaml", "version: 1\ndefault: deny\n")
	p, err := base.WithAllows("--allow", []string{"api.example.com:443", "10.0.0.5:5432", "[::1]:8080", "192.168.0.0/16", "*.example.org", "fd00::1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  Request
		line int
	}{
		{Request{Host: "api.example.com", Port: 443}, 1},
		{Request{IP: ip("10.0.0.5"), Port: 5432}, 2},
		{Request{IP: ip("::1"), Port: 8080}, 3},
		{Request{IP: ip("192.168.3.3"), Port: 1}, 4},
		{Request{Host: "x.example.org", Port: 1}, 5},
		{Request{IP: ip("fd00::1"), Port: 1}, 6},
	} {
		d := p.Decide(c.req)
		if !d.Allowed() || d.Rule == nil || d.Rule.File != "--allow" || d.Rule.Line != c.line {
			t.Errorf("%+v: %s %s %s", c.req, d.Verdict, d.Reason, d.RuleLocation())
		}
		if base.Decide(c.req).Allowed() {
			t.Errorf("%+v: the base policy changed", c.req)
		}
	}
	if d := p.Decide(Request{Host: "api.example.com", IP: ip("203.0.114.9"), Port: 80}); d.Allowed() {
		t.Errorf("the port was not kept: %s", d.Reason)
	}
	for _, bad := range []string{"a b", "host:0", "host:99999", "10.0.0.1/8", "[::1", "x:*"} {
		if _, err := base.WithAllows("--allow", []string{bad}); err == nil {
			t.Errorf("WithAllows(%q) succeeded", bad)
		}
	}
}

func TestDecideDoesNotAllocateForANormalName(t *testing.T) {
	p := mustLoad(t, "p.yaml", testPolicies["precedence"])
	req := Request{Host: "x.y.example.com", IP: ip("93.184.216.35"), Port: 443}
	if n := testing.AllocsPerRun(100, func() { p.Decide(req) }); n != 0 {
		t.Errorf("Decide allocates %v times", n)
	}
}
