package policy

import (
	"errors"
	"io/fs"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// memFiles reads policy files from a map, as os.ReadFile would.
func memFiles(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		s, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(s), nil
	}
}

func loadMem(t *testing.T, files map[string]string, root string) (*Policy, []string) {
	t.Helper()
	p, err := LoadWith(root, []byte(files[root]), memFiles(files))
	if err == nil {
		return p, nil
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("LoadWith = %v; want Errors", err)
	}
	var out []string
	for _, d := range errs {
		out = append(out, d.String())
	}
	return nil, out
}

const base = `version: 1
default: deny
allow:
  - host: "*.example.com"
    ports: [443]
  - cidr: 10.0.0.0/8
    ports: [5432]
deny:
  - host: "*.ads.example.com"
    reason: "no ads: ask #netops"
  - host: evil.example.com
log:
  level: debug
listen:
  http: 127.0.0.1:3000
`

func TestIncludeCombines(t *testing.T) {
	files := map[string]string{
		"configs/base.yaml": base,
		"configs/site.yaml": `version: 1
include: [base.yaml]
allow:
  - host: cdn.ads.example.com       # a baseline deny wins over it
    ports: [443]
  - host: api.partner.example
    ports: [443]
deny:
  - host: old.example.com           # the site's deny wins over the baseline's allow
  - cidr: 10.9.0.0/16
listen:
  http: 127.0.0.1:4000
`,
	}
	p, errs := loadMem(t, files, "configs/site.yaml")
	if errs != nil {
		t.Fatal(strings.Join(errs, "\n"))
	}
	if got, want := p.Files(), []string{"configs/site.yaml", "configs/base.yaml"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Files() = %v, want %v", got, want)
	}
	if p.Default != Deny || p.Listen.HTTP != "127.0.0.1:4000" || p.Log.Level != "debug" {
		t.Errorf("settings: default %v, listen.http %s, log.level %s; want deny (included), 127.0.0.1:4000 (the site's), debug (included)", p.Default, p.Listen.HTTP, p.Log.Level)
	}
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	for _, c := range []struct {
		name   string
		req    Request
		allow  bool
		reason Reason
		rule   string // FILE:LINE of the deciding rule
		hint   string
	}{
		{"the baseline's allow rule decides, and names its file", Request{Host: "www.example.com", Port: 443}, true, ReasonAllowedByRule, "configs/base.yaml:4", ""},
		{"the site's allow rule decides", Request{Host: "api.partner.example", Port: 443}, true, ReasonAllowedByRule, "configs/site.yaml:6", ""},
		{"a baseline deny wins over a more specific allow of the site", Request{Host: "cdn.ads.example.com", Port: 443}, false, ReasonDeniedByRule, "configs/base.yaml:9",
			"a deny in an included file wins over the allow rules of every other file: remove or narrow the deny rule at configs/base.yaml:9"},
		{"a baseline's exact deny wins", Request{Host: "evil.example.com", Port: 443}, false, ReasonDeniedByRule, "configs/base.yaml:11", ""},
		{"the site's deny wins over the baseline's allow", Request{Host: "old.example.com", Port: 443}, false, ReasonDeniedByRule, "configs/site.yaml:9", ""},
		{"the baseline's cidr rule lifts the private guard", Request{IP: ip("10.1.2.3"), Port: 5432}, true, ReasonAllowedByRule, "configs/base.yaml:6", ""},
		{"the site's cidr deny wins inside it", Request{IP: ip("10.9.0.1"), Port: 5432}, false, ReasonDeniedByRule, "configs/site.yaml:10", ""},
		{"the guards still hold", Request{IP: ip("192.168.0.1"), Port: 5432}, false, ReasonGuardPrivate, "", ""},
		{"what no file names falls to the default", Request{Host: "other.example.net", Port: 443}, false, ReasonNoRuleMatched, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := p.Decide(c.req)
			if d.Allowed() != c.allow || d.Reason != c.reason || d.RuleLocation() != c.rule || c.hint != "" && d.Hint != c.hint {
				t.Errorf("decision %s %s rule %q hint %q; want allow=%v %s rule %q hint %q", d.Verdict, d.Reason, d.RuleLocation(), d.Hint, c.allow, c.reason, c.rule, c.hint)
			}
		})
	}
	// The rule's reason: comes along with the rule.
	if d := p.Decide(Request{Host: "x.ads.example.com", Port: 443}); d.Rule == nil || d.Rule.Note != "no ads: ask #netops" {
		t.Errorf("decision %+v: want the baseline rule with its reason", d)
	}
}

