package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// FuzzLoad: no input may panic the loader; a loaded policy decides on
// anything without panicking; every error carries a position.
func FuzzLoad(f *testing.F) {
	for _, text := range testPolicies {
		f.Add(text)
	}
	for _, s := range []string{
		"",
		"version: 1\ndefault: allow\n",
		"version: 1\ndefault: deny\nallow:\n  - {host: \"*.example.com\", ports: [443, \"8000-8100\"]}\n  - cidr: 10.0.0.0/8\n",
		"version: 1\ndefault: deny\n---\nversion: 1\n",
		"version: 1\ndefault: deny\nallow: &a [{host: a.com}]\nclients: [{name: x, users: [u], allow: *a}]\n",
		"version: 1\ndefault: deny\nallow:\n  - host: a.*.b.com\n  - host: \"*\"\n  - cidr: \"::ffff:1.2.3.0/120\"\n",
		"version: 1\ndefault: deny\nlisten: {http: \"[::1]:0\"}\ndns: {upstreams: [\"::1\"], min_ttl: 1s, max_ttl: 0s}\n",
		"{version: 1, default: deny, allow: [{host: x, ports: [0, \"1-0\", 65535]}]}",
		"version: !!str 1\ndefault: !!binary ZGVueQ==\n",
		"<<: {version: 1}\ndefault: deny\n",
		"version: 1\ndefault: deny\nallow: [[[[[[[[]]]]]]]]\n",
		"version: 1\ndefault: deny\nallow:\n\t- host: a.com\n",
		"version: 1\ndefault: deny\nallow:\n  - host: \"https://a.com:8443/x?y\"\n  - cidr: \"http://[::1]\"\n",
		"version: 1\ndefualt: deny\nlsiten: {amdin: x}\n",
		"version: 1\ninclude: [inc.yaml, f.yaml, nope.yaml]\ndefault: deny\ndeny: [{host: a.com, reason: \"why: not\"}]\n",
	} {
		f.Add(s)
	}
	reqs := []Request{
		{Host: "a.com", Port: 443},
		{Host: "x.a.b.com", IP: netip.MustParseAddr("10.0.0.1"), Port: 80},
		{IP: netip.MustParseAddr("::1")},
		{Host: "metadata", Client: netip.MustParseAddr("127.0.0.1"), User: "u"},
	}
	// An included file, and the fuzzed file itself (a cycle).
	read := func(text string) func(string) ([]byte, error) {
		return memFiles(map[string]string{
			"inc.yaml": "version: 1\ndefault: deny\ndeny: [{host: \"*.a.com\"}, {cidr: 10.0.0.0/8}]\n",
			"f.yaml":   text,
		})
	}
	f.Fuzz(func(t *testing.T, text string) {
		p, err := LoadWith("f.yaml", []byte(text), read(text))
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not Errors: %v", err)
			}
			for _, d := range errs {
				if d.Line < 1 || d.Column < 1 || d.File != "f.yaml" && d.File != "inc.yaml" || d.Message == "" {
					t.Fatalf("bad diagnostic %+v", d)
				}
			}
			return
		}
		if p.Version != 1 {
			t.Fatalf("loaded version %d", p.Version)
		}
		for i, r := range p.Rules() {
			if i == 20 {
				break
			}
			// The text of every rule is valid flow YAML for the same rule.
			q, err := Load("r.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - "+r.Text+"\n"))
			if err != nil {
				t.Fatalf("rule text %q does not load: %v", r.Text, err)
			}
			if got := q.Rules()[0]; got.Host != r.Host || got.Prefix != r.Prefix || len(got.Ports) != len(r.Ports) {
				t.Fatalf("rule text %q loads as %+v, not %+v", r.Text, got, r)
			}
		}
		for _, r := range reqs {
			d := p.Decide(r)
			if d.Denied() && d.Reason == "" {
				t.Fatalf("denied without a reason")
			}
		}
	})
}

// FuzzNormalizeHost: no input panics; the normal form is a fixed point,
// a hostname of allowed characters, or an address.
func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"api.example.com", "API.Example.COM.", "bücher.example", "xn--bcher-kva.example", "2130706433",
		"0177.0.0.1", "0x7f.0.0.1", "127.1", "::ffff:127.0.0.1", "[::1]", "fe80::1%eth0", "[fe80::1%25eth0]",
		"1.2.3.4.5", "256.1", "0x", "0x.0x.0x.0x", "a..b", ".", "", "１２７.０.０.１", "a。b", "[", "]", "%",
		"xn--", "xn--a.xn--b", "_srv._tcp.example.com", "*.example.com", "a b", "\x00", "::", "[::ffff:0.0.0.0]",
		"ab\u200dc.example", "ｅｘａｍｐｌｅ.com", "ß.de", "ǅ.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, ip, err := NormalizeHost(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidHost) {
				t.Fatalf("error %v does not wrap ErrInvalidHost", err)
			}
			if name != "" || ip.IsValid() {
				t.Fatalf("error with a result")
			}
			return
		}
		if (name == "") == !ip.IsValid() {
			t.Fatalf("NormalizeHost(%q) = %q, %v: want exactly one of name and address", s, name, ip)
		}
		if ip.IsValid() {
			if ip.Zone() != "" || ip.Is4In6() {
				t.Fatalf("NormalizeHost(%q) = %v: zone or mapped address kept", s, ip)
			}
			if _, ip2, err := NormalizeHost(ip.String()); err != nil || ip2 != ip {
				t.Fatalf("address %v does not normalise to itself: %v %v", ip, ip2, err)
			}
			return
		}
		if len(name) > maxNameLen || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != "" {
			t.Fatalf("NormalizeHost(%q) = %q: not a lowercase hostname", s, name)
		}
		if n2, ip2, err := NormalizeHost(name); err != nil || n2 != name || ip2.IsValid() {
			t.Fatalf("NormalizeHost(%q) = %q; again: %q %v %v", s, name, n2, ip2, err)
		}
	})
}
