package policy

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// lint finds rules that can never decide and common traps in every
// ruleset. Port 0 warnings come from the loader.
func (p *Policy) lint() []Diagnostic {
	var out []Diagnostic
	warn := func(r *Rule, msg string) {
		out = append(out, Diagnostic{File: r.File, Line: r.Line, Column: r.Column, Message: msg, Warning: true})
	}
	sets := append([]*ruleset{&p.top}, p.clientSets...)
	for _, rs := range sets {
		hosts := map[string]bool{}
		for _, r := range rs.rules {
			if r.Host != "" && r.Action == Allow && strings.IndexByte(r.Host, '*') < 0 {
				hosts[r.Host] = true
			}
		}
		shadowed := map[*Rule]bool{}
		// Rules of the same pattern share a list in the matchers: compare
		// within each list.
		rs.eachGroup(func(same []crule) {
			if len(same) < 2 {
				return
			}
			for _, c := range same {
				if slices.Contains(rs.inherited, c.r) {
					continue // another file's rule: warned of there
				}
				s := shadowedBy(c, same)
				if s == nil {
					continue
				}
				r := c.r
				why := "it is the same rule"
				if s.Action != r.Action {
					why = "deny wins a tie between equal rules"
				} else if len(s.Ports) > 0 && len(r.Ports) > 0 && !equalPorts(s.Ports, r.Ports) {
					why = "its ports cover this rule's ports"
				}
				warn(r, "this rule never decides: "+s.Text+" at "+s.Location()+" matches everything it does and wins ("+why+")")
				shadowed[r] = true
			}
		})
		if rs.layered {
			for _, r := range rs.rules {
				if d := rs.beatenAcrossFiles(r); d != nil && !shadowed[r] {
					warn(r, "this rule never decides: the deny rule "+d.Text+" at "+d.Location()+" matches everything it does, and between a policy's files a deny wins")
				}
			}
		}
		for _, r := range rs.rules {
			if msg := opens(r, rs.def); msg != "" {
				warn(r, msg)
			}
			switch {
			case r.Host == "" && r.Action == Allow && r.Prefix.Addr().Is6() && nat64LocalUse.Overlaps(r.Prefix) && r.Prefix.Bits() >= nat64LocalUse.Bits() && !p.declaresNAT64In(nat64LocalUse):
				warn(r, "this rule lifts the guard on the local-use NAT64 prefix 64:ff9b:1::/48, whose addresses egress reads with the RFC 6052 /48 layout; if your NAT64 prefix there is longer, declare it in nat64_prefixes so that the guards and cidr rules see the right IPv4 address")
			case r.Host == "*" && r.Action == Deny && len(r.HTTP) == 0:
				warn(r, `deny of "*" matches every name: a connection by name is never allowed by a cidr rule, and every name not allowed by a host rule is denied; write default: deny instead`)
			case r.Action == Allow && strings.HasPrefix(r.Host, "*.") && !strings.Contains(r.Host[2:], "*") && !hosts[r.Host[2:]]:
				// The apex on the wildcard's own ports: a hint never allows
				// more than the rule it completes (no ports is every port).
				warn(r, r.Host+" does not match "+r.Host[2:]+" itself; add - "+ruleText(&Rule{Host: r.Host[2:], Ports: r.Ports})+" if that is wanted too")
			}
		}
	}
	return out
}