func TestIncludeErrors(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"a missing file is an error at the include line", map[string]string{
			"site.yaml": "version: 1\ndefault: deny\ninclude:\n  - base.yaml\n  - nope.yaml\n", "base.yaml": "version: 1\n"},
			[]string{"site.yaml:5:5: include \"nope.yaml\": cannot read nope.yaml: file does not exist"}},
		{"a cycle is an error at the include line that closes it", map[string]string{
			"site.yaml": "version: 1\ndefault: deny\ninclude: [a.yaml]\n", "a.yaml": "version: 1\ninclude: [site.yaml]\n"},
			[]string{"a.yaml:2:11: include \"site.yaml\": a cycle: site.yaml includes a.yaml includes site.yaml"}},
		{"an included file's errors are at its own FILE:LINE:COL, before the including file's", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefualt: deny\n", "base.yaml": "version: 1\nallow:\n  - host: A.com\n"},
			[]string{`base.yaml:3:11: host "A.com" is not in normal form: write "a.com"`, `site.yaml:3:1: unknown field "defualt" in the policy (did you mean "default"?)`}},
		{"an included file needs a version too", map[string]string{
			"site.yaml": "version: 1\ndefault: deny\ninclude: [base.yaml]\n", "base.yaml": "allow: []\n"},
			[]string{"base.yaml:1:1: version is required: add version: 1"}},
		{"the policy needs a default in some file", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\n"},
			[]string{"site.yaml:1:1: default is required: add default: allow (full internet) or default: deny (only what is listed)"}},
		{"an including file cannot loosen default: deny", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: allow\n", "base.yaml": "version: 1\ndefault: deny\n"},
			[]string{"site.yaml:3:10: default: allow would loosen default: deny of base.yaml:2: a file may tighten the default of the files it includes, never loosen it"}},
		{"nor mode: enforce", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nmode: audit\n", "base.yaml": "version: 1\ndefault: deny\nmode: enforce\n"},
			[]string{"site.yaml:3:7: mode: audit would loosen mode: enforce of base.yaml:3: a file may tighten the mode of the files it includes, never loosen it"}},
		{"a client name is unique across files", map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nclients:\n  - {name: a, users: [y]}\n", "base.yaml": "version: 1\ndefault: deny\nclients:\n  - {name: a, users: [x]}\n"},
			[]string{`site.yaml:4:12: client name "a" is used twice (first at base.yaml:4)`}},
		{"include takes file names", map[string]string{
			"site.yaml": "version: 1\ndefault: deny\ninclude: [[a]]\n"},
			[]string{"site.yaml:3:11: an include must be a string, not a list"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errs := loadMem(t, c.files, "site.yaml")
			if strings.Join(errs, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(errs, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestIncludeSemantics(t *testing.T) {
	t.Run("an including file may tighten default and mode", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: deny\nmode: enforce\n", "base.yaml": "version: 1\ndefault: allow\nmode: audit\n"}, "site.yaml")
		if errs != nil || p.Default != Deny || p.Mode != Enforce {
			t.Fatalf("errors %v, policy %+v", errs, p)
		}
	})
	t.Run("a file included twice is read once", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{
			"site.yaml": "version: 1\ninclude: [a.yaml, b.yaml]\n", "a.yaml": "version: 1\ninclude: [base.yaml]\n",
			"b.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: deny\nallow: [{host: a.com}]\n"}, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		if got := p.Files(); !reflect.DeepEqual(got, []string{"site.yaml", "a.yaml", "base.yaml", "b.yaml"}) {
			t.Errorf("Files() = %v", got)
		}
		if n := len(p.Rules()); n != 1 {
			t.Errorf("%d rules, want 1", n)
		}
	})
	t.Run("clients entries inherit the final default and mode", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\ndefault: deny\n",
			"base.yaml": "version: 1\ndefault: allow\nclients:\n  - {name: a, users: [x]}\n"}, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		if d := p.Decide(Request{Host: "a.com", Port: 443, User: "x"}); d.Policy != "a" || d.Allowed() {
			t.Errorf("decision %+v; want client a, denied by the final default", d)
		}
	})
	t.Run("within one file an allow may still beat its own deny", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nallow: [{host: x.b.com, ports: [443]}]\n",
			"base.yaml": "version: 1\ndefault: deny\ndeny: [{host: \"*.a.com\"}]\nallow: [{host: x.a.com}]\n"}, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		if d := p.Decide(Request{Host: "x.a.com", Port: 443}); !d.Allowed() || d.RuleLocation() != "base.yaml:4" {
			t.Errorf("decision %s %s", d.Verdict, d.RuleLocation())
		}
	})
	t.Run("a listener warning follows the setting in force", func(t *testing.T) {
		p, errs := loadMem(t, map[string]string{
			"site.yaml": "version: 1\ninclude: [base.yaml]\nlisten: {http: 127.0.0.1:3128}\n",
			"base.yaml": "version: 1\ndefault: deny\nlisten: {http: 0.0.0.0:3128, dns: 0.0.0.0:53}\n"}, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		var got []string
		for _, w := range p.Warnings() {
			got = append(got, w.String())
		}
		if want := []string{"base.yaml:3:35: 0.0.0.0:53 is not a loopback address and allow_from is empty: anyone who reaches it can use egress; set allow_from"}; !reflect.DeepEqual(got, want) {
			t.Errorf("warnings %q, want %q", got, want)
		}
	})
	t.Run("Load reads no file", func(t *testing.T) {
		_, err := Load("site.yaml", []byte("version: 1\ndefault: deny\ninclude: [base.yaml]\n"))
		if err == nil || err.Error() != `site.yaml:3:11: include "base.yaml": this policy is not read from a file, and cannot include one` {
			t.Errorf("Load = %v", err)
		}
	})
	t.Run("the hash covers included files", func(t *testing.T) {
		files := map[string]string{"site.yaml": "version: 1\ninclude: [base.yaml]\n", "base.yaml": "version: 1\ndefault: deny\n"}
		a, _ := loadMem(t, files, "site.yaml")
		files["base.yaml"] += "allow: [{host: a.com}]\n"
		b, _ := loadMem(t, files, "site.yaml")
		if a == nil || b == nil || a.Hash() == b.Hash() {
			t.Errorf("hash unchanged by an included file's change")
		}
	})
}

