package dnsproxy

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/resolve"
)

// filtered is an upstream answer made fit for one client.
type filtered struct {
	answer, ns, extra []dns.RR
	// chain is the CNAME chain from the question; chainDenied is the
	// decision on the first of its names the policy denied (in audit mode
	// too), nil if none.
	chain       []string
	chainDenied *policy.Decision
	// removed are the denied decisions on addresses (audit ones included,
	// which are kept in the answer); enforced counts the ones removed.
	removed  []policy.Decision
	enforced int
	changed  bool   // a record was removed or modified
	age      uint32 // seconds the answer spent in the cache
	// remember are the addresses of the answer section kept, for
	// Server.Names.
	remember []remembered
}

// remembered is an address the answer gives for a name, for ttl.
type remembered struct {
	host string
	addr netip.Addr
	ttl  time.Duration
}

// filteredFor is a filtered answer kept with the cached answer it was made
// from (resolve.Memo), with what it depends on: the policy, the client,
// the question's name as asked and the age. Deciding is a pure function
// of these, so the next answer to that client under that policy within
// the same second reuses it instead of deciding again on every name and
// address; the addresses are still remembered for each answer.
type filteredFor struct {
	p      *policy.Policy
	client netip.Addr
	qname  string
	age    uint32
	f      *filtered
}

// filterCached is filter for an answer from the cache, reusing the
// result kept in memo when it was made for the same policy, client, name
// and age; otherwise it fills into (the caller's, so that an answer kept
// nowhere costs no allocation for it). The result may be shared: the
// caller must not modify it.
func (s *Server) filterCached(into *filtered, p *policy.Policy, client netip.Addr, host string, q dns.Question, up *dns.Msg, age uint32, memo *resolve.Memo) *filtered {
	if memo != nil {
		if v, _ := memo.Load().(*filteredFor); v != nil && v.p == p && v.client == client && v.age == age && v.qname == q.Name {
			return v.f
		}
	}
	s.filter(into, p, client, host, q, up, age)
	if memo != nil {
		kept := new(filtered)
		*kept = *into
		memo.Store(&filteredFor{p: p, client: client, qname: q.Name, age: age, f: kept})
	}
	return into
}

// filter applies the policy to an upstream answer for client, whose name
// decision was allowed for host (the question's normal form). It never
// modifies up: up may be shared with the cache. See the package comment
// for the rules.
func (s *Server) filter(f *filtered, p *policy.Policy, client netip.Addr, host string, q dns.Question, up *dns.Msg, age uint32) {
	f.age = age
	f.chain = resolve.CNAMEChain(q.Name, up.Answer)
	for _, name := range f.chain[1:] {
		d := p.Decide(policy.Request{Host: name, Client: client})
		if d.Denied() {
			f.chainDenied = &d
			if !d.Allowed() {
				return
			}
			break
		}
	}

	f.answer = make([]dns.RR, 0, len(up.Answer))
	for _, rr := range up.Answer {
		if !f.onChain(rr) {
			f.changed = true
			continue
		}
		if rr = f.decide(p, client, host, rr, true); rr != nil {
			f.answer = append(f.answer, resolve.Aged(rr, f.age))
		}
	}
	f.ns = f.section(p, client, up.Ns)
	f.extra = f.section(p, client, up.Extra)
}

