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
// every cidr rule, one address in each guarded range, public addresses,
// those addresses carried under each NAT64 prefix, a name no rule matches; each on 80, 443, a port no rule names, and every
// port (and the ports next to each range) of the rules of either policy
// that match it; from any client, a client from each source and as each
// user of every clients: entry, and
// clients inside and outside allow_from. A name is decided as serve decides
// a connection by name: first by name, then at an address it could resolve
// to (a public one, a private one, one in each cidr rule: fewer for a
// large policy, see diffNameAddrBudget).
//
// The samples find what a rule, a default, a mode or a guard changes; they
// are not a proof that nothing else differs. The wider changes come first;
// within each, by client, then names (sorted) before addresses, then port.
//
// tried is how many destinations were decided under each policy.
func Diff(old, new *Policy) (changes []Change, tried int) {
	s := diffSamples(old, new)
	ps := []*Policy{old, new}
	var out []Change
	try := func(r Request) {
		tried++
		if c, ok := compare(old, new, r); ok {
			out = append(out, c)
		}
	}
	addrPorts := map[netip.Addr][]uint16{}
	for _, ip := range append(append([]netip.Addr(nil), s.nameAddrs...), s.addrs...) {
		addrPorts[ip] = s.portsFor(ps, "", ip)
	}
	namePorts := map[string][]uint16{}
	for _, name := range s.names {
		namePorts[name] = s.portsFor(ps, name, netip.Addr{})
	}
	for _, cl := range s.clients {
		for _, name := range s.names {
			for _, ip := range s.nameAddrs {
				for _, port := range unionPorts(namePorts[name], addrPorts[ip]) {
					try(Request{Host: name, IP: ip, Port: port, Client: cl.addr, User: cl.user})
				}
			}
		}
		for _, ip := range s.addrs {
			for _, port := range addrPorts[ip] {
				try(Request{IP: ip, Port: port, Client: cl.addr, User: cl.user})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Wider() && !out[j].Wider() })
	return out, tried
}

// The addresses of cidr rules each name is decided at: all of them while
// names × addresses stays within diffNameAddrBudget, else as many as fit,
// at least diffMinNameAddrs, so that a policy of many names and many cidr
// rules does not multiply one by the other.
const (
	diffNameAddrBudget = 100000
	diffMinNameAddrs   = 4
)

// unionPorts merges two sorted lists of ports.
func unionPorts(a, b []uint16) []uint16 {
	out := make([]uint16, 0, len(a)+len(b))
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || len(a) > 0 && a[0] < b[0]:
			out, a = append(out, a[0]), a[1:]
		case len(a) == 0 || b[0] < a[0]:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return out
}

// portsFor is the ports to try name (or "") at ip on: 80, 443, the port no
// rule names, and the ports of the rules of ps that match the name or the
// address, with those next to each range.
func (s *samples) portsFor(ps []*Policy, name string, ip netip.Addr) []uint16 {
	seen := map[uint16]bool{}
	out := make([]uint16, 0, len(s.ports)+8)
	add := func(p int) {
		if p >= 1 && p <= 65535 && !seen[uint16(p)] {
			seen[uint16(p)] = true
			out = append(out, uint16(p))
		}
	}
	for _, p := range s.ports {
		add(int(p))
	}
	edges := func(c crule) {
		for _, pr := range c.r.Ports {
			add(int(pr.Lo) - 1)
			add(int(pr.Lo))
			add(int(pr.Hi))
			add(int(pr.Hi) + 1)
		}
	}
	var n string
	if name != "" {
		n, _, _ = NormalizeHost(name)
	}
	for _, p := range ps {
		for _, rs := range append([]*ruleset{&p.top}, p.clientSets...) {
			if n != "" {
				rs.names.each(n, edges)
			}
			if ip.IsValid() {
				rs.addrs.each(ip.Unmap(), edges)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
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
	ports     []uint16     // tried for every destination (see portsFor)
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
	var cidrHosts []netip.Addr
	for _, p := range ps {
		for _, r := range p.Rules() {
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
			cidrHosts = append(cidrHosts, host)
			for _, a := range []netip.Addr{host, first, last, first.Prev(), last.Next()} {
				addAddr(&s.addrs, addrs, a)
			}
		}
	}
	// Names at an address of each cidr rule, or of as many as the budget
	// allows (at least diffMinNameAddrs), spread over the rules.
	room := max(diffMinNameAddrs, diffNameAddrBudget/max(1, len(s.names)+3))
	room = min(room, len(cidrHosts))
	for i := 0; i < room; i++ {
		addAddr(&s.nameAddrs, nameAddrs, cidrHosts[i*len(cidrHosts)/room])
	}
	// Each IPv4 sample as carried under each declared NAT64 prefix: a
	// prefix added or dropped changes what the address is decided on.
	var v4 []netip.Addr
	for _, a := range append(append([]netip.Addr{diffPrivate}, cidrHosts...), diffPublic4) {
		if a.Is4() {
			v4 = append(v4, a)
		}
	}
	for _, p := range ps {
		for _, pf := range p.NAT64Prefixes {
			for _, a := range v4 {
				addAddr(&s.addrs, addrs, rfc6052Embed(pf, a))
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
	var named [65536]bool
	for _, p := range ps {
		for _, r := range p.Rules() {
			for _, pr := range r.Ports {
				for q := int(pr.Lo); q <= int(pr.Hi); q++ {
					named[q] = true
				}
			}
		}
	}
	for p := 65535; p > 0; p-- {
		if !ports[uint16(p)] && !named[p] {
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

// diffClients are the clients Diff decides for: any client (the zero
// address: no clients: entry, allow_from not checked), a client of each
// clients: entry, one inside each allow_from range and one outside them all.
func diffClients(ps []*Policy) []diffClient {
	out := []diffClient{{}}
	// A client matters to the decisions only through the ruleset each
	// policy picks for it and whether each policy's allow_from admits
	// it: one client per combination is enough, however many sources
	// and users the entries list.
	seen := map[string]bool{clientKey(ps, diffClient{}): true}
	add := func(c diffClient) {
		if k := clientKey(ps, c); !seen[k] {
			seen[k] = true
			out = append(out, c)
		}
	}
	var from []netip.Prefix
	for _, p := range ps {
		for _, c := range p.Clients {
			// Every source and every user of the entry: its first
			// may be taken by an earlier entry. A source's host is its
			// address for a /32 or /128 (Next would leave the range).
			var srcs []netip.Addr
			for _, pf := range c.Sources {
				a := pf.Masked().Addr()
				if !pf.IsSingleIP() {
					a = a.Next()
				}
				srcs = append(srcs, a)
			}
			if len(srcs) == 0 {
				srcs = []netip.Addr{{}}
			}
			users := c.Users
			if len(users) == 0 {
				users = []string{""}
			}
			for _, a := range srcs {
				add(diffClient{addr: a, user: users[0]})
			}
			for _, u := range users[1:] {
				add(diffClient{addr: srcs[0], user: u})
			}
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

// clientKey is what the policies' decisions depend on of a client: the
// ruleset each picks for it, and whether each admits it (allow_from).
func clientKey(ps []*Policy, c diffClient) string {
	var b strings.Builder
	for _, p := range ps {
		rs := p.rulesetFor(c.addr, c.user)
		b.WriteString(rs.name)
		in := len(p.AllowFrom) == 0 || !c.addr.IsValid() || containsAddr(p.AllowFrom, c.addr.Unmap().WithZone(""))
		b.WriteString("\x00" + strconv.FormatBool(in) + "\x00")
	}
	return b.String()
}

// Destination is the change's destination as a person reads it:
// "api.example.com:443", "db.corp.example:5432 at 10.0.0.1" (a name
// resolving to an address that is not the public sample), "10.0.0.1:5432",
// "[fd00::1]:443", with " from CLIENT" and " as user USER" when the
// policies tell clients apart.
func (c Change) Destination() string {
	r := c.Request
	if r.Method != "" {
		return requestDestination(r)
	}
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

// rfc6052Embed is the address that carries v4 under prefix pf (RFC 6052
// §2.2: bits 64 to 71 are skipped), the inverse of rfc6052IPv4.
func rfc6052Embed(pf netip.Prefix, v4 netip.Addr) netip.Addr {
	b := pf.Masked().Addr().As16()
	v := v4.As4()
	for i, j := range rfc6052Bytes(pf.Bits()) {
		b[j] = v[i]
	}
	return netip.AddrFrom16(b)
}