func TestIncludeLintsAllowsADenyOfAnotherFileBeats(t *testing.T) {
	p, errs := loadMem(t, map[string]string{
		"base.yaml": "version: 1\ndefault: deny\ndeny:\n  - host: \"*.ads.example.com\"\n  - cidr: 10.9.0.0/16\n  - host: \"*.x.example.com\"\nallow:\n  - host: ok.x.example.com\n",
		"site.yaml": "version: 1\ninclude: [base.yaml]\nallow:\n  - {host: cdn.ads.example.com, ports: [443]}\n  - {cidr: 10.9.1.0/24}\n  - {host: ok.x.example.com, ports: [443]}\n  - {cidr: 10.0.0.0/8}\n",
	}, "site.yaml")
	if errs != nil {
		t.Fatal(errs)
	}
	var got []string
	for _, w := range p.Warnings() {
		got = append(got, w.String())
	}
	want := []string{
		`site.yaml:4:5: this rule never decides: the deny rule {host: "*.ads.example.com"} at base.yaml:4 matches everything it does, and between a policy's files a deny wins`,
		`site.yaml:5:5: this rule never decides: the deny rule {cidr: 10.9.0.0/16} at base.yaml:5 matches everything it does, and between a policy's files a deny wins`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestIncludeFailureHidesItsConsequences(t *testing.T) {
	_, errs := loadMem(t, map[string]string{"site.yaml": "version: 1\ninclude: [base.yaml]\n"}, "site.yaml")
	if want := []string{"site.yaml:2:11: include \"base.yaml\": cannot read base.yaml: file does not exist"}; strings.Join(errs, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors %q, want %q (no 'default is required': the missing file may set it)", errs, want)
	}
}