// opens warns of an allow rule that opens more than an operator may
// think (issue 21), saying what: one that lifts the metadata or loopback
// guard, and one that allows every address or every name where def is
// deny. "" when r is none of these.
func opens(r *Rule, def Verdict) string {
	if r.Action != Allow {
		return ""
	}
	on := "on every port"
	if len(r.Ports) > 0 {
		var ps []string
		for _, pr := range r.Ports {
			p := strconv.Itoa(int(pr.Lo))
			if pr.Hi != pr.Lo {
				p += "-" + strconv.Itoa(int(pr.Hi))
			}
			ps = append(ps, p)
		}
		on = "on port " + strings.Join(ps, ", ")
		if len(ps) > 1 || len(r.Ports) == 1 && r.Ports[0].Hi != r.Ports[0].Lo {
			on = "on ports " + strings.Join(ps, ", ")
		}
	}
	switch {
	case r.Host == "*" && def == Deny:
		return `{host: "*"} allows every name ` + on + `: under default: deny this is default: allow for every connection by name; list the names the clients need instead`
	case r.Host == "*":
		return `{host: "*"} allows every name ` + on + `, as default: allow does already; a deny rule of another file still wins over it`
	case r.Host != "" || !r.Prefix.IsValid():
		return ""
	case r.Prefix.Bits() == 0 && def == Deny:
		fam := "IPv4"
		if r.Prefix.Addr().Is6() {
			fam = "IPv6"
		}
		return r.Text + " allows every " + fam + " address, and every name that resolves to one, " + on + ": under default: deny this is default: allow (the guards aside); list the destinations the clients need instead"
	}
	// The most specific guard whose range holds the whole rule: the one
	// the rule lifts (see ruleset.addrs.lifts).
	for _, g := range guardsByFamily[family(r.Prefix.Addr())] {
		if g.prefix.Bits() > r.Prefix.Bits() || !g.prefix.Contains(r.Prefix.Addr()) {
			continue
		}
		if g.reason == ReasonGuardMetadata || g.reason == ReasonGuardLoopback {
			return r.Text + " lifts " + string(g.reason) + " " + on + ": it " + guardOpens[g.reason] + " to the client; if that is meant, allow it only for the clients that need it (clients:)"
		}
		break
	}
	return ""
}

// beatenAcrossFiles returns a deny rule of another file that matches
// everything the allow rule r matches, on all its ports, and that no rule
// of its own file overrides there (so that it wins, see acrossFiles), or
// nil.
func (rs *ruleset) beatenAcrossFiles(r *Rule) *Rule {
	if r.Action != Allow {
		return nil
	}
	var found *Rule
	consider := func(c crule, same func(func(crule))) {
		d := c.r
		if found != nil || d.Action != Deny || d.layer == r.layer || !covers(d.Ports, r.Ports) {
			return
		}
		overridden := false
		same(func(o crule) {
			overridden = overridden || o.r != d && o.r.layer == d.layer && o.rank > c.rank
		})
		if !overridden {
			found = d
		}
	}
	if r.Host != "" {
		name := sampleName(r.Host)
		rs.names.each(name, func(c crule) {
			if hostCovers(c.r.Host, r.Host) {
				consider(c, func(fn func(crule)) { rs.names.each(name, fn) })
			}
		})
		return found
	}
	rs.addrs.each(r.Prefix.Addr(), func(c crule) {
		if c.r.Prefix.Bits() <= r.Prefix.Bits() {
			consider(c, func(fn func(crule)) { rs.addrs.each(r.Prefix.Addr(), fn) })
		}
	})
	return found
}

// hostCovers reports whether the host pattern d matches every name the
// pattern r does: the same pattern, "*", or a "*." suffix of r (middle
// wildcards are left alone).
func hostCovers(d, r string) bool {
	switch {
	case d == r, d == "*":
		return true
	case strings.HasPrefix(d, "*.") && !strings.Contains(d[2:], "*"):
		return strings.HasSuffix(r, d[1:])
	}
	return false
}

// declaresNAT64In reports whether a declared NAT64 prefix lies in rng.
func (p *Policy) declaresNAT64In(rng netip.Prefix) bool {
	for _, q := range p.NAT64Prefixes {
		if rng.Overlaps(q) {
			return true
		}
	}
	return false
}

// eachGroup calls fn with every list of rules that share a pattern, in
// file order within the list.
func (rs *ruleset) eachGroup(fn func([]crule)) {
	var walk func(n *nameNode)
	walk = func(n *nameNode) {
		fn(n.here)
		fn(n.below)
		for _, c := range n.children {
			walk(c)
		}
		if n.star != nil {
			walk(n.star)
		}
	}
	walk(&rs.names)
	for _, fam := range rs.addrs.fam {
		for _, pl := range fam {
			for _, same := range pl.m {
				fn(same)
			}
		}
	}
}

