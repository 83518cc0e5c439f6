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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// Resolver looks up the addresses of a name. *net.Resolver satisfies it;
// tests pass a map.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

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
	// destination (not the lookup, which the resolver bounds); each
	// address gets its own share of it (see Dial). Zero means the
	// policy's timeouts.dial, or DefaultTimeout when that is zero too.
	Timeout time.Duration
	// IsSelf reports whether an address is one of egress's own listeners;
	// a connection to one is refused with policy.ReasonLoop. Nil means none.
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
// dials an allowed IP literal: Resolve, then DialResolved. If req.IP is
// valid it does not resolve: it decides on (Host, IP) and dials IP.
//
// A name whose answer mixes allowed and denied addresses is dialled on the
// allowed ones only; it is denied (with the first denied address's
// decision) only when no address is allowed. A name one of whose allowed
// addresses is egress's own listener (IsSelf) is refused whole with
// ReasonLoop, whatever its other addresses. Either way no denied address
// is ever dialled. The allowed addresses are raced Happy Eyeballs style
// (RFC 8305): families interleaved, a new attempt every
// ConnectionAttemptDelay or as soon as one fails, each with its own
// deadline, the whole bounded by Timeout.
//
// The returned Decision is the one for the address dialled (or, on a
// resolve or dial error, the name's). Errors: *DeniedError when refused,
// *ResolveError when the lookup fails, an error matching
// os.ErrDeadlineExceeded when connecting timed out, otherwise the dial
// error (connection refused, ...).
func (d *Dialer) Dial(ctx context.Context, network string, req policy.Request) (net.Conn, policy.Decision, error) {
	r, dec, err := d.Resolve(ctx, network, req)
	if err != nil {
		return nil, dec, err
	}
	return d.DialResolved(ctx, r)
}

// Resolved is a destination decided and resolved, not yet dialled: the
// allowed addresses Dial would race, each with its decision. A caller
// that may need no connection at all (proxy/intercept, whose pool may
// hold one for an address) decides with Resolve and dials later with
// DialResolved: one resolution, and the addresses dialled are the ones
// decided.
type Resolved struct {
	// Network is "tcp", "tcp4" or "tcp6"; Request is the request Resolve
	// was given.
	Network string
	Request policy.Request
	// Allowed are the allowed addresses' decisions (Decision.IP), in the
	// resolver's order: never empty when Resolve succeeded. A caller may
	// narrow or reorder them (Prefer), never add one.
	Allowed []policy.Decision
	// Timeout bounds the dial (Dialer.Timeout, or the policy's
	// timeouts.dial when Resolve ran).
	Timeout time.Duration
}

// Prefer returns r with the address ip, if it is one of r's, tried first
// (then the rest in their order): a caller that last used ip keeps it.
func (r Resolved) Prefer(ip netip.Addr) Resolved {
	i := slices.IndexFunc(r.Allowed, func(d policy.Decision) bool { return d.IP == ip })
	if i <= 0 {
		return r
	}
	out := make([]policy.Decision, 0, len(r.Allowed))
	out = append(out, r.Allowed[i])
	out = append(out, r.Allowed[:i]...)
	r.Allowed = append(out, r.Allowed[i+1:]...)
	return r
}

