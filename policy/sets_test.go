package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// translatedAllow is what ConnectFilter passes under default allow for the
// IPv6 forms decided on the IPv4 address they carry.
const translatedAllow = " {64:ff9b::/96 []} {::ffff:0:0:0/96 []} {::8000:0/97 []} {::4000:0/98 []} {::2000:0/99 []} {::1000:0/100 []} {::800:0/101 []} {::400:0/102 []} {::200:0/103 []} {::100:0/104 []}"

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
			name:    "default allow refuses the guards and cidr deny rules",
			yaml:    "version: 1\ndefault: allow\ndeny:\n  - {cidr: 93.184.216.0/24}\nallow:\n  - {cidr: 10.1.2.3, ports: [5432]}\n",
			allow:   "[{10.1.2.3/32 [{5432 5432}]}" + translatedAllow + "]",
			refuses: map[string]bool{"10.1.2.3": true, "169.254.169.254": true, "127.0.0.1": true, "93.184.216.34": true, "93.184.217.1": false, "2606:4700::1": false, "fd00::1": true},
		},
		{
			name:  "default allow refuses IPv6 outside global unicast but passes the forms that carry an IPv4 address",
			yaml:  "version: 1\ndefault: allow\nnat64_prefixes: [\"2001:db8:64::/96\"]\n",
			allow: "[" + translatedAllow[1:] + " {2001:db8:64::/96 []}]",
			refuses: map[string]bool{
				"fec0::1": true, "1::1": true, "4000::1": true, "8000::1": true, "::": true, "::1": true, "::0.0.0.1": true, "::0.1.2.3": true,
				"2001:db8::1": true, "64:ff9b:1::1": true, "2001:0:4136:e378::1": true,
				"2606:4700::1": false, "64:ff9b::93.184.216.34": false, "::ffff:0:93.184.216.34": false, "::93.184.216.34": false,
				"2002:5db8:d822::1": false, "2001:db8:64::93.184.216.34": false,
			},
		},
		{
			name:    "audit mode enforces the guards only",
			yaml:    "version: 1\ndefault: deny\nmode: audit\ndeny:\n  - {cidr: 93.184.216.0/24}\n",
			allow:   "[" + translatedAllow[1:] + "]",
			refuses: map[string]bool{"93.184.216.34": false, "10.0.0.1": true},
		},
		{
			name:    "one client policy that allows by default makes the filter refuse only guards",
			yaml:    "version: 1\ndefault: deny\nclients:\n  - name: open\n    sources: [10.9.0.0/16]\n    default: allow\n    deny:\n      - {cidr: 93.184.216.0/24}\n",
			allow:   "[" + translatedAllow[1:] + "]",
			refuses: map[string]bool{"93.184.216.34": false, "192.168.1.1": true},
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
			for a, want := range tt.refuses {
				if got := refusesOnSomePort(f, netip.MustParseAddr(a)); got != want {
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

// refusesOnSomePort applies the filter as the kernel does (Allow first),
// on the port-less question: is addr refused on every port Allow leaves?
func refusesOnSomePort(f ConnectFilter, a netip.Addr) bool {
	for _, d := range f.Allow {
		if d.Prefix.Contains(a) && len(d.Ports) == 0 {
			return false
		}
	}
	return f.Refuses(a)
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
