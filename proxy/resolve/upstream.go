package resolve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/policy"
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
		var err error
		if list, err = r.resolvConf(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoUpstream, err)
		}
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

// resolvConf returns the nameservers of ResolvConf, read once.
func (r *Resolver) resolvConf() ([]string, error) {
	r.resolvOnce.Do(func() {
		path := r.ResolvConf
		if path == "" {
			path = DefaultResolvConf
		}
		r.resolv, r.resolvErr = ReadResolvConf(path)
	})
	return r.resolv, r.resolvErr
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

// exchange is one query on its way through the upstreams: asked of
// each in turn (forward), until one answers NOERROR or NXDOMAIN or the
// time is up. Its fields change hands with it: whoever takes it out of its
// socket's pending set (the answer, the expiry sweep, a socket error) moves it on.
type exchange struct {
	r        *Resolver
	q        dns.Question
	msg      *dns.Msg // the query; its id is set per attempt
	packed   []byte   // msg packed; the first attempt writes it
	key      cacheKey
	minTTL   time.Duration
	maxTTL   time.Duration
	ups      []string
	attempts []Attempt
	i        int           // the upstream asked now
	timeout  time.Duration // dns.timeout, for the error text
	deadline time.Time     // of the whole query
	until    time.Time     // of this attempt
	done     func(*dns.Msg, error)
}

// Forward asks the upstreams of cfg for q, without looking in the cache,
// and caches the answer; done gets the answer (shared with the cache: it
// must not be modified) or the error, as Exchange returns them. done is
// called once, on another goroutine or, when no upstream can be asked,
// before Forward returns; it must not block for long (it delays the
// other answers read from the same upstream socket).
func (r *Resolver) Forward(cfg policy.DNS, q dns.Question, do, cd bool, done func(*dns.Msg, error)) {
	r.forward(cfg, q, do, cd, time.Time{}, done)
}

// forward is Forward within deadline too, if it is set.
func (r *Resolver) forward(cfg policy.DNS, q dns.Question, do, cd bool, deadline time.Time, done func(*dns.Msg, error)) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ups, err := r.upstreams(cfg.Upstreams)
	if err != nil {
		done(nil, err)
		return
	}
	if d := time.Now().Add(timeout); deadline.IsZero() || d.Before(deadline) {
		deadline = d
	}
	m := &dns.Msg{
		MsgHdr:   dns.MsgHdr{Opcode: dns.OpcodeQuery, RecursionDesired: true, CheckingDisabled: cd},
		Question: []dns.Question{q},
	}
	m.SetEdns0(UDPBufSize, do)
	packed, err := m.Pack()
	if err != nil {
		done(nil, fmt.Errorf("ask %s: %w", q.Name, err))
		return
	}
	x := &exchange{
		r: r, q: q, msg: m, packed: packed, key: keyOf(q, do, cd), minTTL: cfg.MinTTL, maxTTL: cfg.MaxTTL,
		ups: ups, attempts: make([]Attempt, len(ups)), timeout: timeout, deadline: deadline, done: done,
	}
	for i, u := range ups {
		x.attempts[i].Upstream = u
	}
	x.next()
}

// next asks the upstream x.i, or the ones after it if it cannot be
// asked. Each attempt gets an equal share of what is left of the query's
// time, so one silent upstream cannot use up the time of the others; a
// refused connection or an error rcode moves on at once.
func (x *exchange) next() {
	for ; x.i < len(x.ups); x.i++ {
		share := time.Until(x.deadline) / time.Duration(len(x.ups)-x.i)
		if share <= 0 {
			break
		}
		x.until = time.Now().Add(share)
		err := x.send()
		if err == nil {
			return
		}
		x.attempts[x.i].Err = fmt.Errorf("ask %s: %w", x.ups[x.i], err)
	}
	x.done(nil, &UpstreamError{Timeout: x.timeout, Attempts: x.attempts})
}

// send writes the query on a socket to x's upstream. Once it is written,
// x belongs to that socket: send returns nil and touches x no more.
func (x *exchange) send() error {
	pkt := x.packed
	if x.i > 0 {
		pkt = slices.Clone(pkt) // an earlier attempt's write may be reading x.packed
	}
	for range 3 {
		s, err := x.r.sockets.socket(x.r, x.ups[x.i])
		if err != nil {
			return err
		}
		if !s.add(x, pkt) {
			continue // retired meanwhile
		}
		if _, err := s.conn.Write(pkt); err != nil {
			// An ICMP error (connection refused) reported on this write
			// concerns every query sent to the upstream.
			s.failAll(err)
		}
		return nil
	}
	return errSocketClosed
}

// failed moves x on to the next upstream after err from this one.
func (x *exchange) failed(err error) {
	x.attempts[x.i].Err = fmt.Errorf("ask %s: %w", x.ups[x.i], err)
	x.i++
	x.next()
}

// answered finishes x with the upstream's answer a: asked again over TCP
// if it was truncated, else checked and returned.
func (x *exchange) answered(a *dns.Msg) {
	if a.Truncated {
		go x.overTCP()
		return
	}
	x.result(a)
}

// overTCP asks the upstream that sent a truncated answer again over TCP,
// within the attempt's time.
func (x *exchange) overTCP() {
	u := x.ups[x.i]
	ctx, cancel := context.WithDeadline(context.Background(), x.until)
	defer cancel()
	x.msg.Id = uint16(rand.Uint32())
	tc := dns.Client{Net: "tcp", Timeout: max(time.Until(x.until), time.Millisecond)}
	a, _, err := tc.ExchangeContext(ctx, x.msg, u)
	if err == nil {
		err = checkAnswer(x.msg, a)
	}
	if err != nil {
		x.attempts[x.i].Err = fmt.Errorf("ask %s over tcp: %w", u, err)
		x.i++
		x.next()
		return
	}
	x.result(a)
}

// result finishes x with a, or moves on if a is an error rcode.
func (x *exchange) result(a *dns.Msg) {
	u := x.ups[x.i]
	if a.Rcode != dns.RcodeSuccess && a.Rcode != dns.RcodeNameError {
		x.attempts[x.i].Err = &RcodeError{Upstream: u, Rcode: a.Rcode}
		x.i++
		x.next()
		return
	}
	if x.i > 0 {
		// Remember who answered: the next query starts there.
		x.r.preferred.Store(&x.ups[x.i])
	}
	// The upstream's OPT record (its buffer size, cookies, NSID) is
	// between it and egress; a client gets egress's own.
	if len(a.Extra) > 0 {
		extra := a.Extra[:0:0]
		for _, rr := range a.Extra {
			if rr.Header().Rrtype != dns.TypeOPT {
				extra = append(extra, rr)
			}
		}
		a.Extra = extra
	}
	x.r.cache.put(x.key, a, x.r.now(), x.minTTL, x.maxTTL)
	x.done(a, nil)
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
