package policy

import (
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// rulesetFor selects the clients: entry for a client address and proxy user
// (the first entry that matches, in file order), or the top-level policy.
func (p *Policy) rulesetFor(client netip.Addr, user string) *ruleset {
	if len(p.Clients) > 0 {
		client = client.Unmap().WithZone("")
		for i := range p.Clients {
			if p.Clients[i].matches(client, user) {
				return p.clientSets[i]
			}
		}
	}
	return &p.top
}

// matches reports whether the entry applies to a client address and user:
// every list the entry sets must contain it.
func (c *Client) matches(client netip.Addr, user string) bool {
	if len(c.Sources) > 0 && !containsAddr(c.Sources, client) {
		return false
	}
	if len(c.Users) > 0 {
		found := false
		for _, u := range c.Users {
			if u == user {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (p *Policy) decide(r Request) Decision {
	rs := p.rulesetFor(r.Client, r.User)
	d := Decision{Policy: rs.name, Source: p.Source, Port: r.Port}
	ip := r.IP
	if ip.IsValid() {
		ip = ip.Unmap().WithZone("")
	}
	d.IP = ip
	if len(p.AllowFrom) > 0 && r.Client.IsValid() && !containsAddr(p.AllowFrom, r.Client.Unmap().WithZone("")) {
		d.Reason = ReasonClientRefused
		d.Host = r.Host
		return d
	}
	var name string
	if r.Host != "" {
		n, hip, err := NormalizeHost(r.Host)
		if err != nil {
			// The name as given: what the log should show was refused.
			d.Reason, d.Host = ReasonInvalidHost, r.Host
			return d
		}
		name = n
		if !ip.IsValid() {
			ip = hip
		}
	}
	d.Host, d.IP = name, ip
	if name == "" && !ip.IsValid() {
		d.Reason = ReasonInvalidHost
		return d
	}

	var n crule
	if name != "" {
		n = rs.matchName(name, r.Port)
	}
	if !ip.IsValid() {
		rs.stepOne(&d, name, n)
	} else {
		rs.stepTwo(&d, name, ip, n, embedded(ip, p.NAT64Prefixes))
	}
	// Audit mode rolls rules out; the guards are not rules but the floor
	// under them. Letting a guarded destination through "to see" would
	// hand a plugin the cloud's credentials (169.254.169.254) or the
	// host's loopback services during the very run meant to observe it.
	if d.Verdict == Deny && rs.mode == Audit && !d.Reason.IsGuard() {
		d.Verdict, d.Audit = Allow, true
	}
	rs.intercept(&d, r, name, ip)
	return d
}

// stepOne decides on a name before it is resolved: Deny only when the
// answer cannot depend on the addresses.
func (rs *ruleset) stepOne(d *Decision, name string, n crule) {
	switch {
	case n.r != nil && n.r.Action == Deny:
		rs.denyByRule(d, n)
	case isMetadataName(name) && !rs.metadataLiftable(d.Port):
		d.Reason = ReasonGuardMetadata
		d.Hint = "metadata names are allowed only by a cidr rule naming the metadata address, e.g. - {cidr: 169.254.169.254/32" + portsText(d.Port) + "}"
	case isMetadataName(name):
		// A fixed list of names: resolving one tells an upstream
		// nothing, whatever dns.resolve_unlisted says.
		d.Verdict, d.Reason = Allow, ReasonPerAddress
	case isLoopbackName(name) && !(n.r != nil && n.rank >= exactRank):
		// RFC 6761 §6.3: localhost names are loopback by name. Refused
		// here, as their addresses would be, unless an exact host rule
		// names them or a cidr rule lifts loopback on this port (then the
		// addresses decide).
		if rs.loopbackLiftable(d.Port) && rs.resolveUnlisted {
			d.Verdict, d.Reason = Allow, ReasonPerAddress
			return
		}
		d.Reason = ReasonGuardLoopback
		d.Hint = hostHint(name, d.Port)
	case n.r != nil:
		d.Verdict, d.Reason, d.Rule = Allow, ReasonAllowedByRule, n.r
	case rs.def == Allow:
		d.Verdict, d.Reason = Allow, ReasonDefaultAllow
	case rs.cidrAllowCouldMatch(d.Port) && rs.resolveUnlisted:
		// A cidr rule might allow one of its addresses: resolve, then
		// decide on each. dns.resolve_unlisted: false refuses the name
		// here instead, so that it never reaches an upstream resolver
		// (names are an exfiltration channel).
		d.Verdict, d.Reason = Allow, ReasonPerAddress
	default:
		d.Reason = ReasonNoRuleMatched
		d.Hint = hostHint(name, d.Port)
	}
}

// stepTwo decides on the address about to be dialled, and the name it came
// from if any; c is what the address carries (see embedded).
func (rs *ruleset) stepTwo(d *Decision, name string, ip netip.Addr, n crule, c carried) {
	a := rs.matchAddr(ip, d.Port)
	for i := 0; i < c.n; i++ {
		// An IPv6 address that carries an IPv4 address reaches that
		// host through a translator, relay or tunnel: a cidr deny rule
		// on the host refuses it too, or it would be a way around the
		// rule. (Allow rules on the IPv4 address lift its guard below,
		// but do not allow the IPv6 form: that takes a rule naming it,
		// or default: allow.)
		if b := rs.matchAddr(c.v4[i], d.Port); b.r != nil && b.r.Action == Deny {
			a = b
			break
		}
	}
	if n.r != nil && n.r.Action == Deny {
		rs.denyByRule(d, n)
		return
	}
	if a.r != nil && a.r.Action == Deny {
		rs.denyByRule(d, a)
		return
	}
	hits, nhits := guardHits(ip, c)
	var first guardHit
	if nhits > 0 {
		first = hits[0]
	}
	at := ip
	if c.n > 0 {
		at = c.v4[0]
	}
	if isMetadataName(name) && first.reason != ReasonGuardMetadata {
		// A metadata name that resolved elsewhere is still refused: only
		// a cidr rule naming a metadata address lets one through.
		if rs.addrs.lifts(at, d.Port, at.BitLen()) == nil {
			d.Reason = ReasonGuardMetadata
			d.Hint = cidrHint(at, d.Port)
			return
		}
	}
	if isLoopbackName(name) && first.reason != ReasonGuardLoopback {
		// A localhost name that resolved off loopback (a hostile resolver
		// or hosts file) is still loopback by name (RFC 6761 §6.3): only
		// an exact host rule naming it lets it through.
		if !(n.r != nil && n.r.Action == Allow && n.rank >= exactRank) {
			d.Reason = ReasonGuardLoopback
			d.Hint = hostHint(name, d.Port)
			return
		}
	}
	// Every guard that applies must be lifted: Teredo to a private
	// client needs the private address and Teredo's range named.
	exact := n.r != nil && n.r.Action == Allow && n.rank >= exactRank
	for i := 0; i < nhits; i++ {
		h := hits[i]
		if h.reason != ReasonGuardMetadata && exact || rs.addrs.lifts(h.at, d.Port, h.rng.Bits()) != nil {
			continue
		}
		d.Reason = h.reason
		d.Hint = cidrHint(h.at, d.Port)
		return
	}
	switch {
	case n.r != nil:
		d.Verdict, d.Reason, d.Rule = Allow, ReasonAllowedByRule, n.r
	case a.r != nil:
		d.Verdict, d.Reason, d.Rule = Allow, ReasonAllowedByRule, a.r
	case rs.def == Allow:
		d.Verdict, d.Reason = Allow, ReasonDefaultAllow
	default:
		d.Reason = ReasonNoRuleMatched
		if name != "" {
			d.Hint = hostHint(name, d.Port)
		} else {
			d.Hint = cidrHint(ip, d.Port)
		}
	}
}

// exactRank is the least rank of an exact host rule (see rank).
const exactRank = 1 << 20

// denyByRule denies by the deny rule c and explains how to get past it: an
// allow rule that is more specific, or, when none can be (an exact rule
// with ports, or a single address with ports), removing the rule.
func (rs *ruleset) denyByRule(d *Decision, c crule) {
	r := c.r
	d.Reason, d.Rule = ReasonDeniedByRule, r
	if r.layer > 0 {
		// Between files a deny wins: no allow of the including file can
		// beat it.
		d.Hint = "a deny in an included file wins over the allow rules of every other file: remove or narrow the deny rule at " + r.Location()
		return
	}
	unbeatable := len(r.Ports) > 0 || d.Port == 0
	if r.Host != "" {
		if c.rank >= exactRank && unbeatable {
			d.Hint = "remove the deny rule at " + r.Location()
			return
		}
		if d.Host != "" {
			d.Hint = hostHint(d.Host, d.Port)
			return
		}
	}
	if r.Prefix.IsValid() && r.Prefix.IsSingleIP() && unbeatable {
		d.Hint = "remove the deny rule at " + r.Location()
		return
	}
	if d.IP.IsValid() {
		d.Hint = cidrHint(d.IP, d.Port)
	} else if d.Host != "" {
		d.Hint = hostHint(d.Host, d.Port)
	}
}

// hostHint is the allow rule for name and port as one line of flow YAML.
func hostHint(name string, port uint16) string {
	return "- {host: " + yamlScalar(name) + portsText(port) + "}"
}

// HostRule is the allow rule for name and port (0: any port) as one line of
// flow YAML, the form hints take: - {host: api.example.com, ports: [443]}.
// An exact host rule is the one rule that allows a name whatever it
// resolves to (metadata addresses aside), guards included.
func HostRule(name string, port uint16) string { return hostHint(name, port) }

// cidrHint is the allow rule for one address and port.
func cidrHint(ip netip.Addr, port uint16) string {
	return "- {cidr: " + cidrScalar(netip.PrefixFrom(ip, ip.BitLen())) + portsText(port) + "}"
}

func portsText(port uint16) string {
	if port == 0 {
		return ""
	}
	return ", ports: [" + strconv.Itoa(int(port)) + "]"
}

// yamlScalar quotes s when a plain YAML scalar could not carry it: a
// leading '*' (an alias), ':' (IPv6), or other indicators.
func yamlScalar(s string) string {
	if s == "" || strings.ContainsAny(s, ":{}[],#&*!|>'\"%@`") || s[0] == '-' || s[0] == '?' || s[0] == ' ' {
		return strconv.Quote(s)
	}
	// A plain scalar that YAML reads as something else: 008, 1e3, null,
	// true, .inf ...
	if c := s[0]; c >= '0' && c <= '9' || c == '.' || c == '+' || c == '~' || len(s) <= 5 {
		if (&yaml.Node{Kind: yaml.ScalarNode, Value: s}).ShortTag() != "!!str" {
			return strconv.Quote(s)
		}
	}
	return s
}

// cidrScalar writes a prefix for flow YAML: IPv6 quoted (its colons),
// IPv4 plain (a.b.c.d/n is never read as anything but a string).
func cidrScalar(p netip.Prefix) string {
	if p.Addr().Is6() {
		return strconv.Quote(p.String())
	}
	return p.String()
}

// ruleText is a rule as one line of flow YAML.
func ruleText(r *Rule) string {
	var b strings.Builder
	b.Grow(len(r.Host) + 24 + 16*len(r.Ports))
	b.WriteByte('{')
	if r.Host != "" {
		b.WriteString("host: ")
		b.WriteString(yamlScalar(r.Host))
	} else {
		b.WriteString("cidr: ")
		b.WriteString(cidrScalar(r.Prefix))
	}
	if len(r.Ports) > 0 {
		b.WriteString(", ports: [")
		for i, pr := range r.Ports {
			if i > 0 {
				b.WriteString(", ")
			}
			if pr.Lo == pr.Hi {
				b.WriteString(strconv.Itoa(int(pr.Lo)))
			} else {
				b.WriteString(`"` + strconv.Itoa(int(pr.Lo)) + "-" + strconv.Itoa(int(pr.Hi)) + `"`)
			}
		}
		b.WriteByte(']')
	}
	b.WriteByte('}')
	return b.String()
}

// YAMLScalar writes s (a host name, an address) as a YAML scalar that
// reads back as the string s: plain where YAML allows, quoted otherwise
// ("null", "1e3", "*.example.com", IPv6). Hints and egress learn write
// rules with it.
func YAMLScalar(s string) string { return yamlScalar(s) }
