// Package resolve is egress's one name resolver: the upstreams (the
// policy's dns.upstreams, else the nameservers of /etc/resolv.conf), the
// failover between them within dns.timeout, and the cache that honours
// TTLs (clamped to dns.min_ttl..dns.max_ttl) and negative answers (RFC
// 2308). The DNS listener (proxy/dnsproxy) forwards clients' queries
// through Exchange; the dialer, and so the HTTP proxy, CONNECT and the
// transparent path, look names up through LookupNetIP. Every path therefore
// sees the same upstreams, the same answers and the same errors, and
// follows a reloaded dns.upstreams at the next lookup.
//
// Failover: upstreams are tried in turn, the last one that answered first,
// each with an equal share of what is left of dns.timeout, so one silent
// upstream cannot use up the time of the others; a refused connection, a
// SERVFAIL or a REFUSED moves on to the next at once. When none answers,
// the error (*UpstreamError) names every upstream tried and what each did.
//
// It applies no policy: callers decide on the name before they ask and on
// every address after. It does not validate DNSSEC and does not speak DNS
// over TLS or HTTPS.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// Defaults used when the policy leaves a setting at zero.
const (
	DefaultTimeout    = 2 * time.Second
	DefaultResolvConf = "/etc/resolv.conf"
	// UDPBufSize is the EDNS(0) buffer size egress advertises to
	// upstreams (and the DNS listener to clients): the DNS flag day 2020
	// value, which avoids IP fragmentation.
	UDPBufSize = 1232
)

// Resolver asks the upstreams and caches their answers. The zero value is
// ready: it reads the built-in policy's dns settings (resolv.conf's
// nameservers, 2s). Safe for concurrent use; do not change fields once in
// use.
type Resolver struct {
	// Policy returns the current policy, whose dns: settings LookupNetIP
	// reads at every lookup (a reload applies to the next one). Nil means
	// policy.Builtin().
	Policy func() *policy.Policy
	// ResolvConf is read once, at the first lookup that needs it, when the
	// policy lists no upstreams; "" means DefaultResolvConf.
	ResolvConf string
	// IsSelf reports whether an address is one of egress's own listeners;
	// such upstreams are skipped so that egress never asks itself. Nil
	// means none (listeners added with AddSelf are always skipped).
	IsSelf func(netip.AddrPort) bool
	// Hosts is the hosts file LookupNetIP answers from before asking an
	// upstream, as the system's resolver does; "" means DefaultHosts. The
	// DNS listener (Exchange) does not read it.
	Hosts string
	// Now returns the current time for the cache; nil means time.Now.
	Now func() time.Time

	builtinOnce sync.Once
	builtin     *policy.Policy
	cache       cache
	sockets     socketPool
	self        dialer.Self
	preferred   atomic.Pointer[string] // host:port of the upstream that answered last
	resolvOnce  sync.Once
	resolv      []string
	resolvErr   error
	upstreamSet atomic.Pointer[[]string] // the dns.upstreams the cache was filled from
	hosts       hostsFile
}

var _ dialer.Resolver = (*Resolver)(nil)

// AddSelf records one of egress's own listeners, never to be used as an
// upstream (the DNS listener adds its sockets).
func (r *Resolver) AddSelf(a net.Addr) { r.self.Add(a) }

// Close closes the upstream sockets: idle ones at once, the others when
// their queries are done. The Resolver stays usable.
func (r *Resolver) Close() { r.sockets.closeAll() }

