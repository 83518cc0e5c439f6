package intercept_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// A request rule's reason: reaches the log line (rule_reason) of the
// requests it decides, over TLS and over plain HTTP, as it reaches the
// 403 and egress check --json: the log took the host rule's only.
func TestRequestRuleReasonIsLogged(t *testing.T) {
	const why = "no admin calls from plugins"
	f := newFixture(t)
	deny := `paths: ["/v1/admin/**"]` + "\n"
	text := strings.Replace(policyText, deny, deny+`        reason: "`+why+`"`+"\n", 1)
	f.load(t, fmt.Sprintf(text, f.tlsPort, f.plainPort, f.badPort))
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)

	t.Run("a refusal over TLS", func(t *testing.T) {
		resp, body := f.raw(t, "GET /v1/admin/users HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 403 || !strings.Contains(body, "why: "+why+"\n") {
			t.Fatalf("%s\n%s", resp.Status, body)
		}
		e := f.logs.entry(t, resp.Header.Get("X-Egress-Id"))
		if e["reason"] != "denied_by_request_rule" || e["rule_reason"] != why {
			t.Errorf("log line %v: rule_reason %v, want %q", e, e["rule_reason"], why)
		}
	})
	t.Run("a refusal over plain HTTP", func(t *testing.T) {
		resp, err := f.client().Get(fmt.Sprintf("http://api.vendor.test:%d/v1/admin/x", f.plainPort))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("%s", resp.Status)
		}
		e := f.logs.entry(t, resp.Header.Get("X-Egress-Id"))
		if e["proto"] != "http" || e["reason"] != "denied_by_request_rule" || e["rule_reason"] != why {
			t.Errorf("log line %v: rule_reason %v, want %q", e, e["rule_reason"], why)
		}
	})
	t.Run("an allowed request, by a request rule with a reason", func(t *testing.T) {
		resp, _ := f.raw(t, "POST /v1/telemetry HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
		if resp.StatusCode != 200 {
			t.Fatalf("%s", resp.Status)
		}
		// An allowed answer carries no id: the line is the one of the
		// request.
		var e map[string]any
		waitFor(t, "the log line of POST /v1/telemetry", func() bool {
			for _, line := range strings.Split(f.logs.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && m["method"] == "POST" && strings.HasSuffix(fmt.Sprint(m["url"]), "/v1/telemetry") {
					e = m
					return true
				}
			}
			return false
		})
		if e["event"] != "allow" || e["rule_reason"] != "usage reports only" {
			t.Errorf("log line %v: rule_reason %v, want the request rule's", e, e["rule_reason"])
		}
	})
}