// section filters the addresses of the authority or additional section,
// each decided on with its own owner name.
func (f *filtered) section(p *policy.Policy, client netip.Addr, rrs []dns.RR) []dns.RR {
	if len(rrs) == 0 {
		return nil
	}
	out := make([]dns.RR, 0, len(rrs))
	for _, rr := range rrs {
		if rr = f.decide(p, client, rr.Header().Name, rr, false); rr != nil {
			out = append(out, resolve.Aged(rr, f.age))
		}
	}
	return out
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// onChain reports whether an answer record belongs to the chain: owned by
// one of its names, or a DNAME above one (RFC 6672).
func (f *filtered) onChain(rr dns.RR) bool {
	owner := rr.Header().Name
	if containsFold(f.chain, owner) {
		return true
	}
	if rr.Header().Rrtype == dns.TypeDNAME {
		for _, n := range f.chain {
			if dns.IsSubDomain(owner, n) {
				return true
			}
		}
	}
	return false
}

// decide returns rr, a copy of rr without its refused address hints, or
// nil if rr is an address the policy refuses. host is the name the
// client will connect to. Addresses of the answer section that are kept
// are listed in f.remember.
func (f *filtered) decide(p *policy.Policy, client netip.Addr, host string, rr dns.RR, remember bool) dns.RR {
	ttl := time.Duration(rr.Header().Ttl-min(rr.Header().Ttl, f.age)) * time.Second
	keep := func(ip net.IP) bool {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return false
		}
		a = a.Unmap()
		d := p.Decide(policy.Request{Host: host, IP: a, Client: client})
		if d.Denied() {
			f.removed = append(f.removed, d)
		}
		if !d.Allowed() {
			f.enforced++
			f.changed = true
			return false
		}
		if remember {
			f.remember = append(f.remember, remembered{host, a, ttl})
		}
		return true
	}
	switch rr := rr.(type) {
	case *dns.A:
		if !keep(rr.A) {
			return nil
		}
	case *dns.AAAA:
		if !keep(rr.AAAA) {
			return nil
		}
	case *dns.SVCB:
		if v, ok := filterHints(rr.Value, keep); !ok {
			c := dns.Copy(rr).(*dns.SVCB)
			c.Value = v
			return c
		}
	case *dns.HTTPS:
		if v, ok := filterHints(rr.Value, keep); !ok {
			c := dns.Copy(rr).(*dns.HTTPS)
			c.Value = v
			return c
		}
	}
	return rr
}

// filterHints decides on every ipv4hint and ipv6hint address, and drops
// the ech key. It returns ok when all were kept; otherwise the values to
// use instead, without the refused addresses (and without a hint left
// empty) or the ech key.
func filterHints(values []dns.SVCBKeyValue, keep func(net.IP) bool) ([]dns.SVCBKeyValue, bool) {
	var out []dns.SVCBKeyValue
	all := true
	for i, kv := range values {
		var hint []net.IP
		switch kv := kv.(type) {
		case *dns.SVCBIPv4Hint:
			hint = kv.Hint
		case *dns.SVCBIPv6Hint:
			hint = kv.Hint
		case *dns.SVCBECHConfig:
			// Encrypted Client Hello would hide the server name from
			// the transparent path and the CONNECT check; without the
			// key, clients send it in clear (RFC 9460 §9.3, draft-ietf-
			// tls-esni: a client falls back to a cleartext ClientHello).
			if all {
				all = false
				out = append(out, values[:i]...)
			}
			continue
		default:
			if !all {
				out = append(out, kv)
			}
			continue
		}
		var kept []net.IP
		for _, ip := range hint {
			if keep(ip) {
				kept = append(kept, ip)
			}
		}
		if len(kept) == len(hint) {
			if !all {
				out = append(out, kv)
			}
			continue
		}
		if all {
			all = false
			out = append(out, values[:i]...)
		}
		if len(kept) == 0 {
			continue
		}
		switch kv.(type) {
		case *dns.SVCBIPv4Hint:
			out = append(out, &dns.SVCBIPv4Hint{Hint: kept})
		case *dns.SVCBIPv6Hint:
			out = append(out, &dns.SVCBIPv6Hint{Hint: kept})
		}
	}
	return out, all
}

// removedText lists the addresses refused, for the EDE text and the log
// line's error field.
func (f *filtered) removedText() string {
	var b strings.Builder
	b.WriteString("removed from the answer:")
	for i, d := range f.removed {
		if i == 5 {
			b.WriteString(" and ")
			b.WriteString(strconv.Itoa(len(f.removed) - i))
			b.WriteString(" more")
			break
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte(' ')
		b.WriteString(d.IP.String())
		b.WriteString(" (")
		b.WriteString(string(d.Reason))
		if loc := d.RuleLocation(); loc != "" {
			b.WriteString(" ")
			b.WriteString(loc)
		}
		if d.Audit {
			b.WriteString(", audit: kept")
		}
		b.WriteString(")")
	}
	return b.String()
}