func (r *Resolver) policy() *policy.Policy {
	if r.Policy != nil {
		if p := r.Policy(); p != nil {
			return p
		}
	}
	r.builtinOnce.Do(func() { r.builtin = policy.Builtin() })
	return r.builtin
}

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Cached returns the cached answer to q (with the DO and CD bits asked
// for) and its age in seconds, or nil: the lookup without waiting that the
// DNS listener's UDP reader makes. The answer is shared with the cache:
// the caller must not modify it.
func (r *Resolver) Cached(cfg policy.DNS, q dns.Question, do, cd bool) (*dns.Msg, uint32) {
	m, age, _ := r.CachedMemo(cfg, q, do, cd)
	return m, age
}

// CachedMemo is Cached, with the memo kept with the cached answer.
func (r *Resolver) CachedMemo(cfg policy.DNS, q dns.Question, do, cd bool) (*dns.Msg, uint32, *Memo) {
	r.cache.setMax(cfg.CacheSize)
	r.followUpstreams(cfg.Upstreams)
	return r.cache.get(keyOf(q, do, cd), r.now())
}

// followUpstreams empties the cache when dns.upstreams changed (a
// reload): an answer of the old upstreams, such as a split-horizon
// resolver's internal address, must not outlive the switch by its TTL.
func (r *Resolver) followUpstreams(ups []string) {
	last := r.upstreamSet.Load()
	if last != nil && slices.Equal(*last, ups) {
		return
	}
	cp := slices.Clone(ups)
	if r.upstreamSet.CompareAndSwap(last, &cp) && last != nil {
		r.cache.clear()
		r.preferred.Store(nil)
	}
}

// Exchange returns the upstream answer to q, from the cache or from the
// upstreams of cfg (then caching it), within cfg's timeout, and its age in
// the cache in seconds. Only a NOERROR or NXDOMAIN answer is returned;
// otherwise the error is an *UpstreamError (or wraps ErrNoUpstream). The
// answer is shared with the cache: the caller must not modify it.
func (r *Resolver) Exchange(ctx context.Context, cfg policy.DNS, q dns.Question, do, cd bool) (*dns.Msg, uint32, error) {
	if m, age := r.Cached(cfg, q, do, cd); m != nil {
		return m, age, nil
	}
	type result struct {
		m   *dns.Msg
		err error
	}
	ch := make(chan result, 1)
	deadline, _ := ctx.Deadline()
	r.forward(cfg, q, do, cd, deadline, func(m *dns.Msg, err error) { ch <- result{m, err} })
	var res result
	select {
	case res = <-ch:
		callerDone := ctx.Err() != nil || !deadline.IsZero() && !time.Now().Before(deadline)
		if res.err == nil || !callerDone {
			return res.m, 0, res.err
		}
		// The upstreams gave up at the caller's deadline (their timer
		// may fire a hair before ctx's): the caller's reason is the one
		// to report.
	case <-ctx.Done():
	}
	// Words for Go's "context deadline exceeded": %.0w keeps ctx's
	// error for errors.Is and prints none of it.
	cause := ctx.Err()
	if cause == nil {
		cause = context.DeadlineExceeded
	}
	why := "no answer in time"
	if errors.Is(cause, context.Canceled) {
		why = "given up: the client went away or egress is stopping"
	}
	return nil, 0, fmt.Errorf("ask about %s: %s%.0w", q.Name, why, cause)
}

// configured is the list of upstreams the current policy asks: the
// upstream sockets of any other are closed.
func (r *Resolver) configured() []string {
	list := r.policy().DNS.Upstreams
	if len(list) == 0 {
		list, _ = r.resolvConf()
	}
	out := make([]string, len(list))
	for i, u := range list {
		out[i] = withPort(u)
	}
	return out
}

// LookupNetIP returns the addresses of host: its A records for network
// "ip4", AAAA for "ip6", both (asked in parallel, IPv6 first) for "ip",
// following the CNAME chain of each answer. Like the system's resolver it
// answers localhost names with loopback (RFC 6761 §6.3) and names in the
// hosts file from it, without a query. It implements dialer.Resolver.
//
// Errors are *net.DNSError, so that callers tell a missing name from a
// failing server the usual way: IsNotFound for NXDOMAIN or a name without
// addresses; otherwise Err says what every upstream did (UnwrapErr is the
// *UpstreamError) and IsTimeout is set when they all timed out.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	var types []uint16
	switch network {
	case "ip":
		types = []uint16{dns.TypeAAAA, dns.TypeA}
	case "ip4":
		types = []uint16{dns.TypeA}
	case "ip6":
		types = []uint16{dns.TypeAAAA}
	default:
		return nil, &net.DNSError{Err: "unsupported network " + network, Name: host}
	}
	name := dns.Fqdn(strings.ToLower(host))
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, &net.DNSError{Err: "invalid name", Name: host, IsNotFound: true}
	}
	if name == "localhost." || strings.HasSuffix(name, ".localhost.") {
		// RFC 6761 §6.3: resolution APIs answer localhost names with
		// loopback themselves and send no query for them.
		return loopback(network), nil
	}
	if addrs := r.fromHosts(network, name); len(addrs) > 0 {
		return addrs, nil
	}
	cfg := r.policy().DNS
	type result struct {
		addrs []netip.Addr
		err   error
		nx    bool
	}
	results := make([]result, len(types))
	ask := func(i int) {
		q := dns.Question{Name: name, Qtype: types[i], Qclass: dns.ClassINET}
		m, _, err := r.Exchange(ctx, cfg, q, false, false)
		if err != nil {
			results[i].err = err
			return
		}
		results[i].nx = m.Rcode == dns.RcodeNameError
		results[i].addrs = addresses(name, m)
	}
	if len(types) == 1 {
		ask(0)
	} else {
		var wg sync.WaitGroup
		for i := range types {
			wg.Go(func() { ask(i) })
		}
		wg.Wait()
	}

	var addrs []netip.Addr
	var failed error
	nx := false
	for _, res := range results {
		addrs = append(addrs, res.addrs...)
		nx = nx || res.nx
		if res.err != nil && failed == nil {
			failed = res.err
		}
	}
	switch {
	case len(addrs) > 0:
		// One family answered: use it, as getaddrinfo does.
		return addrs, nil
	case nx:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	case failed != nil:
		de := &net.DNSError{Err: failed.Error(), Name: host, UnwrapErr: failed}
		var ue *UpstreamError
		de.IsTimeout = errors.As(failed, &ue) && ue.timedOut()
		return nil, de
	}
	return nil, &net.DNSError{Err: "no address records", Name: host, IsNotFound: true}
}

