package httpproxy_test

import (
	"strings"
	"testing"
)

// Issue 14: a rule's reason: reaches the client in the 403's status line
// and body, and the operator in the log line.
func TestDenyRuleReasonInAnswerAndLog(t *testing.T) {
	const why = "sales data stays in the EU: ask #netops"
	f := newFixture(t, `version: 1
default: allow
deny:
  - host: "*.eu.example"
    reason: "`+why+`"
  - host: "*.long.example"
    reason: "`+strings.Repeat("a long reason ", 14)+`end"
`)
	for _, c := range []struct{ name, raw, target string }{
		{"CONNECT", "CONNECT crm.eu.example:443 HTTP/1.1\r\nHost: crm.eu.example:443\r\n\r\n", "crm.eu.example:443"},
		{"plain HTTP", "GET http://crm.eu.example/x HTTP/1.1\r\nHost: crm.eu.example\r\n\r\n", "crm.eu.example:80"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body, _, _ := f.raw(c.raw)
			if resp.StatusCode != 403 {
				t.Fatalf("status %s, want 403", resp.Status)
			}
			id := resp.Header.Get("X-Egress-Id")
			wantStatus := "403 egress denied " + c.target + ": " + why + ` (test.yaml:4 {host: "*.eu.example"}); to allow: - {host: crm.eu.example, ports: [` + c.target[strings.LastIndex(c.target, ":")+1:] + `]} (id ` + id + ")"
			if resp.Status != wantStatus {
				t.Errorf("status line %q\nwant        %q", resp.Status, wantStatus)
			}
			if !strings.Contains(body, "\nrule: test.yaml:4 {host: \"*.eu.example\"}\nwhy: "+why+"\nreason: denied_by_rule\n") {
				t.Errorf("body lacks the rule's reason:\n%s", body)
			}
			if e := f.logs.waitEntry(t, id); e["rule_reason"] != why {
				t.Errorf("log line %v: rule_reason %v, want %q", e, e["rule_reason"], why)
			}
		})
	}
	t.Run("a long reason keeps the id in the status line", func(t *testing.T) {
		resp, body, _, _ := f.raw("CONNECT x.long.example:443 HTTP/1.1\r\nHost: x.long.example:443\r\n\r\n")
		id := resp.Header.Get("X-Egress-Id")
		if len(resp.Status) > 4+300 || !strings.HasSuffix(resp.Status, "(id "+id+")") || !strings.Contains(resp.Status, "a long reason") {
			t.Errorf("status line (%d bytes) %q", len(resp.Status), resp.Status)
		}
		if !strings.Contains(body, "end\n") {
			t.Errorf("body lacks the whole reason:\n%s", body)
		}
	})
}