// Resolve is Dial without the connect: it decides on req, resolves a name
// once, decides on every address, and returns the allowed ones, with the
// decision for the first of them. Its refusals and errors are Dial's
// (*DeniedError, *ResolveError, with the decision that says why); it
// connects to nothing.
func (d *Dialer) Resolve(ctx context.Context, network string, req policy.Request) (Resolved, policy.Decision, error) {
	p := d.Policy()
	ipNet := "ip"
	switch network {
	case "tcp":
	case "tcp4":
		ipNet = "ip4"
	case "tcp6":
		ipNet = "ip6"
	default:
		return Resolved{}, policy.Decision{}, fmt.Errorf("dial %s: unsupported network", network)
	}

	var addrs []netip.Addr
	var first policy.Decision
	if req.IP.IsValid() {
		req.IP = req.IP.Unmap()
		addrs = []netip.Addr{req.IP}
	} else {
		first = p.Decide(req)
		if !first.Allowed() {
			return Resolved{}, first, &DeniedError{Decision: first}
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
				return Resolved{}, first, &ResolveError{Host: name, Err: err}
			}
			if len(ips) == 0 {
				return Resolved{}, first, &ResolveError{Host: name, Err: errNoAddresses}
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
			// One allowed address of the name is egress itself: the name
			// is refused whole, as a loop. Dialling the others instead
			// (localhost: 127.0.0.1, where egress listens, and ::1) would
			// answer a client that pointed egress at itself with whatever
			// else holds the port, or a 502 (issue 18).
			dec = loopDecision(dec)
			return Resolved{}, dec, &DeniedError{Decision: dec}
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
		return Resolved{}, *denied, &DeniedError{Decision: *denied}
	}

	timeout := d.Timeout
	if timeout <= 0 {
		timeout = p.Timeouts.Dial
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return Resolved{Network: network, Request: req, Allowed: allowed, Timeout: timeout}, allowed[0], nil
}

// errNothingResolved is DialResolved's error for a Resolved with no
// address (the zero value, or one narrowed to nothing).
var errNothingResolved = errors.New("no allowed address to dial")

// DialResolved dials one of r's allowed addresses, exactly those, Happy
// Eyeballs style as Dial does, within r.Timeout. It neither resolves nor
// decides again: r is what Resolve decided. The returned Decision and
// errors are Dial's.
func (d *Dialer) DialResolved(ctx context.Context, r Resolved) (net.Conn, policy.Decision, error) {
	if len(r.Allowed) == 0 {
		return nil, policy.Decision{}, fmt.Errorf("dial %s port %d: %w", r.Request.Host, r.Request.Port, errNothingResolved)
	}
	network, timeout := r.Network, r.Timeout
	if network == "" {
		network = "tcp"
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return dialAllowed(ctx, network, r.Request, r.Allowed, timeout)
}

// ConnectionAttemptDelay is how long a connection attempt has to succeed
// before the next address is tried alongside it (RFC 8305 §5: 250 ms
// recommended).
const ConnectionAttemptDelay = 250 * time.Millisecond

// minAttemptTimeout is the least time one address gets before it is given
// up (net.Dialer's own floor), unless the whole dial has less left.
const minAttemptTimeout = 2 * time.Second

// attempt is the outcome of connecting to one address.
type attempt struct {
	dec  policy.Decision
	conn net.Conn
	err  error
}

// dialAllowed connects to one of the allowed addresses, Happy Eyeballs
// style (RFC 8305 §4-5): addresses in the resolver's order, families
// interleaved starting with the first address's; a new attempt starts
// when the previous one fails or after ConnectionAttemptDelay, whichever
// comes first, while earlier ones go on; the first connection wins and the
// others are closed. Each attempt has its own deadline, an equal share of
// what is left for the addresses not yet tried (at least
// minAttemptTimeout), so an address that drops packets cannot use up the
// others' time; timeout bounds the whole dial.
func dialAllowed(ctx context.Context, network string, req policy.Request, allowed []policy.Decision, timeout time.Duration) (net.Conn, policy.Decision, error) {
	order := interleave(allowed)
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := dctx.Deadline()
	nd := net.Dialer{KeepAlive: DefaultKeepAlive}
	if len(order) == 1 {
		// One address (an IP literal, a name with one address): connected
		// on this goroutine, without the race's goroutine, channel and
		// timer, which a CONNECT to 127.0.0.1 would pay in full (issue 13).
		c, err := nd.DialContext(dctx, network, netip.AddrPortFrom(order[0].IP, req.Port).String())
		if err != nil {
			return nil, allowed[0], dialError(ctx, req, allowed[0], []attempt{{dec: order[0], err: err}}, 0, timeout)
		}
		return c, order[0], nil
	}

	results := make(chan attempt, len(order)) // never blocks a late attempt
	next, running := 0, 0
	start := func() {
		dec := order[next]
		left := len(order) - next
		next++
		running++
		own := max(time.Until(deadline)/time.Duration(left), minAttemptTimeout)
		// WithDeadline keeps dctx's deadline when it is the earlier one.
		actx, acancel := context.WithDeadline(dctx, time.Now().Add(own))
		go func() {
			defer acancel()
			c, err := nd.DialContext(actx, network, netip.AddrPortFrom(dec.IP, req.Port).String())
			results <- attempt{dec: dec, conn: c, err: err}
		}()
	}
	start()
	delay := time.NewTimer(ConnectionAttemptDelay)
	defer delay.Stop()
	var failed []attempt
	for running > 0 {
		select {
		case a := <-results:
			running--
			if a.err == nil {
				cancel() // the attempts still running give up
				go closeLosers(results, running)
				return a.conn, a.dec, nil
			}
			failed = append(failed, a)
			if next < len(order) && dctx.Err() == nil {
				start()
				delay.Reset(ConnectionAttemptDelay)
			}
		case <-delay.C:
			if next < len(order) {
				start()
				delay.Reset(ConnectionAttemptDelay)
			}
		}
	}
	return nil, allowed[0], dialError(ctx, req, allowed[0], failed, len(order)-next, timeout)
}

// closeLosers closes the connections of attempts that finish after
// another won.
func closeLosers(results <-chan attempt, n int) {
	for range n {
		if a := <-results; a.conn != nil {
			a.conn.Close()
		}
	}
}

// interleave orders addresses as RFC 8305 §4 says: the first address's
// family first, then alternating between families, each family in the
// resolver's order.
func interleave(allowed []policy.Decision) []policy.Decision {
	if len(allowed) < 2 {
		return allowed
	}
	first := allowed[0].IP.Is4()
	var same, other []policy.Decision
	for _, d := range allowed {
		if d.IP.Is4() == first {
			same = append(same, d)
		} else {
			other = append(other, d)
		}
	}
	out := make([]policy.Decision, 0, len(allowed))
	for i := 0; i < len(same) || i < len(other); i++ {
		if i < len(same) {
			out = append(out, same[i])
		}
		if i < len(other) {
			out = append(out, other[i])
		}
	}
	return out
}

// dialError says why no address could be connected to. When the whole
// dial ran out of time (and the caller did not cancel), it matches
// os.ErrDeadlineExceeded; otherwise it wraps the first failure that was
// not a timeout (connection refused, unreachable), so that the client is
// told what an address said rather than that another was silent. With
// more than one address it names what each did.
func dialError(ctx context.Context, req policy.Request, dec policy.Decision, failed []attempt, untried int, timeout time.Duration) error {
	target := fmt.Sprintf("dial %s port %d", describe(dec, req), req.Port)
	var detail string
	if len(failed)+untried > 1 {
		var b strings.Builder
		b.WriteString(" (")
		for i, a := range failed {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(a.dec.IP.String())
			b.WriteByte(' ')
			b.WriteString(attemptWhat(a.err))
		}
		if untried > 0 {
			fmt.Fprintf(&b, ", %d not tried", untried)
		}
		b.WriteString(")")
		detail = b.String()
	}
	err := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && err == nil && !time.Now().Before(dl) {
		// The connect's own poller can report the caller's deadline
		// before ctx's timer has marked ctx done.
		err = context.DeadlineExceeded
	}
	if err != nil {
		// Words for Go's "context canceled": %.0w keeps ctx's error for
		// errors.Is and prints none of it.
		why := "given up: the client went away or egress is stopping"
		if errors.Is(err, context.DeadlineExceeded) {
			why = "no connection within the time the caller gave"
		}
		return fmt.Errorf("%s: %s%.0w", target, why, err)
	}
	for _, a := range failed {
		if !isTimeout(a.err) {
			return fmt.Errorf("%s%s: %w", target, detail, a.err)
		}
	}
	return fmt.Errorf("%s%s: %w after %s", target, detail, os.ErrDeadlineExceeded, timeout)
}

// attemptWhat says in a word or two what one address did.
func attemptWhat(err error) string {
	switch {
	case isTimeout(err):
		return "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable"
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

func loopDecision(d policy.Decision) policy.Decision {
	d.Verdict = policy.Deny
	d.Audit = false // a loop is never let through, audit or not
	d.Reason = policy.ReasonLoop
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
