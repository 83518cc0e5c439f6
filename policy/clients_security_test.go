package policy_test

import (
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// TestSecurityUserOnlyClientIsWarned: a clients: entry chosen by proxy
// user name alone can be claimed by any client (egress does not check
// proxy passwords), so lint says so; an entry that also names sources
// is not warned about.
func TestSecurityUserOnlyClientIsWarned(t *testing.T) {
	const warning = "egress does not authenticate proxy users"
	p, err := policy.Load("u.yaml", []byte("version: 1\ndefault: deny\nclients:\n  - name: vendor-a\n    users: [vendor-a]\n    allow: [{host: a.example}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range p.Warnings() {
		got = append(got, w.String())
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "u.yaml:5:5: ") || !strings.Contains(got[0], warning) {
		t.Fatalf("warnings %q, want one at u.yaml:5:5 saying %q", got, warning)
	}
	// Any client claiming the user name gets the entry's rules.
	d := p.Decide(policy.Request{Host: "a.example", Port: 443, User: "vendor-a"})
	if !d.Allowed() || d.Policy != "vendor-a" {
		t.Fatalf("decision %+v", d)
	}

	p, err = policy.Load("s.yaml", []byte("version: 1\ndefault: deny\nclients:\n  - name: vendor-a\n    sources: [10.1.0.0/16]\n    users: [vendor-a]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range p.Warnings() {
		if strings.Contains(w.Message, warning) {
			t.Fatalf("warned although sources are set: %s", w)
		}
	}
}
