package policy

import (
	"net/netip"
	"reflect"
	"testing"
)

func mustLoadText(t *testing.T, file, text string) *Policy {
	t.Helper()
	p, err := Load(file, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// find returns the change for a destination, or nil.
func find(changes []Change, dest string) *Change {
	for i := range changes {
		if changes[i].Destination() == dest {
			return &changes[i]
		}
	}
	return nil
}

func TestDiff(t *testing.T) {
	const old = "version: 1\ndefault: deny\nallow:\n  - {host: api.example.com, ports: [443]}\n  - {host: \"*.cdn.example.net\", ports: [\"8000-8100\"]}\n"
	cases := []struct {
		name    string
		new     string
		wider   bool   // some change is wider
		dest    string // a destination that must be among the changes
		widerAt bool   // that destination's change is wider
		newRule string // FILE:LINE deciding it in new ("" for none)
		oldWhy  Reason
	}{
		{"the same policy changes nothing", old, false, "", false, "", ""},
		{"lifting the private guard shows an address in the range", old + "  - {cidr: 10.0.0.0/8, ports: [5432]}\n", true, "10.0.0.1:5432", true, "new.yaml:6", ReasonGuardPrivate},
		{"an exact host rule lifts the guard where its name resolves", old + "  - {host: db.corp.example, ports: [5432]}\n", true, "db.corp.example:5432 at 10.0.0.1", true, "new.yaml:6", ReasonNoRuleMatched},
		{"a name under a wildcard stands for it", "version: 1\ndefault: deny\nallow:\n  - {host: api.example.com, ports: [443]}\n", false, "any.cdn.example.net:8000", false, "", ReasonAllowedByRule},
		{"a wider port range shows the ports past the old one", "version: 1\ndefault: deny\nallow:\n  - {host: api.example.com, ports: [443]}\n  - {host: \"*.cdn.example.net\", ports: [\"8000-8200\"]}\n", true, "any.cdn.example.net:8101", true, "new.yaml:5", ReasonNoRuleMatched},
		{"default: allow lets a name no rule matches through", "version: 1\ndefault: allow\n", true, "unlisted.invalid:443", true, "", ReasonNoRuleMatched},
		{"audit mode lets through what enforce refused", old + "mode: audit\n", true, "unlisted.invalid:443", true, "", ReasonNoRuleMatched},
		{"a deny rule refuses what the old allow allowed", old + "deny:\n  - {host: api.example.com, ports: [443]}\n", false, "api.example.com:443", false, "new.yaml:7", ReasonAllowedByRule},
	}
	o := mustLoadText(t, "old.yaml", old)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := mustLoadText(t, "new.yaml", c.new)
			changes, tried := Diff(o, n)
			if tried == 0 {
				t.Fatal("nothing tried")
			}
			if got := len(changes) > 0 && changes[0].Wider(); got != c.wider {
				t.Errorf("wider = %v, want %v (%d changes)", got, c.wider, len(changes))
			}
			if c.dest == "" {
				if len(changes) != 0 {
					t.Errorf("changes %v, want none", changes)
				}
				return
			}
			ch := find(changes, c.dest)
			if ch == nil {
				var ds []string
				for _, x := range changes {
					ds = append(ds, x.Destination())
				}
				t.Fatalf("no change for %s among %q", c.dest, ds)
			}
			if ch.Wider() != c.widerAt || ch.New.RuleLocation() != c.newRule || ch.Old.Reason != c.oldWhy {
				t.Errorf("change %s: wider %v, new rule %q, old %s; want %v, %q, %s", c.dest, ch.Wider(), ch.New.RuleLocation(), ch.Old.Reason, c.widerAt, c.newRule, c.oldWhy)
			}
			// The decisions are serve's: Decide gives the same answer.
			for _, side := range []struct {
				p *Policy
				d Decision
			}{{o, ch.Old}, {n, ch.New}} {
				if d := effective(side.p, ch.Request); d.Allowed() != side.d.Allowed() || d.Reason != side.d.Reason {
					t.Errorf("decision %+v differs from Decide's %+v", side.d, d)
				}
			}
		})
	}
}

func TestDiffClients(t *testing.T) {
	const clients = "version: 1\ndefault: deny\nclients:\n  - name: vendor-a\n    sources: [10.1.0.0/16]\n    allow:\n      - {host: api.vendor-a.example, ports: [443]}\n"
	o := mustLoadText(t, "old.yaml", clients)
	n := mustLoadText(t, "new.yaml", clients+"      - {host: files.vendor-a.example, ports: [443]}\n")
	changes, _ := Diff(o, n)
	ch := find(changes, "files.vendor-a.example:443 from 10.1.0.1")
	if ch == nil || !ch.Wider() || ch.New.Policy != "vendor-a" {
		t.Fatalf("changes %+v; want files.vendor-a.example allowed for vendor-a", changes)
	}
	if find(changes, "files.vendor-a.example:443") != nil {
		t.Errorf("a client no entry selects gets the vendor's rule")
	}

	// allow_from: a client outside it is refused.
	o = mustLoadText(t, "old.yaml", "version: 1\ndefault: allow\nallow_from: [127.0.0.0/8]\n")
	n = mustLoadText(t, "new.yaml", "version: 1\ndefault: allow\n")
	changes, _ = Diff(o, n)
	if ch := find(changes, "unlisted.invalid:443 from 192.0.2.1"); ch == nil || !ch.Wider() || ch.Old.Reason != ReasonClientRefused {
		t.Errorf("changes %+v; want a client outside the old allow_from let in", changes)
	}
}

func TestDiffSampleName(t *testing.T) {
	for pat, want := range map[string]string{"*.example.com": "any.example.com", "a.*.example.com": "a.any.example.com", "api.example.com": "api.example.com"} {
		if got := sampleName(pat); got != want {
			t.Errorf("sampleName(%q) = %q, want %q", pat, got, want)
		}
	}
	if got := lastAddr(netip.MustParsePrefix("10.20.0.0/16")); got != netip.MustParseAddr("10.20.255.255") {
		t.Errorf("lastAddr = %s", got)
	}
}

func TestCidrAllowCouldMatchMergedPorts(t *testing.T) {
	rs := &ruleset{}
	for _, pr := range []PortRange{{8000, 8100}, {443, 443}, {8101, 8200}, {20, 30}, {25, 26}} {
		rs.rules = append(rs.rules, &Rule{Action: Allow, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: []PortRange{pr}})
	}
	rs.compile()
	if want := []PortRange{{20, 30}, {443, 443}, {8000, 8200}}; !reflect.DeepEqual(rs.cidrAllowPorts, want) {
		t.Errorf("merged %v, want %v", rs.cidrAllowPorts, want)
	}
	for port, want := range map[uint16]bool{0: true, 19: false, 20: true, 30: true, 31: false, 443: true, 444: false, 8000: true, 8150: true, 8200: true, 8201: false, 65535: false} {
		if got := rs.cidrAllowCouldMatch(port); got != want {
			t.Errorf("cidrAllowCouldMatch(%d) = %v, want %v", port, got, want)
		}
	}
	if got := rs.rules[0].Ports; !reflect.DeepEqual(got, []PortRange{{8000, 8100}}) {
		t.Errorf("a rule's ports changed: %v", got)
	}
}