// fromHosts returns the addresses of the hosts file for name, of the
// family network asks for.
func (r *Resolver) fromHosts(network, name string) []netip.Addr {
	path := r.Hosts
	if path == "" {
		path = DefaultHosts
	}
	var out []netip.Addr
	for _, a := range r.hosts.lookup(path, name, time.Now()) {
		if network == "ip" || network == "ip4" && a.Is4() || network == "ip6" && a.Is6() {
			out = append(out, a)
		}
	}
	return out
}

func loopback(network string) []netip.Addr {
	switch network {
	case "ip4":
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	case "ip6":
		return []netip.Addr{netip.IPv6Loopback()}
	}
	return []netip.Addr{netip.IPv6Loopback(), netip.AddrFrom4([4]byte{127, 0, 0, 1})}
}

// addresses returns the A and AAAA records of an answer owned by a name
// on the CNAME chain from qname, in answer order.
func addresses(qname string, m *dns.Msg) []netip.Addr {
	chain := CNAMEChain(qname, m.Answer)
	var out []netip.Addr
	for _, rr := range m.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		default:
			continue
		}
		if !containsFold(chain, rr.Header().Name) {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// CNAMEChain follows the CNAME records of an answer from qname: qname
// first, then each target. Records may come in any order; a loop ends the
// chain.
func CNAMEChain(qname string, answer []dns.RR) []string {
	chain := []string{qname}
	cur := qname
	for range answer {
		next := ""
		for _, rr := range answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, cur) {
				next = c.Target
				break
			}
		}
		if next == "" || containsFold(chain, next) {
			break
		}
		chain = append(chain, next)
		cur = next
	}
	return chain
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// isSelf reports whether an upstream is one of egress's own listeners.
func (r *Resolver) isSelf(ap netip.AddrPort) bool {
	if r.self.Contains(ap) {
		return true
	}
	return r.IsSelf != nil && r.IsSelf(ap)
}
