// Package dialer is the checking dialer every egress data path dials
// through: it asks the policy about a destination, resolves a name once,
// asks again about every address, and dials only an allowed IP literal, so
// that a name cannot be rebound to a guarded address between the check and
// the connect (DNS rebinding).
//
// It does not log and does not answer clients: it returns the Decision and
// typed errors (*DeniedError, *ResolveError, timeouts) and the caller maps
// them to its protocol's answer and its one log line.
package dialer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// Resolver looks up the addresses of a name. *net.Resolver satisfies it;
// tests pass a map.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// ReasonLoop is the Reason of a decision refusing a connection to one of
// egress's own listeners, which would make the proxy talk to itself.
const ReasonLoop policy.Reason = "loop"

// Defaults used when neither the Dialer nor the policy sets a value.
const (
	DefaultTimeout   = 10 * time.Second
	DefaultKeepAlive = 30 * time.Second
)

// Dialer dials TCP connections that the current policy allows. The zero
// value is not usable: Policy is required. Safe for concurrent use.
type Dialer struct {
	// Policy returns the current policy. It is called once per Dial, so a
	// policy swapped atomically on reload applies to the next connection.
	Policy func() *policy.Policy
	// Resolver resolves names; nil means net.DefaultResolver.
	Resolver Resolver
	// Timeout bounds connecting to all the allowed addresses of one
	// destination (not the lookup, which the resolver bounds). Zero means
	// the policy's timeouts.dial, or DefaultTimeout when that is zero too.
	Timeout time.Duration
	// IsSelf reports whether an address is one of egress's own listeners;
	// a connection to one is refused with ReasonLoop. Nil means none.
	IsSelf func(netip.AddrPort) bool
}

// DeniedError is returned when the policy refuses the destination (or the
// loop guard does). Decision says why.
type DeniedError struct {
	Decision policy.Decision
}

func (e *DeniedError) Error() string {
	d := e.Decision
	target := d.Host
	if d.IP.IsValid() {
		if target == "" {
			target = d.IP.String()
		} else {
			target += " (" + d.IP.String() + ")"
		}
	}
	return fmt.Sprintf("%s port %d denied: %s", target, d.Port, d.Reason)
}

// ResolveError is returned when a name has no usable address.
type ResolveError struct {
	Host string
	Err  error
}

func (e *ResolveError) Error() string { return "resolve " + e.Host + ": " + e.Err.Error() }
func (e *ResolveError) Unwrap() error { return e.Err }

// errNoAddresses is the ResolveError cause for an empty answer.
var errNoAddresses = errors.New("no addresses")

