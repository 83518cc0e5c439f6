package policy

import (
	"strings"
	"testing"
)

// Issue 21: lint warns of the rules and settings that open more than they
// seem, each saying what it opens; quiet about the ordinary ones.
func TestLintWarnsWhatARuleOpens(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       string // in the one warning; "" = none
	}{
		{"the metadata address", "default: deny\nallow:\n  - {cidr: 169.254.169.254/32, ports: [80]}\n", "lifts guard_metadata on port 80: it opens the cloud's metadata service"},
		{"loopback", "default: deny\nallow:\n  - {cidr: 127.0.0.0/8}\n", "lifts guard_loopback on every port: it opens this host's own services"},
		{"one loopback address on a port range", "default: deny\nallow:\n  - {cidr: \"::1/128\", ports: [8000-8999]}\n", "lifts guard_loopback on ports 8000-8999"},
		{"every IPv4 address under default deny", "default: deny\nallow:\n  - {cidr: 0.0.0.0/0}\n", "allows every IPv4 address, and every name that resolves to one, on every port: under default: deny this is default: allow"},
		{"every IPv6 address under default deny", "default: deny\nallow:\n  - {cidr: \"::/0\", ports: [443]}\n", "allows every IPv6 address"},
		{"every name under default deny", "default: deny\nallow:\n  - {host: \"*\"}\n", "allows every name on every port: under default: deny this is default: allow"},
		{"the admin listener on every interface", "default: deny\nlisten:\n  admin: 0.0.0.0:9099\n", "the admin listener serves /policy (the policy file, its mode and reload errors) and /denials"},
		{"the admin listener despite allow_from", "default: deny\nallow_from: [10.0.0.0/8]\nlisten:\n  admin: 10.1.2.3:9090\n", "without authentication"},
		{"a private range is an ordinary rule", "default: deny\nallow:\n  - {cidr: 10.0.0.0/8}\n", ""},
		{"link-local around the metadata address lifts no metadata guard", "default: deny\nallow:\n  - {cidr: 169.254.0.0/16, ports: [5353]}\n", ""},
		{"every IPv4 address under default allow is no news", "default: allow\nallow:\n  - {cidr: 0.0.0.0/0}\n", ""},
		{"the admin listener on loopback", "default: deny\nlisten:\n  admin: 127.0.0.1:9099\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Load("p.yaml", []byte("version: 1\n"+c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range p.Warnings() {
				got = append(got, w.String())
			}
			switch {
			case c.want == "" && len(got) > 0:
				t.Errorf("warnings %q; want none", got)
			case c.want != "" && (len(got) != 1 || !strings.Contains(got[0], c.want)):
				t.Errorf("warnings %q; want one saying %q", got, c.want)
			}
		})
	}
}

// Issue 21: a refusal's hint that would lift a guard says so.
func TestHintLiftsAGuardSaysSo(t *testing.T) {
	p := Builtin()
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Host: "localhost", Port: 5432}, "lifts guard_loopback: opens this host's own services"},
		{Request{Host: "169.254.169.254", Port: 80}, "lifts guard_metadata: opens the cloud's metadata service and its credentials"},
		{Request{Host: "10.0.0.1", Port: 5432}, "lifts guard_private: opens your internal network"},
		{Request{Host: "api.example.com", Port: 443}, ""},
	} {
		d := p.Decide(c.req)
		if got := d.HintLifts(); got != c.want {
			t.Errorf("%s:%d (%s, hint %q): HintLifts %q; want %q", c.req.Host, c.req.Port, d.Reason, d.Hint, got, c.want)
		}
	}
	q, err := Load("p.yaml", []byte("version: 1\ndefault: deny\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := q.Decide(Request{Host: "api.example.com", Port: 443}); d.HintLifts() != "" {
		t.Errorf("an ordinary refusal's hint lifts %q", d.HintLifts())
	}
}

// Issue 21: the apex a wildcard leaves out is suggested on the wildcard's
// own ports, never on every port.
func TestLintApexSuggestionKeepsThePorts(t *testing.T) {
	for _, c := range []struct{ rule, want string }{
		{`{host: "*.example.com", ports: [443]}`, "add - {host: example.com, ports: [443]} if that is wanted too"},
		{`{host: "*.example.com", ports: [80, "8000-8999"]}`, `add - {host: example.com, ports: [80, "8000-8999"]} if that is wanted too`},
		{`{host: "*.example.com"}`, "add - {host: example.com} if that is wanted too"},
	} {
		p, err := Load("p.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - "+c.rule+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if w := p.Warnings(); len(w) != 1 || !strings.HasSuffix(w[0].Message, c.want) {
			t.Errorf("%s: warnings %v; want one ending %q", c.rule, w, c.want)
		}
	}
}
