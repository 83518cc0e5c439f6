package policy

import (
	"errors"
	"strings"
	"testing"
)

// loadErrors loads text and returns its errors as "LINE:COL: message".
func loadErrors(t *testing.T, text string) []string {
	t.Helper()
	_, err := Load("bad.yaml", []byte(text))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load = %v; want Errors", err)
	}
	var out []string
	for _, d := range errs {
		out = append(out, strings.TrimPrefix(d.String(), "bad.yaml:"))
	}
	return out
}

// Issue 14: messages that say what to do.
func TestLoadMessages(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string // every error, in order, exactly
	}{
		{"a tab indenting a list item is named at the tab", "version: 1\ndefault: deny\nallow:\n\t- host: a.com\n", []string{
			"4:1: a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"}},
		{"a tab after spaces is named at its column", "version: 1\ndefault: deny\nlisten:\n  http: 127.0.0.1:1\n  \tdns: 127.0.0.1:2\n", []string{
			"5:3: a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"}},
		{"a tab indenting a key yaml.v3 reports a line early", "version: 1\ndefault: deny\nlisten:\n  http: 127.0.0.1:1\n\tdns: 127.0.0.1:2\n", []string{
			"5:1: a tab in the indentation: YAML indents with spaces only; replace the tab with spaces"}},
		{"an https URL as a host gives the rule it meant", "version: 1\ndefault: deny\nallow:\n  - host: \"https://api.example.com\"\n", []string{
			`4:11: host "https://api.example.com" is a URL: a rule names a host and its ports; write - {host: api.example.com, ports: [443]}`}},
		{"an http URL means port 80, and a path is not matched", "version: 1\ndefault: deny\nallow:\n  - host: \"http://API.example.com/v1\"\n", []string{
			`4:11: host "http://API.example.com/v1" is a URL: a rule names a host and its ports (egress decides on hosts and ports, never on paths); write - {host: api.example.com, ports: [80]}`}},
		{"a URL's explicit port wins over its scheme's", "version: 1\ndefault: deny\nallow:\n  - host: \"https://api.example.com:8443\"\n", []string{
			`4:11: host "https://api.example.com:8443" is a URL: a rule names a host and its ports; write - {host: api.example.com, ports: [8443]}`}},
		{"a URL to an address means a cidr rule", "version: 1\ndefault: deny\nallow:\n  - cidr: \"https://10.0.0.1\"\n", []string{
			`4:11: cidr "https://10.0.0.1" is a URL: a rule names a host and its ports; write - {cidr: 10.0.0.1/32, ports: [443]}`}},
		{"a misspelt default is reported, and not its absence", "version: 1\ndefualt: deny\n", []string{
			`2:1: unknown field "defualt" in the policy (did you mean "default"?)`}},
		{"a misspelt version is reported, and not its absence", "verison: 1\ndefault: deny\n", []string{
			`1:1: unknown field "verison" in the policy (did you mean "version"?)`}},
		{"an unknown key comes before the absence it does not explain", "version: 1\nverdict: deny\n", []string{
			`2:1: unknown field "verdict" in the policy (known: version, default, mode, allow, deny, allow_from, nat64_prefixes, clients, listen, log, dns, timeouts, limits, reload, tls, include)`,
			`1:1: default is required: add default: allow (full internet) or default: deny (only what is listed)`}},
		{"a section's key at the top level says where it belongs", "version: 1\ndefault: deny\nupstreams: [192.0.2.53]\n", []string{
			`3:1: unknown field "upstreams" in the policy (it belongs under dns: write it as dns.upstreams)`}},
		{"two letters off in a long name", "version: 1\ndefault: deny\nlsitne:\n  http: 127.0.0.1:1\n", []string{
			`3:1: unknown field "lsitne" in the policy (did you mean "listen"?)`}},
		{"listen", "version: 1\ndefault: deny\nlisten:\n  amdin: 127.0.0.1:1\n", []string{`4:3: unknown field "amdin" in listen (did you mean "admin"?)`}},
		{"dns", "version: 1\ndefault: deny\ndns:\n  upstream: [192.0.2.53]\n", []string{`4:3: unknown field "upstream" in dns (did you mean "upstreams"?)`}},
		{"log", "version: 1\ndefault: deny\nlog:\n  fromat: json\n", []string{`4:3: unknown field "fromat" in log (did you mean "format"?)`}},
		{"timeouts", "version: 1\ndefault: deny\ntimeouts:\n  dail: 1s\n", []string{`4:3: unknown field "dail" in timeouts (did you mean "dial"?)`}},
		{"limits", "version: 1\ndefault: deny\nlimits:\n  max_tunnel: 1\n", []string{`4:3: unknown field "max_tunnel" in limits (did you mean "max_tunnels"?)`}},
		{"reload", "version: 1\ndefault: deny\nreload:\n  revoke-open: false\n", []string{`4:3: unknown field "revoke-open" in reload (did you mean "revoke_open"?)`}},
		{"a clients entry, and not the absence of its name", "version: 1\ndefault: deny\nclients:\n  - nmae: a\n    sources: [10.0.0.0/8]\n", []string{
			`4:5: unknown field "nmae" in a clients entry (did you mean "name"?)`}},
		{"a rule, and not the absence of its host", "version: 1\ndefault: deny\nallow:\n  - hots: a.com\n", []string{
			`4:5: unknown field "hots" in an allow rule (did you mean "host"?)`}},
		{"a rule's reason", "version: 1\ndefault: deny\ndeny:\n  - host: a.com\n    reasons: x\n", []string{
			`5:5: unknown field "reasons" in a deny rule (did you mean "reason"?)`}},
		{"a rule's reason is one line", "version: 1\ndefault: deny\ndeny:\n  - host: a.com\n    reason: \"two\\nlines\"\n", []string{
			`5:13: reason must be one line of printable text: it has '\n'`}},
		{"a rule's reason is bounded", "version: 1\ndefault: deny\ndeny:\n  - host: a.com\n    reason: " + strings.Repeat("x", 201) + "\n", []string{
			`5:13: reason is longer than 200 bytes`}},
		{"a rule's reason is text", "version: 1\ndefault: deny\ndeny:\n  - host: a.com\n    reason: [a]\n", []string{
			`5:13: reason must be a string, not a list`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := loadErrors(t, c.text)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestWithAllowsURL(t *testing.T) {
	for _, c := range []struct{ target, want string }{
		{"https://api.example.com", `--allow:1:1: "https://api.example.com" is a URL: a target is HOST[:PORT]; write --allow api.example.com:443`},
		{"http://api.example.com:8080/x", `--allow:1:1: "http://api.example.com:8080/x" is a URL: a target is HOST[:PORT]; write --allow api.example.com:8080`},
		{"https://[2001:db8::1]/", `--allow:1:1: "https://[2001:db8::1]/" is a URL: a target is HOST[:PORT]; write --allow [2001:db8::1]:443`},
	} {
		_, err := Builtin().WithAllows("--allow", []string{c.target})
		if err == nil || err.Error() != c.want {
			t.Errorf("WithAllows(%q) = %v; want %s", c.target, err, c.want)
		}
	}
}

// The sections' fields named in suggestions are the loader's own.
func TestSectionFields(t *testing.T) {
	for sec, names := range sectionFields {
		for _, name := range names {
			text := "version: 1\ndefault: deny\n" + sec + ":\n  " + name + ": ~\n"
			_, err := Load("x.yaml", []byte(text))
			if err != nil && strings.Contains(err.Error(), "unknown field") {
				t.Errorf("%s.%s: %v", sec, name, err)
			}
		}
	}
}

func TestRuleReasonDecides(t *testing.T) {
	p, err := Load("p.yaml", []byte("version: 1\ndefault: allow\ndeny:\n  - host: \"*.eu.example\"\n    reason: \"sales data stays in the EU: ask #netops\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide(Request{Host: "crm.eu.example", Port: 443})
	if d.Reason != ReasonDeniedByRule || d.Rule == nil || d.Rule.Note != "sales data stays in the EU: ask #netops" || d.Rule.Text != `{host: "*.eu.example"}` {
		t.Errorf("decision %+v", d)
	}
}

func TestFindTab(t *testing.T) {
	for _, c := range []struct {
		text           string
		line           int
		wantL, wantC   int
		wantIndentsTab bool
	}{
		{"a:\n\t- b\n", 2, 2, 1, true},
		{"a:\n  b: 1\n  \tc: 2\n", 2, 3, 3, true}, // reported a line early
		{"a: b\tc\n", 1, 1, 5, false},
		{"a: b\n", 1, 0, 0, false},
	} {
		l, col, indent := findTab([]byte(c.text), c.line)
		if l != c.wantL || col != c.wantC || indent != c.wantIndentsTab {
			t.Errorf("findTab(%q, %d) = %d, %d, %v; want %d, %d, %v", c.text, c.line, l, col, indent, c.wantL, c.wantC, c.wantIndentsTab)
		}
	}
}
