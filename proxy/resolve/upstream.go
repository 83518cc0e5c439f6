package resolve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// ErrNoUpstream is returned when no upstream is configured or usable.
var ErrNoUpstream = errors.New("no usable dns upstream")

// ReadResolvConf returns the nameservers of a resolv.conf file as
// host:port strings (port 53), in file order.
func ReadResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read resolv.conf: %w", err)
	}
	defer f.Close()
	ns, err := ParseResolvConf(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return ns, nil
}

// ParseResolvConf returns the nameservers listed in resolv.conf text as
// host:port strings (port 53). Lines that are not "nameserver ADDRESS",
// comments (# or ;) and unparsable addresses are skipped, as the C library
// does.
func ParseResolvConf(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// upstreams returns the upstreams to try for one query, in order: the
// policy's list (or resolv.conf's), starting from the one that answered
// last, without egress's own listeners.
func (r *Resolver) upstreams(configured []string) ([]string, error) {
	list := configured
	if len(list) == 0 {
		r.resolvOnce.Do(func() {
			path := r.ResolvConf
			if path == "" {
				path = DefaultResolvConf
			}
			r.resolv, r.resolvErr = ReadResolvConf(path)
		})
		if r.resolvErr != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoUpstream, r.resolvErr)
		}
		list = r.resolv
	}
	out := make([]string, 0, len(list))
	start := 0
	if pref := r.preferred.Load(); pref != nil {
		for i, u := range list {
			if withPort(u) == *pref {
				start = i
				break
			}
		}
	}
	for i := range list {
		u := withPort(list[(start+i)%len(list)])
		if ap, err := netip.ParseAddrPort(u); err == nil && r.isSelf(ap) {
			continue
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		if len(list) == 0 {
			return nil, fmt.Errorf("%w: none configured", ErrNoUpstream)
		}
		return nil, fmt.Errorf("%w: every upstream is egress itself (%s)", ErrNoUpstream, strings.Join(list, ", "))
	}
	return out, nil
}

// withPort adds port 53 to an upstream written without one.
func withPort(u string) string {
	if _, _, err := net.SplitHostPort(u); err == nil {
		return u
	}
	if a, err := netip.ParseAddr(strings.Trim(u, "[]")); err == nil {
		return netip.AddrPortFrom(a, 53).String()
	}
	return net.JoinHostPort(u, "53")
}

// UpstreamError is returned when no upstream gave a usable answer before
// the query's deadline. Its text names every upstream and what it did, and
// mentions the deadline only when time ran out on one: "no upstream
// answered within 2s: 127.0.0.1:1 refused (port unreachable: nothing
// listens there), 127.0.0.1:2 timed out"; "no upstream answered:
// 127.0.0.1:1 refused (port unreachable: nothing listens there)".
type UpstreamError struct {
	Timeout  time.Duration // the query's bound, dns.timeout
	Attempts []Attempt     // in the order tried, then those left untried
}

// Attempt is what one upstream did with a query.
type Attempt struct {
	Upstream string // host:port
	Err      error  // nil: not tried, the time was up
}

func (e *UpstreamError) Error() string {
	var b strings.Builder
	b.WriteString("no upstream answered")
	if e.ranOut() {
		fmt.Fprintf(&b, " within %s", e.Timeout)
	}
	b.WriteString(": ")
	for i, a := range e.Attempts {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.Upstream)
		b.WriteByte(' ')
		b.WriteString(a.what())
	}
	return b.String()
}

// Unwrap returns the failures, so that errors.Is finds a refused
// connection or a deadline among them.
func (e *UpstreamError) Unwrap() []error {
	var errs []error
	for _, a := range e.Attempts {
		if a.Err != nil {
			errs = append(errs, a.Err)
		}
	}
	return errs
}

// ranOut reports whether the query's time ran out on some upstream (it
// timed out or was not tried), as opposed to each failing at once.
func (e *UpstreamError) ranOut() bool {
	for _, a := range e.Attempts {
		if a.Err == nil || isTimeout(a.Err) {
			return true
		}
	}
	return false
}

// timedOut reports whether every upstream tried timed out (or none could
// be tried): the query's time ran out, nothing refused it.
func (e *UpstreamError) timedOut() bool {
	for _, a := range e.Attempts {
		if a.Err != nil && !isTimeout(a.Err) {
			return false
		}
	}
	return true
}

