package policy

import (
	"net/netip"
	"sort"
	"strings"
)

// ruleset is one compiled policy: the top-level one or a clients: entry.
type ruleset struct {
	name  string // "default" or the clients: entry's name
	def   Verdict
	mode  Mode
	rules []*Rule // file order

	names nameNode
	addrs prefixTable

	// cidrAllowAll is true when some cidr allow rule has no ports;
	// cidrAllowPorts lists the ports of the others, sorted and merged.
	// Step 1 uses them to
	// decide whether resolving a name could lead to an allowed address.
	cidrAllowAll   bool
	cidrAllowPorts []PortRange
	// metaAllows are the allow rules naming a metadata address, the only
	// way metadata names get past step 1 (on their ports).
	metaAllows []*Rule
	// loopbackAllows are the cidr allow rules inside a loopback range:
	// the rules that can lift guard_loopback for a localhost name.
	loopbackAllows []*Rule
	// resolveUnlisted is dns.resolve_unlisted: whether step 1 lets a name
	// no host rule allows be resolved because a cidr rule might allow
	// one of its addresses.
	resolveUnlisted bool
	// inherited are the rules of other files that hold in a clients:
	// entry too: their top-level denies (see checkClients). They match
	// as rs.rules do but are not the entry's own (Policy.Rules, lint).
	inherited []*Rule
	// layered is true when the rules come from more than one file (see
	// include.go): each file's rules then decide on their own, and a
	// deny of any file wins.
	layered bool
	// reqNames and reqAddrs hold the deny rules with http: (request
	// denies): they refuse requests, not connections (see http.go).
	reqNames     nameNode
	reqAddrs     prefixTable
	hasReqDenies bool
}

// matchName is the best name rule for name and port. With rules from
// several files, each file's best rule is taken, and a deny among them
// wins over the allows (see acrossFiles).
func (rs *ruleset) matchName(name string, port uint16) crule {
	best := rs.names.match(name, port, crule{})
	return rs.acrossFiles(best, port, func(fn func(crule)) { rs.names.each(name, fn) })
}

// matchAddr is the best cidr rule for ip and port, as matchName.
func (rs *ruleset) matchAddr(ip netip.Addr, port uint16) crule {
	best := rs.addrs.match(ip, port)
	return rs.acrossFiles(best, port, func(fn func(crule)) { rs.addrs.each(ip, fn) })
}

// acrossFiles returns best (the best matching rule of all files), unless
// the rules come from several files and one file's best rule among those
// each yields for port is a deny: then the most specific such deny.
func (rs *ruleset) acrossFiles(best crule, port uint16, each func(func(crule))) crule {
	if !rs.layered || best.r == nil {
		return best
	}
	var all []crule
	each(func(c crule) {
		if c.r.matchesPort(port) {
			all = append(all, c)
		}
	})
	return denyOfAnyLayer(best, all)
}

// denyOfAnyLayer returns, of the rules all that match, the most specific
// deny that is the best rule of its own file, or else best (the best rule
// of all).
func denyOfAnyLayer(best crule, all []crule) crule {
	top := map[int]crule{}
	for _, c := range all {
		if t, ok := top[c.r.layer]; !ok || c.rank > t.rank {
			top[c.r.layer] = c
		}
	}
	var deny crule
	for _, c := range top {
		if c.r.Action == Deny && (deny.r == nil || c.rank > deny.rank || c.rank == deny.rank && c.r.layer < deny.r.layer) {
			deny = c
		}
	}
	if deny.r != nil {
		return deny
	}
	return best
}

// rank orders matching rules: the higher rank wins. Host rules: exact over
// wildcard, more labels over fewer, ports over none, deny over allow. Cidr
// rules: longer prefix, ports over none, deny over allow.
func rank(r *Rule) int {
	v := 0
	if len(r.Ports) > 0 {
		v += 2
	}
	if r.Action == Deny {
		v++
	}
	if r.Host != "" {
		labels := strings.Count(r.Host, ".") + 1
		if strings.IndexByte(r.Host, '*') < 0 {
			v += 1 << 20
		}
		return v + labels<<4
	}
	return v + r.Prefix.Bits()<<4
}

// matchesPort reports whether r applies to port. Port 0 is "some port": an
// allow rule limited to ports matches it, a deny rule limited to ports does
// not decide it.
func (r *Rule) matchesPort(port uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	if port == 0 {
		return r.Action == Allow
	}
	for _, pr := range r.Ports {
		if port >= pr.Lo && port <= pr.Hi {
			return true
		}
	}
	return false
}

