package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// Changes the sampler must see: each NEW lets through something OLD
// refuses, and Diff must report a wider change (egress diff exits 1).
func TestDiffSeesEveryLoosening(t *testing.T) {
	for _, c := range []struct{ name, old, new string }{
		{"a clients entry for one address (a /32)",
			"version: 1\ndefault: deny\n",
			"version: 1\ndefault: deny\nclients:\n  - {name: one, sources: [203.0.113.7/32], default: allow}\n"},
		{"a clients entry for one IPv6 address (a /128)",
			"version: 1\ndefault: deny\n",
			"version: 1\ndefault: deny\nclients:\n  - {name: one, sources: [\"2001:db8::7/128\"], default: allow}\n"},
		{"a clients entry whose first source an earlier entry takes",
			"version: 1\ndefault: deny\nclients:\n  - {name: a, sources: [10.0.0.0/8], default: deny}\n",
			"version: 1\ndefault: deny\nclients:\n  - {name: a, sources: [10.0.0.0/8], default: deny}\n  - {name: b, sources: [10.0.0.0/8, 172.16.0.0/12], default: allow}\n"},
		{"a clients entry for a second user",
			"version: 1\ndefault: deny\n",
			"version: 1\ndefault: deny\nclients:\n  - {name: a, sources: [10.0.0.0/8], users: [x], default: deny}\n  - {name: b, sources: [10.0.0.0/8], users: [x, y], default: allow}\n"},
		{"a name let out over IPv6",
			"version: 1\ndefault: deny\nallow: [{host: api.example.com}]\ndeny: [{cidr: \"::/0\"}]\n",
			"version: 1\ndefault: deny\nallow: [{host: api.example.com}]\n"},
		{"dns.resolve_unlisted turned on under a cidr allow",
			"version: 1\ndefault: deny\nallow: [{cidr: 10.0.0.0/8, ports: [5432]}]\ndns: {resolve_unlisted: false}\n",
			"version: 1\ndefault: deny\nallow: [{cidr: 10.0.0.0/8, ports: [5432]}]\n"},
		{"mode turned to audit",
			"version: 1\ndefault: deny\n",
			"version: 1\ndefault: deny\nmode: audit\n"},
		{"default allow only on a port no rule names",
			"version: 1\ndefault: deny\nallow: [{host: a.example.com, ports: [443]}]\n",
			"version: 1\ndefault: allow\ndeny: [{host: \"*\", ports: [\"1-65534\"]}]\n"},
		{"a guard lifted by an exact host rule",
			"version: 1\ndefault: deny\nallow: [{host: \"*.corp.example\"}]\n",
			"version: 1\ndefault: deny\nallow: [{host: \"*.corp.example\"}, {host: db.corp.example}]\n"},
		{"a wildcard deny narrowed to one label",
			"version: 1\ndefault: allow\ndeny: [{host: \"*.example.com\"}]\n",
			"version: 1\ndefault: allow\ndeny: [{host: \"a.*.example.com\"}]\n"},
		{"an IPv6 cidr deny dropped",
			"version: 1\ndefault: allow\ndeny: [{cidr: \"2a00:1::/32\"}]\n",
			"version: 1\ndefault: allow\n"},
		{"a NAT64 prefix dropped",
			"version: 1\ndefault: allow\nnat64_prefixes: [\"2a00:1:64::/96\"]\n",
			"version: 1\ndefault: allow\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			changes, tried := Diff(mustLoadText(t, "old.yaml", c.old), mustLoadText(t, "new.yaml", c.new))
			if len(changes) == 0 || !changes[0].Wider() {
				t.Errorf("Diff found no wider change in %d destinations: %+v", tried, changes)
			}
		})
	}
}

func TestRFC6052EmbedRoundTrips(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.33")
	for _, bits := range []int{32, 40, 48, 56, 64, 96} {
		pf := netip.PrefixFrom(netip.MustParseAddr("2a00:1:64::"), bits)
		a := rfc6052Embed(pf, v4)
		if !pf.Contains(a) || rfc6052IPv4(a.As16(), bits) != v4 {
			t.Errorf("/%d: %s carries %s; want %s inside %s", bits, a, rfc6052IPv4(a.As16(), bits), v4, pf)
		}
	}
}

func TestDiffClientsOnePerCombination(t *testing.T) {
	text := "version: 1\ndefault: deny\nclients:\n  - name: many\n    default: allow\n    sources: ["
	for i := 0; i < 100; i++ {
		if i > 0 {
			text += ", "
		}
		text += fmt.Sprintf("10.%d.0.0/16", i)
	}
	text += "]\n"
	p := mustLoadText(t, "p.yaml", text)
	if cs := diffClients([]*Policy{p, p}); len(cs) != 2 {
		t.Errorf("%d clients for one entry of 100 sources; want 2 (any client, one of the entry)", len(cs))
	}
}
