package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/egress-proxy/egress/policy"
)

// requirements prints one line per requirement of a manifest (one per
// address with --resolve), then, when any is refused, every allow rule that
// would let them all through, ready to paste. Exit 0 when every required
// requirement is allowed: an optional one that is refused is reported and
// does not fail.
func (c *checker) requirements(rs *policy.Requirements) int {
	code := exitOK
	enc := json.NewEncoder(c.stdout)
	var add, publicOnlyAdd ruleList
	var advice []string
	refusedN, requiredN, unresolvedN := 0, 0, 0
	for _, r := range rs.List {
		label := net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]"), strconv.Itoa(int(r.Port)))
		if r.URL != "" {
			// A request (issue 20): decided on its method and path.
			label = r.Method + " " + r.URL
		}
		isRefused := false
		for _, o := range c.decide(label, r.Request()) {
			d := o.d
			if o.err != nil {
				// Reported, and the other requirements checked on.
				unresolvedN++
				if c.asJSON {
					res := unresolvedResult(o, r.Port)
					res.Purpose, res.Protocol, res.Required = r.Purpose, r.Protocol, &r.Required
					_ = enc.Encode(res)
				} else {
					fmt.Fprintln(c.stdout, formatUnresolved(o, about(r)))
				}
				continue
			}
			if c.asJSON {
				res := resultOf(o.label, d)
				res.Purpose, res.Protocol, res.Required = r.Purpose, r.Protocol, &r.Required
				_ = enc.Encode(res)
			} else {
				fmt.Fprintln(c.stdout, formatCheck(o.label, about(r), d))
			}
			switch {
			case refused(d):
				isRefused = true
				switch {
				case strings.HasPrefix(d.Hint, "- {"):
					add.add(d.Hint, r)
				case pending(d):
					// No hint for a name whose addresses decide: an
					// exact host rule settles it whatever they are.
					add.add(policy.HostRule(d.Host, d.Port), r)
				case d.Hint != "":
					advice = append(advice, d.Hint)
				}
			case publicOnly(d):
				publicOnlyAdd.add(policy.HostRule(d.Host, d.Port), r)
			}
		}
		if isRefused {
			refusedN++
			if r.Required {
				requiredN++
				code = exitDenied
			}
		}
	}
	if unresolvedN > 0 {
		code = exitUsage // a failed lookup decides nothing
	}
	if c.asJSON {
		return code
	}

	name := rs.Plugin
	if name == "" {
		name = rs.File
	}
	where := "in " + c.config
	if c.config == "" {
		where = "in your policy (the built-in one is configs/full-internet.yaml)"
	}
	fmt.Fprintln(c.stdout)
	switch {
	case refusedN == 0 && unresolvedN > 0:
		fmt.Fprintf(c.stdout, "%s: no requirement refused, %s did not resolve\n", name, count(unresolvedN, "name"))
	case refusedN == 0:
		fmt.Fprintf(c.stdout, "%s: all %d requirements allowed\n", name, len(rs.List))
	default:
		fmt.Fprintf(c.stdout, "%s: %d of %d requirements refused (%d required, %d optional)\n", name, refusedN, len(rs.List), requiredN, refusedN-requiredN)
	}
	if len(add) > 0 {
		fmt.Fprintf(c.stdout, "to allow every refused requirement, add under allow: %s:\n", where)
		add.print(c)
	}
	for _, a := range dedupe(advice) {
		fmt.Fprintf(c.stdout, "and: %s\n", a)
	}
	if unresolvedN > 0 {
		fmt.Fprintf(c.stdout, "and: %s did not resolve: egress would answer 502 for %s; check the name\n", count(unresolvedN, "name"), map[bool]string{true: "it", false: "them"}[unresolvedN == 1])
	}
	if len(publicOnlyAdd) > 0 {
		fmt.Fprintf(c.stdout, "allowed for public addresses only; if one of these names resolves to a private or loopback address, add under allow: %s:\n", where)
		publicOnlyAdd.print(c)
	}
	return code
}

// about says what a requirement is for: required or optional, purpose,
// protocol.
func about(r policy.Requirement) string {
	s := "optional"
	if r.Required {
		s = "required"
	}
	if r.Purpose != "" {
		s += ": " + r.Purpose
	}
	return s + " (" + r.Protocol + ")"
}

// ruleList is allow rules to paste, each once, with the purposes of the
// requirements that need it as a comment.
type ruleList []struct {
	rule     string
	purposes []string
}

func (l *ruleList) add(rule string, r policy.Requirement) {
	purpose := r.Purpose
	if purpose == "" {
		purpose = r.Host + ":" + strconv.Itoa(int(r.Port))
	}
	if !r.Required {
		purpose += " (optional)"
	}
	for i := range *l {
		if (*l)[i].rule == rule {
			for _, p := range (*l)[i].purposes {
				if p == purpose {
					return
				}
			}
			(*l)[i].purposes = append((*l)[i].purposes, purpose)
			return
		}
	}
	*l = append(*l, struct {
		rule     string
		purposes []string
	}{rule, []string{purpose}})
}

func (l ruleList) print(c *checker) {
	for _, e := range l {
		fmt.Fprintf(c.stdout, "  %s  # %s\n", e.rule, strings.Join(e.purposes, ", "))
	}
}

func dedupe(ss []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