// crule is a rule and its rank, precomputed.
type crule struct {
	r    *Rule
	rank int
}

// pick returns the better of best and the rules in rs that match port.
func pick(best crule, rs []crule, port uint16) crule {
	for _, c := range rs {
		if (best.r == nil || c.rank > best.rank) && c.r.matchesPort(port) {
			best = c
		}
	}
	return best
}

// nameNode is a node of the label trie: names are stored by their labels
// from the right ("com", "example", "api").
type nameNode struct {
	children map[string]*nameNode
	star     *nameNode // a "*" label inside a pattern: exactly one label
	here     []crule   // patterns that end at this node
	below    []crule   // "*." patterns ending here: one or more labels below
}

func (n *nameNode) add(c crule) {
	pat := c.r.Host
	sub := false
	if pat == "*" {
		n.below = append(n.below, c)
		return
	}
	if strings.HasPrefix(pat, "*.") {
		sub, pat = true, pat[2:]
	}
	for pat != "" {
		label := pat
		i := strings.LastIndexByte(pat, '.')
		if i >= 0 {
			label, pat = pat[i+1:], pat[:i]
		} else {
			pat = ""
		}
		if label == "*" {
			if n.star == nil {
				n.star = &nameNode{}
			}
			n = n.star
			continue
		}
		next := n.children[label]
		if next == nil {
			if n.children == nil {
				n.children = map[string]*nameNode{}
			}
			next = &nameNode{}
			n.children[label] = next
		}
		n = next
	}
	if sub {
		n.below = append(n.below, c)
	} else {
		n.here = append(n.here, c)
	}
}

// match finds the best rule for the unconsumed labels rem of a name.
func (n *nameNode) match(rem string, port uint16, best crule) crule {
	if rem == "" {
		return pick(best, n.here, port)
	}
	if len(n.below) > 0 {
		best = pick(best, n.below, port)
	}
	label, next := rem, ""
	if i := strings.LastIndexByte(rem, '.'); i >= 0 {
		label, next = rem[i+1:], rem[:i]
	}
	if c := n.children[label]; c != nil {
		best = c.match(next, port, best)
	}
	if n.star != nil {
		best = n.star.match(next, port, best)
	}
	return best
}

// prefixTable is a longest-prefix-match table: one hash table per prefix
// length in use, probed from the longest length down. A policy uses few
// distinct lengths, so a lookup is a handful of probes of a 16-byte key
// (the masked address), without allocation.
type prefixTable struct {
	fam [2][]prefixLen // IPv4, IPv6; longest first
}

type prefixLen struct {
	bits int
	m    map[addrKey][]crule
}

// addrKey is an address as two integers (IPv4 in the low 32 bits of lo).
type addrKey struct{ hi, lo uint64 }