// shadowedBy returns a rule among same (rules with c's pattern, in file
// order) that wins over c wherever c matches, or nil. Of two equal rules
// the first decides.
func shadowedBy(c crule, same []crule) *Rule {
	earlier := true
	for _, s := range same {
		if s.r == c.r {
			earlier = false
			continue
		}
		if (s.rank > c.rank || s.rank == c.rank && earlier) && covers(s.r.Ports, c.r.Ports) {
			return s.r
		}
	}
	return nil
}

// covers reports whether the port set a includes the port set b (empty =
// every port).
func covers(a, b []PortRange) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		b = []PortRange{{1, 65535}}
	}
	for _, pb := range b {
		for p := int(pb.Lo); p <= int(pb.Hi); {
			next := -1
			for _, pa := range a {
				if p >= int(pa.Lo) && p <= int(pa.Hi) {
					next = int(pa.Hi) + 1
					break
				}
			}
			if next < 0 {
				return false
			}
			p = next
		}
	}
	return true
}

func equalPorts(a, b []PortRange) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// WithAllows returns a copy of p with extra allow rules, one per target:
// "HOST", "HOST:PORT", "IP", "IP:PORT", "[IPv6]:PORT" or a cidr. Each rule
// is added to the top-level policy and to every clients: entry, with File
// origin (e.g. "--allow") and Line the target's index plus one. p is not
// modified.
func (p *Policy) WithAllows(origin string, targets []string) (*Policy, error) {
	var errs Errors
	var rules []*Rule
	for i, t := range targets {
		if u, ok := parseURL(t); ok {
			// A URL is no cidr, whatever its "/" says.
			errs = append(errs, Diagnostic{File: origin, Line: i + 1, Column: 1, Message: strconv.Quote(t) + " is a URL: a target is HOST[:PORT]; write " + origin + " " + u.target()})
			continue
		}
		r, msg := parseTarget(t)
		if msg != "" {
			errs = append(errs, Diagnostic{File: origin, Line: i + 1, Column: 1, Message: strconv.Quote(t) + ": " + msg})
			continue
		}
		r.Action, r.File, r.Line, r.Column = Allow, origin, i+1, 1
		r.Text = ruleText(r)
		rules = append(rules, r)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	q := *p
	q.Clients = append([]Client(nil), p.Clients...)
	q.top = ruleset{name: p.top.name, def: p.top.def, mode: p.top.mode, rules: append(append([]*Rule(nil), p.top.rules...), rules...)}
	q.clientSets = nil
	for _, rs := range p.clientSets {
		q.clientSets = append(q.clientSets, &ruleset{name: rs.name, def: rs.def, mode: rs.mode, rules: append(append([]*Rule(nil), rs.rules...), rules...), inherited: rs.inherited})
	}
	q.compile()
	q.warns = append([]Diagnostic(nil), p.warns...)
	return &q, nil
}

// parseTarget parses one WithAllows target into a rule without action or
// position; msg says what is wrong.
func parseTarget(t string) (*Rule, string) {
	l := &loader{file: "", budget: nodeBudget(len(t))}
	r := &Rule{}
	host, port := t, ""
	switch {
	case strings.Contains(t, "/"):
		r.Prefix = l.prefix(nil, t, "cidr")
		if len(l.errs) > 0 {
			return nil, l.errs[0].Message
		}
		return r, ""
	case strings.HasPrefix(t, "["):
		end := strings.IndexByte(t, ']')
		if end < 0 {
			return nil, "missing ]"
		}
		host, port = t[1:end], t[end+1:]
		if port != "" {
			if port[0] != ':' {
				return nil, "want [IPv6]:PORT"
			}
			port = port[1:]
		}
	case strings.Count(t, ":") == 1:
		host, port, _ = strings.Cut(t, ":")
	}
	if port != "" {
		n, err := parsePort(port)
		if err != nil || n == 0 {
			return nil, "port " + strconv.Quote(port) + " is not a number from 1 to 65535"
		}
		r.Ports = []PortRange{{n, n}}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap().WithZone("")
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
		return r, ""
	}
	r.Host = l.hostPattern(nil, host)
	if len(l.errs) > 0 {
		return nil, l.errs[0].Message
	}
	return r, ""
}
