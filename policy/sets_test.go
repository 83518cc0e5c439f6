package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// translatedCarriers is what ConnectFilter passes under default allow,
// after the refused IPv6 forms of refused IPv4 ranges, of the IPv6 forms
// decided on the IPv4 address they carry.
const translatedCarriers = "[{64:ff9b::/96 []} {::ffff:0:0:0/96 []} {::8000:0/97 []} {::4000:0/98 []} {::2000:0/99 []} {::1000:0/100 []} {::800:0/101 []} {::400:0/102 []} {::200:0/103 []} {::100:0/104 []}]"

func TestConnectFilter(t *testing.T) {
	tests := []struct {
		name       string
		yaml       string
		refuseRest bool
		allow      string // fmt of the Allow list
		refuses    map[string]bool
	}{
		{
			name:       "default deny refuses the rest and passes cidr allow rules with their ports",
			yaml:       "version: 1\ndefault: deny\nallow:\n  - {cidr: 10.20.0.0/16, ports: [\"8000-8100\"]}\n  - {host: api.example.com, ports: [443]}\ndeny:\n  - {cidr: 10.20.1.0/24}\n",
			refuseRest: true,
			allow:      "[{10.20.0.0/16 [{8000 8100}]}]",
			refuses:    map[string]bool{"10.20.0.1": true, "93.184.216.34": true},
		},
		{
			name:  "default allow refuses the guards and cidr deny rules",
			yaml:  "version: 1\ndefault: allow\ndeny:\n  - {cidr: 93.184.216.0/24}\nallow:\n  - {cidr: 10.1.2.3, ports: [5432]}\n",
			allow: "[{10.1.2.3/32 [{5432 5432}]} {64:ff9b::a01:203/128 [{5432 5432}]} {::ffff:0:a01:203/128 [{5432 5432}]} {::a01:203/128 [{5432 5432}]} {2002:a01:203::/48 [{5432 5432}]}]",
			refuses: map[string]bool{"10.1.2.3": true, "169.254.169.254": true, "127.0.0.1": true, "93.184.216.34": true, "93.184.217.1": false, "2606:4700::1": false, "fd00::1": true,
				"64:ff9b::93.184.216.34": true, "2002:5db8:d822::1": true, "64:ff9b::93.184.217.1": false},
		},
		{
			name:  "default allow refuses IPv6 outside global unicast but passes the forms that carry an IPv4 address",
			yaml:  "version: 1\ndefault: allow\nnat64_prefixes: [\"2001:db8:64::/96\"]\n",
			allow: "[]",
			refuses: map[string]bool{
				"fec0::1": true, "1::1": true, "4000::1": true, "8000::1": true, "::": true, "::1": true, "::0.0.0.1": true, "::0.1.2.3": true,
				"2001:db8::1": true, "64:ff9b:1::1": true, "2001:0:4136:e378::1": true,
				"2606:4700::1": false, "64:ff9b::93.184.216.34": false, "::ffff:0:93.184.216.34": false, "::93.184.216.34": false,
				"2002:5db8:d822::1": false, "2001:db8:64::93.184.216.34": false,
			},
		},
		{
			name: "default allow refuses the IPv6 forms of guarded IPv4 under every translation (issue 18)",
			yaml: "version: 1\ndefault: allow\nnat64_prefixes: [\"2001:db8:64::/96\", \"2001:db8:4000::/40\"]\nallow:\n  - {cidr: 10.1.2.3, ports: [5432]}\n",
			allow: "[{10.1.2.3/32 [{5432 5432}]} {64:ff9b::a01:203/128 [{5432 5432}]} {::ffff:0:a01:203/128 [{5432 5432}]} {::a01:203/128 [{5432 5432}]} {2002:a01:203::/48 [{5432 5432}]}" +
				" {2001:db8:64::a01:203/128 [{5432 5432}]} {2001:db8:400a:102:3::/80 [{5432 5432}]}]",
			refuses: map[string]bool{
				"64:ff9b::169.254.169.254": true, "64:ff9b::10.1.2.4": true, "64:ff9b::127.0.0.1": true, "::ffff:0:192.168.1.1": true,
				"::10.0.0.1": true, "2002:a9fe:a9fe::1": true, "2002:7f00:1::": true, "2001:db8:64::172.16.0.1": true,
				"2001:db8:400a:102:4::": true, "2001:db8:407f:0:1::": true,
				"64:ff9b::93.184.216.34": false, "2002:5db8:d822::1": false, "2001:db8:64::93.184.216.34": false, "2001:db8:405d:b8d8:22::": false,
			},
		},
		{
			name:    "audit mode enforces the guards only",
			yaml:    "version: 1\ndefault: deny\nmode: audit\ndeny:\n  - {cidr: 93.184.216.0/24}\n",
			allow:   "[]",
			refuses: map[string]bool{"93.184.216.34": false, "10.0.0.1": true, "64:ff9b::10.0.0.1": true, "64:ff9b::93.184.216.34": false},
		},
		{
			name:    "one client policy that allows by default makes the filter refuse only guards",
			yaml:    "version: 1\ndefault: deny\nclients:\n  - name: open\n    sources: [10.9.0.0/16]\n    default: allow\n    deny:\n      - {cidr: 93.184.216.0/24}\n",
			allow:   "[]",
			refuses: map[string]bool{"93.184.216.34": false, "192.168.1.1": true, "2002:c0a8:101::1": true, "2002:5db8:d822::1": false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Load("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			f := p.ConnectFilter()
			if f.RefuseRest != tt.refuseRest {
				t.Errorf("RefuseRest = %v", f.RefuseRest)
			}
			if got := fmt.Sprint(f.Allow); got != tt.allow && !(got == "[]" && f.Allow == nil && tt.allow == "[]") {
				t.Errorf("Allow = %s, want %s", got, tt.allow)
			}
			if !f.RefuseRest && !strings.HasPrefix(fmt.Sprint(f.Carriers), translatedCarriers[:len(translatedCarriers)-1]) {
				t.Errorf("Carriers = %v, want %s and the declared prefixes", f.Carriers, translatedCarriers)
			}
			for a, want := range tt.refuses {
				if got := filterRefuses(f, netip.MustParseAddr(a), 443); got != want {
					t.Errorf("refuses %s = %v, want %v", a, got, want)
				}
				// The filter refuses only what the policy denies.
				if d := p.Decide(Request{IP: netip.MustParseAddr(a), Port: 443}); want && !d.Denied() {
					t.Errorf("refuses %s, which the policy allows (%s)", a, d.Reason)
				}
			}
		})
	}
}

// filterRefuses applies the filter as the kernel does, in
// ConnectFilter's order, to a connection to a on port.
func filterRefuses(f ConnectFilter, a netip.Addr, port uint16) bool {
	a = a.Unmap()
	in := func(ds []Dest) bool {
		for _, d := range ds {
			if !d.Prefix.Contains(a) {
				continue
			}
			if len(d.Ports) == 0 {
				return true
			}
			for _, pr := range d.Ports {
				if pr.Lo <= port && port <= pr.Hi {
					return true
				}
			}
		}
		return false
	}
	switch {
	case in(f.Allow):
		return false
	case in(f.RefuseCarried):
		return true
	case in(f.Carriers):
		return false
	case f.RefuseRest:
		return true
	}
	return in(f.Refuse)
}

func TestNamePorts(t *testing.T) {
	p, err := Load("p.yaml", []byte(`version: 1
default: deny
allow:
  - {host: api.example.com, ports: [443]}
  - {host: "*.example.com", ports: ["8000-8001"]}
  - {host: db.example.com}
deny:
  - {host: api.example.com, ports: [8000]}
clients:
  - name: open
    sources: [10.9.0.0/16]
    default: allow
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, client, host string
		want               string
	}{
		{"an exact rule and a wildcard add up, deny rules aside", "127.0.0.1", "api.example.com", "[{8000 8001} {443 443}] false true"},
		{"a rule without ports opens every port", "127.0.0.1", "DB.example.com.", "[] true true"},
		{"a name no allow rule matches needs no lease", "127.0.0.1", "example.org", "[] false false"},
		{"the apex is not under its wildcard", "127.0.0.1", "example.com", "[] false false"},
		{"a client policy that allows by default opens every port", "10.9.0.1", "example.org", "[] true true"},
		{"an invalid name needs no lease", "127.0.0.1", "bad name", "[] false false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ports, all, ok := p.NamePorts(netip.MustParseAddr(tt.client), tt.host)
			got := fmt.Sprint(ports, " ", all, " ", ok)
			if ports == nil {
				got = fmt.Sprint("[] ", all, " ", ok)
			}
			if got != tt.want {
				t.Errorf("NamePorts = %s, want %s", got, tt.want)
			}
		})
	}
}
