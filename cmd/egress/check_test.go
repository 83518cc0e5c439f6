package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestCheckGolden(t *testing.T) {
	runGoldenCases(t, cmdCheck, "check", []goldenCase{
		{"allowed", []string{"--config", "testdata/check/policy.yaml", "api.example.com:443", "https://api.example.com/v1/x", "10.20.0.5:5432"}, exitOK},
		{"denied", []string{"--config", "testdata/check/policy.yaml", "api.example.com:80", "http://api.example.com/", "10.20.0.6:5432", "tracking.cdn.example.net:443", "img.cdn.example.net:443", "db.corp.example:5432"}, exitDenied},
		{"builtin", []string{"api.example.com:443", "http://169.254.169.254/latest/meta-data", "metadata.google.internal:80", "[::1]:8080", "2130706433:80", "0x7f.1:80", "10.0.0.1:5432", "[fe80::1%25eth0]:22"}, exitDenied},
		{"flags after targets", []string{"api.example.com:443", "--config", "testdata/check/policy.yaml"}, exitOK},
		{"json", []string{"--json", "--config", "testdata/check/policy.yaml", "api.example.com:443", "api.example.com:80"}, exitDenied},
		{"audit", []string{"--config", "testdata/check/audit.yaml", "api.example.com:443", "other.example.com:443"}, exitDenied},
		{"bad config", []string{"--config", "testdata/check/bad.yaml", "api.example.com:443"}, exitUsage},
		{"missing config", []string{"--config", "testdata/check/missing.yaml", "api.example.com:443"}, exitUsage},
		{"bad target", []string{"api.example.com:99999"}, exitUsage},
		{"url without port", []string{"gopher://example.net/"}, exitUsage},
		{"invalid host", []string{"evil.com%2f:80", "a b:80"}, exitDenied},
		{"no targets", []string{"--json"}, exitUsage},
		{"localhost", []string{"localhost:5432", "LocalHost.:80", "app.localhost:3000", "localhost.example.com:443"}, exitDenied},
		{"localhost allowed by an exact rule", []string{"localhost:5432", "--config", "testdata/check/localhost.yaml"}, exitOK},
		{"public only", []string{"api.example.com:443", "https://example.net/"}, exitOK},
		{"public only json", []string{"--json", "api.example.com:443", "203.0.114.9:443"}, exitOK},
		{"include names the file that decided", []string{"--config", "../../configs/site.yaml", "api.example.com:443", "pypi.mirror.example.com:443", "paste.example.org:443", "www.example.org:80"}, exitDenied},
		{"rule reason", []string{"--config", "testdata/check/reason.yaml", "crm.eu.example:443", "api.eu.example:443"}, exitDenied},
		{"rule reason json", []string{"--json", "--config", "testdata/check/reason.yaml", "crm.eu.example:443"}, exitDenied},
		{"public only by a wildcard", []string{"--config", "testdata/check/policy.yaml", "img.cdn.example.net:443"}, exitOK},

		// --requirements: the example plugin's manifest against every ready config.
		{"requirements full-internet", []string{"--requirements", "../../examples/plugin-python/requirements.json", "--config", "../../configs/full-internet.yaml"}, exitOK},
		{"requirements handful-of-hosts", []string{"--requirements", "../../examples/plugin-python/requirements.json", "--config", "../../configs/handful-of-hosts.yaml"}, exitOK},
		{"requirements no-network", []string{"--requirements", "../../examples/plugin-python/requirements.json", "--config", "../../configs/no-network.yaml"}, exitDenied},
		{"requirements audit", []string{"--requirements", "../../examples/plugin-python/requirements.json", "--config", "../../configs/audit.yaml"}, exitDenied},
		{"requirements builtin", []string{"--requirements", "../../examples/plugin-python/requirements.json"}, exitOK},
		{"requirements mixed", []string{"--requirements", "testdata/check/requirements/mixed.json", "--config", "../../configs/handful-of-hosts.yaml"}, exitDenied},
		{"requirements optional refused", []string{"--requirements", "testdata/check/requirements/optional.json", "--config", "../../configs/handful-of-hosts.yaml"}, exitOK},
		{"requirements json", []string{"--json", "--requirements", "testdata/check/requirements/optional.json", "--config", "../../configs/handful-of-hosts.yaml"}, exitOK},
		{"requirements requests", []string{"--requirements", "testdata/check/requirements/requests.json", "--config", "testdata/check/requests.yaml"}, exitDenied},
		{"requirements bad manifest", []string{"--requirements", "testdata/check/requirements/bad.json"}, exitUsage},
		{"requirements missing manifest", []string{"--requirements", "testdata/check/requirements/missing.json"}, exitUsage},
		{"requirements bad config", []string{"--requirements", "testdata/check/requirements/optional.json", "--config", "testdata/check/bad.yaml"}, exitUsage},
		{"requirements and targets", []string{"--requirements", "testdata/check/requirements/optional.json", "api.example.com:443"}, exitUsage},
	})
}