// Dial decides on req, resolves a name once, decides on every address, and
// dials an allowed IP literal. If req.IP is valid it does not resolve: it
// decides on (Host, IP) and dials IP.
//
// A name whose answer mixes allowed and denied addresses is dialled on the
// allowed ones only, in the resolver's order; it is denied (with the first
// denied address's decision) only when no address is allowed. Either way no
// denied address is ever dialled.
//
// The returned Decision is the one for the address dialled (or, on a
// resolve or dial error, the name's). Errors: *DeniedError when refused,
// *ResolveError when the lookup fails, an error matching
// os.ErrDeadlineExceeded when connecting timed out, otherwise the dial
// error (connection refused, ...).
func (d *Dialer) Dial(ctx context.Context, network string, req policy.Request) (net.Conn, policy.Decision, error) {
	p := d.Policy()
	ipNet := "ip"
	switch network {
	case "tcp":
	case "tcp4":
		ipNet = "ip4"
	case "tcp6":
		ipNet = "ip6"
	default:
		return nil, policy.Decision{}, fmt.Errorf("dial %s: unsupported network", network)
	}

	var addrs []netip.Addr
	var first policy.Decision
	if req.IP.IsValid() {
		req.IP = req.IP.Unmap()
		addrs = []netip.Addr{req.IP}
	} else {
		first = p.Decide(req)
		if !first.Allowed() {
			return nil, first, &DeniedError{Decision: first}
		}
		switch {
		case first.IP.IsValid():
			// The host was an IP literal in some spelling; the policy
			// normalised it. Never hand such a string to a resolver:
			// getaddrinfo accepts inet_aton forms ("0x7f.1") we must not
			// reinterpret differently from the policy.
			addrs = []netip.Addr{first.IP.Unmap()}
		default:
			if ip, err := netip.ParseAddr(trimBrackets(req.Host)); err == nil {
				addrs = []netip.Addr{ip.Unmap()}
				break
			}
			name := first.Host
			if name == "" {
				name = req.Host
			}
			r := d.Resolver
			if r == nil {
				r = net.DefaultResolver
			}
			ips, err := r.LookupNetIP(ctx, ipNet, name)
			if err != nil {
				return nil, first, &ResolveError{Host: name, Err: err}
			}
			if len(ips) == 0 {
				return nil, first, &ResolveError{Host: name, Err: errNoAddresses}
			}
			addrs = ips
		}
	}

	// Decide on every address; keep the allowed ones.
	allowed := make([]policy.Decision, 0, len(addrs))
	var denied *policy.Decision
	for _, ip := range addrs {
		r := req
		r.IP = ip.Unmap()
		dec := p.Decide(r)
		if dec.Allowed() && d.IsSelf != nil && d.IsSelf(netip.AddrPortFrom(r.IP, req.Port)) {
			dec = loopDecision(dec)
		}
		if !dec.Allowed() {
			if denied == nil {
				denied = &dec
			}
			continue
		}
		allowed = append(allowed, dec)
	}
	if len(allowed) == 0 {
		return nil, *denied, &DeniedError{Decision: *denied}
	}

	timeout := d.Timeout
	if timeout <= 0 {
		timeout = p.Timeouts.Dial
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nd := net.Dialer{KeepAlive: DefaultKeepAlive}
	var lastErr error
	for _, dec := range allowed {
		ap := netip.AddrPortFrom(dec.IP, req.Port)
		c, err := nd.DialContext(dctx, network, ap.String())
		if err == nil {
			return c, dec, nil
		}
		lastErr = err
		if dctx.Err() != nil {
			break
		}
	}
	dec := allowed[0]
	if dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return nil, dec, fmt.Errorf("dial %s port %d: %w after %s", describe(dec, req), req.Port, os.ErrDeadlineExceeded, timeout)
	}
	return nil, dec, fmt.Errorf("dial %s port %d: %w", describe(dec, req), req.Port, lastErr)
}

func loopDecision(d policy.Decision) policy.Decision {
	d.Verdict = policy.Deny
	d.Audit = false // a loop is never let through, audit or not
	d.Reason = ReasonLoop
	d.Rule = nil
	d.Hint = "the destination is egress itself; point the client at the real destination"
	return d
}

func describe(d policy.Decision, req policy.Request) string {
	if d.Host != "" {
		return d.Host
	}
	if req.Host != "" && !d.IP.IsValid() {
		return req.Host
	}
	return d.IP.String()
}

func trimBrackets(s string) string {
	if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

// Self is the set of egress's own listener addresses; its Contains method
// is meant for Dialer.IsSelf. A listener on an unspecified address
// (0.0.0.0, ::) is reached through loopback and every local interface
// address, so those all count for its port. Safe for concurrent use.
type Self struct {
	mu    sync.RWMutex
	addrs []netip.AddrPort
	local []netip.Addr // interface addresses, read when an unspecified listener is added
}

// Add records a listener's address (a *net.TCPAddr, *net.UDPAddr or any
// net.Addr whose String is ip:port).
func (s *Self) Add(a net.Addr) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs = append(s.addrs, ap)
	if ap.Addr().IsUnspecified() && s.local == nil {
		ifs, _ := net.InterfaceAddrs()
		for _, ia := range ifs {
			if pfx, err := netip.ParsePrefix(ia.String()); err == nil {
				s.local = append(s.local, pfx.Addr().Unmap())
			}
		}
	}
}

// Contains reports whether ap is one of the listeners.
func (s *Self) Contains(ap netip.AddrPort) bool {
	if s == nil {
		return false
	}
	ip := ap.Addr().Unmap()
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, l := range s.addrs {
		if l.Port() != ap.Port() {
			continue
		}
		if l.Addr() == ip {
			return true
		}
		if l.Addr().IsUnspecified() && (ip.IsLoopback() || ip.IsUnspecified() || slices.Contains(s.local, ip)) {
			return true
		}
		// Linux connects 0.0.0.0 and :: to loopback: a loopback
		// listener is reached through them too.
		if ip.IsUnspecified() && l.Addr().IsLoopback() {
			return true
		}
	}
	return false
}