// what says in a word or three what an upstream did.
func (a Attempt) what() string {
	var re *RcodeError
	switch {
	case a.Err == nil:
		return "not tried (out of time)"
	case errors.As(a.Err, &re):
		return "answered " + dns.RcodeToString[re.Rcode]
	case errors.Is(a.Err, syscall.ECONNREFUSED):
		// UDP: an ICMP port unreachable; TCP: a reset to the SYN.
		return "refused (port unreachable: nothing listens there)"
	case errors.Is(a.Err, syscall.ENETUNREACH), errors.Is(a.Err, syscall.EHOSTUNREACH):
		return "unreachable (no route to it)"
	case isTimeout(a.Err):
		return "timed out"
	case errors.Is(a.Err, errMismatch):
		return "answered another question"
	}
	return a.Err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// RcodeError is the failure of an upstream that answered SERVFAIL,
// REFUSED or another error the next upstream may not repeat.
type RcodeError struct {
	Upstream string
	Rcode    int
}

func (e *RcodeError) Error() string {
	return fmt.Sprintf("%s answered %s", e.Upstream, dns.RcodeToString[e.Rcode])
}

// forward asks the upstreams in turn until one answers NOERROR or
// NXDOMAIN. Each attempt gets an equal share of what is left of ctx's
// deadline, so one silent upstream cannot use up the time of the others;
// a refused connection or an error rcode moves on at once. A truncated
// UDP answer is asked again over TCP from the same upstream.
func (r *Resolver) forward(ctx context.Context, q dns.Question, do, cd bool, ups []string, timeout time.Duration) (*dns.Msg, error) {
	m := &dns.Msg{
		MsgHdr:   dns.MsgHdr{Id: dns.Id(), Opcode: dns.OpcodeQuery, RecursionDesired: true, CheckingDisabled: cd},
		Question: []dns.Question{q},
	}
	m.SetEdns0(UDPBufSize, do)

	attempts := make([]Attempt, len(ups))
	for i, u := range ups {
		attempts[i].Upstream = u
	}
	for i, u := range ups {
		deadline, _ := ctx.Deadline()
		share := time.Until(deadline) / time.Duration(len(ups)-i)
		if share <= 0 {
			break
		}
		actx, cancel := context.WithTimeout(ctx, share)
		a, err := r.exchange(actx, m, u)
		cancel()
		if err == nil && a.Rcode != dns.RcodeSuccess && a.Rcode != dns.RcodeNameError {
			err = &RcodeError{Upstream: u, Rcode: a.Rcode}
		}
		if err != nil {
			attempts[i].Err = err
			continue
		}
		if i > 0 {
			// Remember who answered: the next query starts there.
			r.preferred.Store(&ups[i])
		}
		return a, nil
	}
	return nil, &UpstreamError{Timeout: timeout, Attempts: attempts}
}

// Upstream UDP sockets are kept and reused, one query at a time each (as
// CoreDNS's forward plugin does): dialling a socket per query cost half the
// uncached throughput. A socket is connected, so it only accepts packets
// from its upstream; it is closed after any failure (so a late answer never
// meets the next query), after maxConnUses queries, or when idle for
// maxConnIdle, which keeps source ports changing.
const (
	maxIdleConns = 256 // per upstream
	maxConnUses  = 500
	maxConnIdle  = 5 * time.Second
)

type pooledConn struct {
	*dns.Conn
	uses int
	idle time.Time // when it was put back
}

// connPool holds idle UDP sockets by upstream address.
type connPool struct {
	mu   sync.Mutex
	idle map[string][]*pooledConn
}

func (p *connPool) get(ctx context.Context, upstream string) (*pooledConn, error) {
	now := time.Now()
	p.mu.Lock()
	for {
		list := p.idle[upstream]
		if len(list) == 0 {
			break
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[upstream] = list[:len(list)-1]
		if now.Sub(c.idle) < maxConnIdle {
			p.mu.Unlock()
			return c, nil
		}
		c.Close()
	}
	p.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", upstream)
	if err != nil {
		return nil, err
	}
	return &pooledConn{Conn: &dns.Conn{Conn: nc, UDPSize: UDPBufSize}}, nil
}

// put returns a socket after a successful exchange.
func (p *connPool) put(upstream string, c *pooledConn) {
	c.uses++
	if c.uses >= maxConnUses {
		c.Close()
		return
	}
	c.idle = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = make(map[string][]*pooledConn)
	}
	if len(p.idle[upstream]) >= maxIdleConns {
		c.Close()
		return
	}
	p.idle[upstream] = append(p.idle[upstream], c)
}

// closeAll closes the idle sockets (Shutdown).
func (p *connPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.idle {
		for _, c := range list {
			c.Close()
		}
	}
	p.idle = nil
}

// exchange asks one upstream over UDP, then over TCP if the answer was
// truncated, and checks that the answer is for the question asked.
func (r *Resolver) exchange(ctx context.Context, m *dns.Msg, upstream string) (*dns.Msg, error) {
	m.Id = dns.Id()
	c, err := r.conns.get(ctx, upstream)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", upstream, err)
	}
	var cl dns.Client
	if d, ok := ctx.Deadline(); ok {
		cl.Timeout = time.Until(d) // else miekg/dns's 2s default applies
	}
	a, _, err := cl.ExchangeWithConnContext(ctx, m, c.Conn)
	if err == nil {
		err = checkAnswer(m, a)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ask %s: %w", upstream, err)
	}
	r.conns.put(upstream, c)
	if a.Truncated {
		tc := dns.Client{Net: "tcp"}
		if d, ok := ctx.Deadline(); ok {
			tc.Timeout = time.Until(d)
		}
		a, _, err = tc.ExchangeContext(ctx, m, upstream)
		if err == nil {
			err = checkAnswer(m, a)
		}
		if err != nil {
			return nil, fmt.Errorf("ask %s over tcp: %w", upstream, err)
		}
	}
	return a, nil
}

// errMismatch is an upstream answer that does not match the query.
var errMismatch = errors.New("answer does not match the question")

// checkAnswer rejects an answer for another question (miekg/dns checks the
// id only).
func checkAnswer(q, r *dns.Msg) error {
	if !r.Response || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return errMismatch
	}
	a, b := q.Question[0], r.Question[0]
	if a.Qtype != b.Qtype || a.Qclass != b.Qclass || !strings.EqualFold(a.Name, b.Name) {
		return fmt.Errorf("%w: asked %s %s, got %s %s", errMismatch, a.Name, TypeString(a.Qtype), b.Name, TypeString(b.Qtype))
	}
	return nil
}

// TypeString is a query type's name, or TYPEnnn (RFC 3597).
func TypeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}
