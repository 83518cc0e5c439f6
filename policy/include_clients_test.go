package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// A clients: entry is a policy of its own, but in a layered policy it is
// still one file's: it must not allow what another file denies, nor loosen
// the default another file set.
func TestIncludeClientsEntryCannotLoosenAnotherFile(t *testing.T) {
	t.Run("a site's clients entry does not lift the baseline's deny", func(t *testing.T) {
		files := map[string]string{
			"base.yaml": "version: 1\ndefault: deny\ndeny:\n  - host: evil.example.com\n  - cidr: 10.0.0.0/8\n",
			"site.yaml": "version: 1\ninclude: base.yaml\nclients:\n  - name: all\n    sources: [\"0.0.0.0/0\", \"::/0\"]\n    allow:\n      - host: evil.example.com\n      - cidr: 10.0.0.0/8\n",
		}
		p, errs := loadMem(t, files, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		if n := len(p.Rules()); n != 4 {
			t.Errorf("Rules() has %d rules; want the 4 the files hold (an entry's inherited denies are not its own)", n)
		}
		client := netip.MustParseAddr("192.0.2.7")
		if d := p.Decide(Request{Client: client, Host: "evil.example.com", Port: 443}); d.Verdict != Deny {
			t.Errorf("evil.example.com from a clients entry of the site: %v %v; want the baseline's deny", d.Verdict, d.Reason)
		}
		if d := p.Decide(Request{Client: client, IP: netip.MustParseAddr("10.1.2.3"), Port: 5432}); d.Verdict != Deny {
			t.Errorf("10.1.2.3 from a clients entry of the site: %v %v; want the baseline's deny", d.Verdict, d.Reason)
		}
	})
	t.Run("a site's clients entry cannot set default allow under a baseline's default deny", func(t *testing.T) {
		files := map[string]string{
			"base.yaml": "version: 1\ndefault: deny\nmode: enforce\n",
			"site.yaml": "version: 1\ninclude: base.yaml\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    default: allow\n    mode: audit\n",
		}
		_, errs := loadMem(t, files, "site.yaml")
		want := []string{"site.yaml:6:14: ", "site.yaml:7:11: "}
		if len(errs) != len(want) {
			t.Fatalf("errors %q; want %d, at %q", errs, len(want), want)
		}
		for i := range want {
			if !strings.HasPrefix(errs[i], want[i]) || !strings.Contains(errs[i], "base.yaml:") {
				t.Errorf("error %q; want at %s naming base.yaml", errs[i], want[i])
			}
		}
	})
	t.Run("a clients entry's own file still decides alone", func(t *testing.T) {
		files := map[string]string{
			"site.yaml": "version: 1\ndefault: deny\ndeny:\n  - host: evil.example.com\nclients:\n  - name: all\n    sources: [0.0.0.0/0]\n    default: allow\n",
		}
		p, errs := loadMem(t, files, "site.yaml")
		if errs != nil {
			t.Fatal(errs)
		}
		if d := p.Decide(Request{Client: netip.MustParseAddr("192.0.2.7"), Host: "evil.example.com", Port: 443}); d.Verdict != Allow {
			t.Errorf("single file: %v %v; want the entry's default allow (top-level rules do not apply to it)", d.Verdict, d.Reason)
		}
	})
}