func keyOf(a netip.Addr) addrKey {
	if a.Is4() {
		b := a.As4()
		return addrKey{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var k addrKey
	for i := 0; i < 8; i++ {
		k.hi = k.hi<<8 | uint64(b[i])
		k.lo = k.lo<<8 | uint64(b[8+i])
	}
	return k
}

// masked keeps the first bits of k (an IPv4 key when fam is 0).
func (k addrKey) masked(bits, fam int) addrKey {
	if fam == 0 {
		return addrKey{lo: k.lo & (^uint64(0) << (32 - bits)) & 0xffffffff}
	}
	if bits >= 64 {
		return addrKey{hi: k.hi, lo: k.lo & (^uint64(0) << (128 - bits))}
	}
	return addrKey{hi: k.hi & (^uint64(0) << (64 - bits))}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func (t *prefixTable) add(c crule) {
	p := c.r.Prefix
	f := family(p.Addr())
	s := t.fam[f]
	i := 0
	for i < len(s) && s[i].bits > p.Bits() {
		i++
	}
	if i == len(s) || s[i].bits != p.Bits() {
		s = append(s, prefixLen{})
		copy(s[i+1:], s[i:])
		s[i] = prefixLen{bits: p.Bits(), m: map[addrKey][]crule{}}
		t.fam[f] = s
	}
	k := keyOf(p.Addr()).masked(p.Bits(), f)
	s[i].m[k] = append(s[i].m[k], c)
}

// match returns the best rule covering ip for port.
func (t *prefixTable) match(ip netip.Addr, port uint16) crule {
	var best crule
	f := family(ip)
	k := keyOf(ip)
	for _, pl := range t.fam[f] {
		if rs, ok := pl.m[k.masked(pl.bits, f)]; ok {
			if best = pick(best, rs, port); best.r != nil {
				return best
			}
		}
	}
	return best
}

// each calls fn for every rule whose prefix covers ip, whatever its port.
func (t *prefixTable) each(ip netip.Addr, fn func(crule)) {
	f := family(ip)
	k := keyOf(ip)
	for _, pl := range t.fam[f] {
		for _, c := range pl.m[k.masked(pl.bits, f)] {
			fn(c)
		}
	}
}

// lifts returns an allow rule of at least minBits covering ip for port: a
// rule that lies inside a guarded range of minBits and names ip.
func (t *prefixTable) lifts(ip netip.Addr, port uint16, minBits int) *Rule {
	f := family(ip)
	k := keyOf(ip)
	for _, pl := range t.fam[f] {
		if pl.bits < minBits {
			break
		}
		for _, c := range pl.m[k.masked(pl.bits, f)] {
			if c.r.Action == Allow && c.r.matchesPort(port) {
				return c.r
			}
		}
	}
	return nil
}

// compile builds the matchers of rs from rs.rules.
func (rs *ruleset) compile() {
	rs.names = nameNode{}
	rs.addrs = prefixTable{}
	rs.cidrAllowAll, rs.cidrAllowPorts, rs.metaAllows, rs.loopbackAllows = false, nil, nil, nil
	rs.layered = false
	rs.reqNames, rs.reqAddrs, rs.hasReqDenies = nameNode{}, prefixTable{}, false
	all := append(rs.rules[:len(rs.rules):len(rs.rules)], rs.inherited...)
	for _, r := range all {
		if r.layer != all[0].layer {
			rs.layered = true
		}
		c := crule{r: r, rank: rank(r)}
		if rs.addRequestDeny(c) {
			continue
		}
		if r.Host != "" {
			rs.names.add(c)
			continue
		}
		rs.addrs.add(c)
		if r.Action != Allow {
			continue
		}
		if len(r.Ports) == 0 {
			rs.cidrAllowAll = true
		} else {
			rs.cidrAllowPorts = append(rs.cidrAllowPorts, r.Ports...)
		}
		if reason, rng, ok := guardOf(r.Prefix.Addr()); ok && reason == ReasonGuardMetadata && r.Prefix.Bits() >= rng.Bits() {
			rs.metaAllows = append(rs.metaAllows, r)
		}
		if reason, rng, ok := guardOf(r.Prefix.Addr()); ok && reason == ReasonGuardLoopback && r.Prefix.Bits() >= rng.Bits() {
			rs.loopbackAllows = append(rs.loopbackAllows, r)
		}
	}
	rs.cidrAllowPorts = mergePorts(rs.cidrAllowPorts)
}

// cidrAllowCouldMatch reports whether some cidr allow rule could allow port.
func (rs *ruleset) cidrAllowCouldMatch(port uint16) bool {
	if rs.cidrAllowAll || port == 0 && len(rs.cidrAllowPorts) > 0 {
		return true
	}
	// The first range that does not end below port.
	i := sort.Search(len(rs.cidrAllowPorts), func(i int) bool { return rs.cidrAllowPorts[i].Hi >= port })
	return i < len(rs.cidrAllowPorts) && rs.cidrAllowPorts[i].Lo <= port
}

// mergePorts sorts port ranges and merges those that overlap or touch, for
// a binary search: a policy may hold thousands of cidr rules, and step 1
// asks this of every name no host rule decides.
func mergePorts(prs []PortRange) []PortRange {
	sort.Slice(prs, func(i, j int) bool { return prs[i].Lo < prs[j].Lo })
	out := prs[:0]
	for _, pr := range prs {
		if n := len(out); n > 0 && int(pr.Lo) <= int(out[n-1].Hi)+1 {
			out[n-1].Hi = max(out[n-1].Hi, pr.Hi)
			continue
		}
		out = append(out, pr)
	}
	return out
}

// metadataLiftable reports whether an allow rule naming a metadata address
// could allow port: then a metadata name is decided on its addresses.
func (rs *ruleset) metadataLiftable(port uint16) bool {
	for _, r := range rs.metaAllows {
		if r.matchesPort(port) {
			return true
		}
	}
	return false
}

// loopbackLiftable reports whether a cidr allow rule inside a loopback range
// could allow port: then a localhost name is decided on its addresses.
func (rs *ruleset) loopbackLiftable(port uint16) bool {
	for _, r := range rs.loopbackAllows {
		if r.matchesPort(port) {
			return true
		}
	}
	return false
}
