package policy

import (
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Change is a destination two policies decide differently: one lets it
// through (an allow, or an audit-mode pass) and the other refuses it.
type Change struct {
	// Request is what was decided: a name (with the address it stands
	// for resolving to in IP, or none), or an address alone; the port;
	// and the client and proxy user, when the policies tell clients apart.
	Request  Request
	Old, New Decision
}

// Wider reports whether New lets through what Old refused.
func (c Change) Wider() bool { return c.New.Allowed() && !c.Old.Allowed() }

// Sample addresses: a public one (what a name stands for resolving to when
// nothing says otherwise) and a private one (what a name in a company's
// network resolves to: only an exact host rule lifts the guard for it).
var (
	diffPublic4 = netip.MustParseAddr("93.184.216.34")
	diffPublic6 = netip.MustParseAddr("2606:2800:220:1:248:1893:25c8:1946")
	diffPrivate = netip.MustParseAddr("10.0.0.1")
	// diffOutside are client addresses tried as "a client outside
	// allow_from", the first that no allow_from covers.
	diffOutside = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("8.8.8.8")}
)

// Diff returns the destinations old and new decide differently, each
// decided by Decide (the decision egress serve makes) under both. The
// destinations are samples drawn from both policies: every name a host rule
// names (a name under each wildcard), addresses inside and at the edges of
// every cidr rule, one address in each guarded range, public addresses, a
// name no rule matches; each on every port a rule names, the ports next to
// its ranges and a port none names; from a client of each clients: entry,
// inside and outside allow_from. A name is decided as serve decides a
// connection by name: first by name, then at each address it could
// resolve to (a public one, a private one, one in each cidr rule).
//
// The samples find what a rule, a default or a guard changes; they are not
// a proof that nothing else differs. The wider changes come first; within
// each, by client, then names (sorted) before addresses, then port.
//
// tried is how many destinations were decided under each policy.
func Diff(old, new *Policy) (changes []Change, tried int) {
	s := diffSamples(old, new)
	tried = len(s.clients) * (len(s.names)*len(s.nameAddrs) + len(s.addrs)) * len(s.ports)
	var out []Change
	for _, cl := range s.clients {
		for _, name := range s.names {
			for _, ip := range s.nameAddrs {
				for _, port := range s.ports {
					r := Request{Host: name, IP: ip, Port: port, Client: cl.addr, User: cl.user}
					if c, ok := compare(old, new, r); ok {
						out = append(out, c)
					}
				}
			}
		}
		for _, ip := range s.addrs {
			for _, port := range s.ports {
				r := Request{IP: ip, Port: port, Client: cl.addr, User: cl.user}
				if c, ok := compare(old, new, r); ok {
					out = append(out, c)
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Wider() && !out[j].Wider() })
	return out, tried
}

// compare decides r under both policies and reports a difference in what
// they let through.
func compare(old, new *Policy, r Request) (Change, bool) {
	o, n := effective(old, r), effective(new, r)
	if o.Allowed() == n.Allowed() {
		return Change{}, false
	}
	return Change{Request: r, Old: o, New: n}, true
}

// effective is serve's decision on r: a name is decided by name first, and
// at r.IP only if that lets it through.
func effective(p *Policy, r Request) Decision {
	if r.Host != "" && r.IP.IsValid() {
		step1 := r
		step1.IP = netip.Addr{}
		if d := p.Decide(step1); !d.Allowed() {
			return d
		}
	}
	return p.Decide(r)
}

type diffClient struct {
	addr netip.Addr
	user string
}

type samples struct {
	clients   []diffClient
	names     []string
	nameAddrs []netip.Addr // what each name is tried at
	addrs     []netip.Addr // addresses tried alone
	ports     []uint16
}

// diffSamples draws the destinations Diff tries from both policies.
func diffSamples(ps ...*Policy) samples {
	var s samples
	names := map[string]bool{}
	addNames := func(ns ...string) {
		for _, n := range ns {
			if !names[n] {
				names[n] = true
				s.names = append(s.names, n)
			}
		}
	}
	addrs := map[netip.Addr]bool{}
	addAddr := func(list *[]netip.Addr, seen map[netip.Addr]bool, a netip.Addr) {
		if a.IsValid() && !seen[a] {
			seen[a] = true
			*list = append(*list, a)
		}
	}
	nameAddrs := map[netip.Addr]bool{}
	ports := map[uint16]bool{}
	addPort := func(p int) {
		if p >= 1 && p <= 65535 && !ports[uint16(p)] {
			ports[uint16(p)] = true
			s.ports = append(s.ports, uint16(p))
		}
	}
	addPort(443)
	addPort(80)
	for _, a := range []netip.Addr{diffPublic4, diffPrivate} {
		addAddr(&s.nameAddrs, nameAddrs, a)
	}
	for _, a := range []netip.Addr{diffPublic4, diffPublic6, diffPrivate} {
		addAddr(&s.addrs, addrs, a)
	}
	for _, p := range ps {
		for _, r := range p.Rules() {
			for _, pr := range r.Ports {
				addPort(int(pr.Lo) - 1)
				addPort(int(pr.Lo))
				addPort(int(pr.Hi))
				addPort(int(pr.Hi) + 1)
			}
			if r.Host != "" {
				addNames(sampleName(r.Host))
				continue
			}
			first := r.Prefix.Masked().Addr()
			last := lastAddr(r.Prefix)
			host := first // an address of the range a host could have
			if !r.Prefix.IsSingleIP() {
				host = first.Next()
			}
			addAddr(&s.nameAddrs, nameAddrs, host)
			for _, a := range []netip.Addr{host, first, last, first.Prev(), last.Next()} {
				addAddr(&s.addrs, addrs, a)
			}
		}
	}
	for _, g := range guardRanges {
		addAddr(&s.addrs, addrs, g.prefix.Addr().Next())
		if g.prefix.Bits() == g.prefix.Addr().BitLen() {
			addAddr(&s.addrs, addrs, g.prefix.Addr())
		}
	}
	// A name no rule of either policy matches, a metadata name and a
	// localhost name (guarded by name).
	unlisted := "unlisted.invalid"
	for i := 2; names[unlisted] || matchedByAny(ps, unlisted); i++ {
		unlisted = "unlisted-" + strconv.Itoa(i) + ".invalid"
		if i > 100 {
			break // every name is matched (a "*" rule): the sample stands for it
		}
	}
	addNames(unlisted, "metadata.google.internal", "localhost")
	sort.Strings(s.names)
	// A port no rule names.
	for p := 65535; p > 0; p-- {
		if !ports[uint16(p)] && !namedPort(ps, uint16(p)) {
			addPort(p)
			break
		}
	}
	sort.Slice(s.ports, func(i, j int) bool { return s.ports[i] < s.ports[j] })
	s.clients = diffClients(ps)
	return s
}

// sampleName is a name a host pattern matches: the name itself, or "any"
// for each "*" label ("*.example.com" → any.example.com).
func sampleName(pattern string) string {
	if pattern == "*" {
		return "any.example"
	}
	labels := strings.Split(pattern, ".")
	for i, l := range labels {
		if l == "*" {
			labels[i] = "any"
		}
	}
	return strings.Join(labels, ".")
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return last
}

func matchedByAny(ps []*Policy, name string) bool {
	for _, p := range ps {
		for _, rs := range append([]*ruleset{&p.top}, p.clientSets...) {
			found := false
			rs.names.each(name, func(crule) { found = true })
			if found {
				return true
			}
		}
	}
	return false
}

func namedPort(ps []*Policy, port uint16) bool {
	for _, p := range ps {
		for _, r := range p.Rules() {
			for _, pr := range r.Ports {
				if port >= pr.Lo && port <= pr.Hi {
					return true
				}
			}
		}
	}
	return false
}

// diffClients are the clients Diff decides for: any client (the zero
// address: no clients: entry, allow_from not checked), a client of each
// clients: entry, one inside each allow_from range and one outside them all.
func diffClients(ps []*Policy) []diffClient {
	out := []diffClient{{}}
	seen := map[diffClient]bool{{}: true}
	add := func(c diffClient) {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	var from []netip.Prefix
	for _, p := range ps {
		for _, c := range p.Clients {
			var dc diffClient
			if len(c.Sources) > 0 {
				dc.addr = c.Sources[0].Masked().Addr().Next()
			}
			if len(c.Users) > 0 {
				dc.user = c.Users[0]
			}
			add(dc)
		}
		from = append(from, p.AllowFrom...)
	}
	if len(from) == 0 {
		return out
	}
	for _, pf := range from {
		add(diffClient{addr: pf.Masked().Addr()})
	}
	for _, a := range diffOutside {
		if !containsAddr(from, a) {
			add(diffClient{addr: a})
			break
		}
	}
	return out
}

// Destination is the change's destination as a person reads it:
// "api.example.com:443", "db.corp.example:5432 at 10.0.0.1" (a name
// resolving to an address that is not the public sample), "10.0.0.1:5432",
// "[fd00::1]:443", with " from CLIENT" and " as user USER" when the
// policies tell clients apart.
func (c Change) Destination() string {
	r := c.Request
	var b strings.Builder
	host := r.Host
	if host == "" {
		host = r.IP.String()
		if r.IP.Is6() {
			host = "[" + host + "]"
		}
	}
	b.WriteString(host + ":" + strconv.Itoa(int(r.Port)))
	if r.Host != "" && r.IP.IsValid() && r.IP != diffPublic4 {
		b.WriteString(" at " + r.IP.String())
	}
	if r.Client.IsValid() {
		b.WriteString(" from " + r.Client.String())
	}
	if r.User != "" {
		b.WriteString(" as user " + r.User)
	}
	return b.String()
}
