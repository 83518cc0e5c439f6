package policy_test

import (
	"fmt"
	"net/netip"

	"github.com/egress-proxy/egress/policy"
)

func Example() {
	p, err := policy.Load("policy.yaml", []byte(`version: 1
default: deny
allow:
  - host: api.example.com
    ports: [443]
  - host: db.corp.example
    ports: [5432]
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	// Step 1: the name alone. Allow means "resolve it, then decide on
	// each address".
	d := p.Decide(policy.Request{Host: "API.example.com.", Port: 443})
	fmt.Println(d.Verdict, d.Reason, d.RuleLocation(), d.Rule.Text)

	// Step 2: the address about to be dialled. The exact host rule lifts
	// the private-address guard for the database.
	d = p.Decide(policy.Request{Host: "db.corp.example", IP: netip.MustParseAddr("10.0.0.5"), Port: 5432})
	fmt.Println(d.Verdict, d.Reason)

	// A denial explains itself with a rule to paste under allow:.
	d = p.Decide(policy.Request{Host: "api.example.com", Port: 80})
	fmt.Println(d.Verdict, d.Reason, d.Hint)

	// Guards hold whatever the spelling.
	d = policy.Builtin().Decide(policy.Request{Host: "0x7f.1", Port: 8080})
	fmt.Println(d.Verdict, d.Reason, d.IP, d.Hint)
	// Output:
	// allow allowed_by_rule policy.yaml:4 {host: api.example.com, ports: [443]}
	// allow allowed_by_rule
	// deny no_rule_matched - {host: api.example.com, ports: [80]}
	// deny guard_loopback 127.0.0.1 - {cidr: 127.0.0.1/32, ports: [8080]}
}

func ExamplePolicy_WithAllows() {
	p, _ := policy.Builtin().WithAllows("--allow", []string{"127.0.0.1:8080"})
	d := p.Decide(policy.Request{Host: "127.0.0.1", Port: 8080})
	fmt.Println(d.Verdict, d.Reason, d.RuleLocation(), d.Rule.Text)
	// Output:
	// allow allowed_by_rule --allow:1 {cidr: 127.0.0.1/32, ports: [8080]}
}
