package policy_test

import (
	"fmt"
	"net/netip"

	"github.com/egress-proxy/egress/policy"
)

// Deciding one request to a host with http: request rules, as the
// interception path will: the connection first (intercepted or not), then
// each request's method and path.
func ExamplePolicy_Decide_request() {
	p, err := policy.Load("policy.yaml", []byte(`version: 1
default: deny
allow:
  - host: api.vendor.example
    ports: [443]
    http:
      - methods: [GET]
        paths: ["/v1/license", "/v1/status/*"]
`))
	if err != nil {
		panic(err)
	}
	r := policy.Request{Host: "api.vendor.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443}
	fmt.Println("intercepted:", p.Decide(r).Intercept)
	for _, path := range []string{"/v1/status/db", "/v1/status/../admin", "/v1/%2e%2e/license"} {
		r.Method, r.Path = "GET", path
		d := p.Decide(r)
		fmt.Println(d.Verdict, d.Path, d.Reason)
	}
	// Output:
	// intercepted: true
	// allow /v1/status/db allowed_by_rule
	// deny /v1/admin no_request_rule_matched
	// deny /license no_request_rule_matched
}
