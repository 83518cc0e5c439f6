package dnsproxy

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// Issue 14: a rule's reason: reaches the client in the EDE text and the
// operator in the log line of every refusal it decides.
func TestDenyRuleReasonInEDEAndLog(t *testing.T) {
	e := newEnv(t, `version: 1
default: allow
deny:
  - host: "*.eu.example"
    reason: "sales data stays in the EU: ask #netops"
dns:
  upstreams: UPSTREAMS
`)
	for _, network := range []string{"udp", "tcp"} {
		e.log.reset()
		r := e.query(network, "crm.eu.example", dns.TypeA)
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: rcode %s, want NXDOMAIN", network, dns.RcodeToString[r.Rcode])
		}
		x := ede(r)
		if x == nil || !strings.Contains(x.ExtraText, "(denied_by_rule); why: sales data stays in the EU: ask #netops;") {
			t.Errorf("%s: EDE %v lacks the rule's reason", network, x)
		}
		lines := e.log.lines(t)
		if len(lines) != 1 || lines[0]["rule_reason"] != "sales data stays in the EU: ask #netops" {
			t.Errorf("%s: log lines %v, want one with rule_reason", network, lines)
		}
	}
	// A refusal no rule with a reason decides carries none.
	e.log.reset()
	r := e.query("udp", "metadata.google.internal", dns.TypeA)
	if x := ede(r); x == nil || strings.Contains(x.ExtraText, "why:") {
		t.Errorf("EDE %v: want one without why:", x)
	}
	if lines := e.log.lines(t); len(lines) != 1 || lines[0]["rule_reason"] != nil {
		t.Errorf("log lines %v, want one without rule_reason", lines)
	}
}