func TestCheckJSONFields(t *testing.T) {
	_, out := runCommand(cmdCheck, "--json", "--config", "testdata/check/policy.yaml", "http://api.example.com:8080/")
	line := strings.SplitN(strings.SplitN(string(out), "--- stdout\n", 2)[1], "\n", 2)[0]
	var r checkResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if r.Verdict != "deny" || r.Host != "api.example.com" || r.Port != 8080 || r.Reason != "no_rule_matched" || r.Hint != "- {host: api.example.com, ports: [8080]}" || r.Source != "testdata/check/policy.yaml" || r.Policy != "default" {
		t.Errorf("%+v", r)
	}
}

// --resolve looks the name up (here in /etc/hosts) and decides on every
// address. localhost is loopback by name, so step 1 refuses it before any
// lookup; a loopback cidr rule on the port leaves it to its addresses, and
// --resolve decides each of them.
func TestCheckResolve(t *testing.T) {
	if hosts, err := os.ReadFile("/etc/hosts"); err != nil || !strings.Contains(string(hosts), "localhost") {
		t.Skip("/etc/hosts does not list localhost: resolving it could send a DNS query")
	}
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"without a loopback cidr, refused by name before any lookup", []string{"--resolve", "localhost:80"}, exitDenied,
			[]string{"deny       localhost:80  guard_loopback  hint: - {host: localhost, ports: [80]}"}},
		{"with one, every address decided", []string{"--resolve", "--config", "testdata/check/loopback-cidr.yaml", "localhost:80"}, exitDenied,
			[]string{"localhost:80 (", "guard_loopback"}},
		{"with one and no --resolve, it depends", []string{"--config", "testdata/check/loopback-cidr.yaml", "localhost:80"}, exitDenied,
			[]string{"depends    localhost:80  decide_per_address"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := runCommand(cmdCheck, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d:\n%s", code, c.code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestParseCheckTarget(t *testing.T) {
	cases := []struct {
		in   string
		host string
		port uint16
		bad  bool
	}{
		{"api.example.com:443", "api.example.com", 443, false},
		{"https://api.example.com/x?y", "api.example.com", 443, false},
		{"http://api.example.com", "api.example.com", 80, false},
		{"postgres://u:p@db.example:6432/x", "db.example", 6432, false},
		{"postgres://db.example/x", "db.example", 5432, false},
		{"10.0.0.1:5432", "10.0.0.1", 5432, false},
		{"[::1]:80", "::1", 80, false},
		{"[::1]", "::1", 0, false},
		{"::1", "::1", 0, false},
		{"[fe80::1%25eth0]:22", "fe80::1%25eth0", 22, false},
		{"fe80::1%eth0]:22", "", 0, true},
		{"api.example.com", "api.example.com", 0, false},
		{"api.example.com:0", "", 0, true},
		{"api.example.com:x", "", 0, true},
		{":80", "", 0, true},
		{"a:b:c", "", 0, true},
		{"", "", 0, true},
		{"unknown://x/", "", 0, true},
		{"http://:80/", "", 0, true},
	}
	for _, c := range cases {
		r, err := parseCheckTarget(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("parseCheckTarget(%q) = %+v; want an error", c.in, r)
			}
			continue
		}
		if err != nil || r.Host != c.host || r.Port != c.port {
			t.Errorf("parseCheckTarget(%q) = %+v, %v", c.in, r, err)
		}
	}
}

// Under default: deny with a cidr allow rule, a name no rule mentions is
// neither allowed nor denied until resolved: check says "depends" and
// exits 1, so that a CI gate never passes on it.
func TestCheckDependsOnAddresses(t *testing.T) {
	config := writeConfig(t, "version: 1\ndefault: deny\nallow:\n  - host: api.example.com\n    ports: [443]\n  - cidr: 10.20.0.5\n    ports: [5432]\n")
	code, out := runCommand(cmdCheck, "--config", config, "evil.example:5432", "api.example.com:443")
	if code != exitDenied {
		t.Errorf("exit %d, want %d:\n%s", code, exitDenied, out)
	}
	if !strings.Contains(string(out), "depends    evil.example:5432  decide_per_address") || !strings.Contains(string(out), "--resolve") {
		t.Errorf("output does not say the name depends on its addresses:\n%s", out)
	}
	// With dns.resolve_unlisted: false (handful-of-hosts.yaml) the name is
	// refused unresolved: no rule lists it.
	code, out = runCommand(cmdCheck, "--config", "../../configs/handful-of-hosts.yaml", "evil.example:5432")
	if code != exitDenied || !strings.Contains(string(out), "deny       evil.example:5432  no_rule_matched  hint: - {host: evil.example, ports: [5432]}") {
		t.Errorf("exit %d; want evil.example:5432 denied unresolved:\n%s", code, out)
	}
}
