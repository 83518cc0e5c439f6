// Package transparent is egress's transparent TCP listener: it accepts
// connections that nftables or iptables redirected to it (REDIRECT or
// DNAT), recovers each one's original destination (SO_ORIGINAL_DST), reads
// the first bytes for a name (a TLS ClientHello's SNI, an HTTP Host
// header), decides, dials the original address through the checking
// dialer and hands both connections to proxy/tunnel, which copies bytes
// both ways with splice(2).
//
// A name is trusted only when the original address belongs to it: egress's
// DNS returned that address for it to this client, or resolving it now
// yields it. Otherwise a client could name an allowed host while connecting
// to a denied address (SNI spoofing). With no name (a server-speaks-first
// protocol such as MySQL or SMTP, or a client-first one whose first bytes
// are neither TLS nor HTTP, such as PostgreSQL's SSLRequest) the decision
// is on the address, and on the names egress's DNS returned it for.
//
// It does not set up the redirect (see sandbox and docs/transparent.md),
// terminate TLS (proxy/intercept does, for rules with request rules), or
// speak any protocol: denied connections are reset. The exception is a
// connection whose first bytes are HTTP/1, gated for its life: a request
// refused on it once it was let through is answered with egress's 403.
package transparent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/accept"
	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/peek"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// Defaults used when neither the Server nor the policy sets a value.
const (
	DefaultPeekTimeout = 300 * time.Millisecond
	DefaultMaxTunnels  = tunnel.DefaultMaxTunnels
	DefaultDrain       = 30 * time.Second
)

// Server serves redirected connections. Only Policy is required. Safe for
// concurrent use; serve any number of listeners.
type Server struct {
	// Policy returns the current policy, read once per connection.
	Policy func() *policy.Policy
	// Dialer dials the original destinations. Nil means a Dialer with
	// Policy, Resolver and no loop guard (the redirect rules must exempt
	// egress's own traffic; a connection straight to the listener is
	// refused with policy.ReasonNotRedirected).
	Dialer *dialer.Dialer
	// Resolver checks that a name from SNI or Host resolves to the
	// original address when Names does not know it. Nil means the Dialer's,
	// or net.DefaultResolver.
	Resolver dialer.Resolver
	// Names is what egress's DNS answered each client; nil knows nothing.
	Names names.Lookup
	// PeekTimeout bounds the wait for a client's first bytes. A client
	// of a server-speaks-first protocol sends nothing, so this is the
	// delay such connections pay. Zero means DefaultPeekTimeout.
	PeekTimeout time.Duration
	// OriginalDst recovers the destination before NAT. Nil means
	// OriginalDst (SO_ORIGINAL_DST); tests and TPROXY setups replace it.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
	// Events records one entry per connection (at close for allowed
	// ones); nil records nothing.
	Events *eventlog.Sink
	// Logger receives what is not a canonical line: panics, accept errors.
	Logger zerolog.Logger
	// Intercept serves the destinations whose rules have http: request
	// rules, over TLS. Nil means a Server without a CA, which refuses
	// them (fail closed).
	Intercept *intercept.Server
	// Tunnels is the set the connections join, from accept on (a
	// connection being decided holds a slot of limits.max_tunnels): share
	// one with the other data paths of the process. Nil means a set of
	// this Server's own.
	Tunnels *tunnel.Set
	// Held, when set, holds the upstreams Prepare dialled while their
	// client's SYN was held (egress run's connect fidelity, issue 21);
	// a connection that finds one uses it (see held.go). Nil: every
	// connection is dialled after its name is read.
	Held *Held

	initOnce sync.Once
	dial     *dialer.Dialer
	tunnels  *tunnel.Group
	// accepted counts the connections being accepted, or accepted and
	// not yet holding a tunnel slot: Shutdown waits for them too, or a
	// connection made just before it would be served after it returned.
	accepted accept.InFlight

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	shutdown  bool
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("transparent: server closed")

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.dial = s.Dialer
		if s.dial == nil {
			s.dial = &dialer.Dialer{Policy: s.Policy, Resolver: s.Resolver}
		}
		s.listeners = map[net.Listener]struct{}{}
		s.tunnels = &tunnel.Group{Set: s.Tunnels, Events: s.Events, Logger: s.Logger}
	})
}

// Serve accepts redirected connections on l until Shutdown; l's
// connections must be *net.TCPConn (or OriginalDst must handle them).
// After Shutdown it closes l and returns ErrServerClosed at once.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		// Clients are refused rather than left in the backlog of a
		// socket nobody accepts on.
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	err := accept.Loop(l, &s.accepted, s.Logger, "transparent", func(c net.Conn) {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			s.accepted.Done()
			c.Close()
			return
		}
		s.handle(tc)
	})
	s.mu.Lock()
	down := s.shutdown
	s.mu.Unlock()
	if down {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting and waits for open connections to finish until
// ctx is done; then it closes the rest, and any still being set up, and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.shutdown = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()
	s.accepted.Wait(ctx)
	return s.tunnels.Drain(ctx)
}

// Open is the number of connections being decided or tunnelled.
func (s *Server) Open() int {
	s.init()
	return s.tunnels.Open()
}

// conn is one redirected connection, from accept until it is a tunnel or
// refused.
type conn struct {
	s      *Server
	client *net.TCPConn
	entry  eventlog.Entry
	start  time.Time
}

// handle is the whole story of one connection: original destination,
// peek, decide, dial, copy, log.
func (s *Server) handle(cc *net.TCPConn) {
	c := &conn{s: s, client: cc, start: time.Now()}
	c.entry = eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoTCP}
	if ap, err := netip.ParseAddrPort(cc.RemoteAddr().String()); err == nil {
		c.entry.Client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	var up net.Conn
	defer func() {
		if v := recover(); v != nil {
			s.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
				Str(eventlog.FieldID, c.entry.ID).Msg("panic in transparent connection; connection closed")
			c.reset()
			if up != nil {
				up.Close()
			}
		}
	}()

	pol := s.Policy()
	n := tunnel.MaxTunnels(pol)
	t, err := s.tunnels.Acquire(n)
	s.accepted.Done()
	if err != nil {
		s.Logger.Warn().Str(eventlog.FieldClient, c.entry.Client.String()).Int("max_tunnels", n).Err(err).
			Msg("transparent: connection reset")
		c.reset()
		return
	}
	defer t.Release() // unless Start took the slot over
	origDst := s.OriginalDst
	if origDst == nil {
		origDst = OriginalDst
	}
	local, _ := netip.ParseAddrPort(cc.LocalAddr().String())
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	dst, err := origDst(cc)
	if err != nil {
		// No NAT entry: the client connected straight to this port. One
		// canonical line, like every refusal, naming the listener.
		c.entry.Err = err
		dst = local
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst == local {
		c.deny(policy.Decision{
			Reason: policy.ReasonNotRedirected, IP: dst.Addr(), Port: dst.Port(), Source: pol.Source,
			Hint: "connect to the real destination; this port only serves connections redirected to it",
		})
		return
	}

	peekTimeout := s.PeekTimeout
	if peekTimeout <= 0 {
		peekTimeout = DefaultPeekTimeout
	}
	client := c.entry.Client.Addr()
	// The client's first bytes, waited for PeekTimeout, or until an
	// upstream already connected for it (a held SYN) speaks first. A read
	// error (the client closed or reset while we peeked, as a port check
	// does) is not a reason to stop: the upstream sees the same open and
	// close, and the copy ends at once. What they begin is read whole
	// (classify) and decided on before the dial. A client that sent
	// nothing yet is decided on the address and dialled, then waited for
	// with its origin (tunnel.FirstMove, as on CONNECT): its first bytes,
	// when they come, are read and decided on as a prompt client's are.
	held := s.takeHeld(c.entry.Client, dst)
	closeHeld := func() {
		if held != nil {
			held.Close()
		}
	}
	var waitOn net.Conn = cc
	stopWait := func() {}
	if held != nil {
		waitOn, stopWait = whileUpstreamSilent(cc, held)
	}
	firstBytes := readFirstBytes(waitOn, peekTimeout)
	stopWait()
	var op opening
	if len(firstBytes) > 0 {
		var refused *policy.Decision
		if op, refused = s.classify(pol, cc, firstBytes, dst, client, peekTimeout); refused != nil {
			closeHeld()
			c.deny(*refused)
			return
		}
	}

	req, dec, ok := s.decide(pol, op.name, dst, client)
	if !ok {
		closeHeld()
		c.deny(dec)
		return
	}
	var ddec policy.Decision
	if held != nil {
		up, ddec, err = s.useConnected(pol, req, held)
	} else {
		// The dial gives up when the drain deadline passes.
		up, ddec, err = s.dial.Dial(s.tunnels.Context(), "tcp", req)
	}
	if err != nil {
		var de *dialer.DeniedError
		if errors.As(err, &de) {
			c.deny(de.Decision)
			return
		}
		c.fail(ddec, err)
		return
	}
	if !dec.Audit {
		// An audit pass of the name check stays the recorded decision.
		dec = ddec
	}
	c.entry.Decision = dec
	if len(firstBytes) == 0 {
		// Whoever speaks first, bounded by timeouts.tunnel_idle and the
		// drain: an origin that greets (SMTP, MySQL) is not delayed, and
		// the client's later bytes are inspected in the tunnel
		// (lateInspect); a client that speaks first is read and decided
		// on exactly as if its bytes had come in time, before any goes up.
		t.Entry = c.entry
		t.RecordAudit() // when it opens, not when the first byte comes
		head, down, err := tunnel.FirstMove(s.tunnels.Context(), cc, up, pol.Timeouts.TunnelIdle)
		if len(down) > 0 {
			m, werr := cc.Write(down)
			t.Down = int64(m)
			if werr != nil && err == nil {
				err = fmt.Errorf("write first bytes: %w", werr)
			}
		}
		if err != nil { // idle, the drain, or the client gone
			up.Close()
			c.fail(dec, err)
			return
		}
		if len(head) > 0 {
			// Read and decided on the policy in force now, as a request
			// on a gated connection is: a reload while the connection
			// waited applies to it (it is no open tunnel yet for
			// reload.revoke_open), its address included.
			pol = s.Policy()
			var refused *policy.Decision
			if op, refused = s.classify(pol, cc, head, dst, client, peekTimeout); refused != nil {
				up.Close()
				c.deny(*refused)
				return
			}
			// The name decided as before a dial (or, with none, the
			// address), then the upstream, connected to its address
			// already, as the dialer would.
			nreq, ndec, ok := s.decide(pol, op.name, dst, client)
			if !ok {
				up.Close()
				c.deny(ndec)
				return
			}
			if _, ddec, err = s.useConnected(pol, nreq, up); err != nil {
				c.deny(ddec)
				return
			}
			if !ndec.Audit {
				ndec = ddec
			}
			req, dec = nreq, ndec
			c.entry.Decision = dec
		}
	}
	if dec.Intercept && op.requests == nil {
		// Request rules (issue 20) over TLS; the slot is held until it
		// ends. Plain HTTP goes through the gate below.
		s.intercept(c, t, req, dec, ddec, op.head, up)
		return
	}
	var cside net.Conn = cc
	var gate *origin.Gate
	if op.requests != nil {
		// Plain HTTP: gated for the connection's whole life, whatever
		// its first request said; every later request is decided on its
		// own Host, as the forward proxy does, on the policy in force
		// when it comes, and the gate is left only when the origin
		// switched protocols. A refused one gets egress's 403 after the
		// answers to the requests before it, and ends the connection.
		name := op.name
		decideRequest := func(r *http.Request) *policy.Decision { return s.requestHost(name, r, dst, client) }
		if dec.Intercept {
			// Request rules (issue 20): each request is decided on its
			// method and path too, this first one included; the first,
			// refused, is answered as a later one is.
			dec.IP = ddec.IP
			if d := requestRule(pol, req, dec, op.first); d != nil {
				up.Close()
				c.refuseRequest(op.first, intercept.RefusedURL(dec, dst.Port(), op.first, *d), *d)
				return
			}
			decideRequest = func(r *http.Request) *policy.Decision { return requestRule(s.Policy(), req, dec, r) }
		}
		allow := func(r *http.Request) ([]byte, bool) {
			d := decideRequest(r)
			if d == nil {
				return nil, true
			}
			url := intercept.RefusedURL(dec, dst.Port(), r, *d)
			t.RefusedRequest(*d, r.Method, url)
			return answer.RefusedRequest(c.entry.ID, url, r, *d), false
		}
		// A later request that cannot be read gets egress's 400 in turn,
		// and the line is its refusal, as a first one's is.
		refuseUnreadable := func(err error) { t.RefusedRequest(unreadable(s.Policy(), dst, err), "", "") }
		gate = origin.NewGate(cc, up, origin.GateConfig{
			Requests: op.requests, First: op.first, Fail: t.Fail, Allow: allow, Unreadable: refuseUnreadable, ID: c.entry.ID,
		})
		cside, up = gate.Client, gate.Upstream
	}
	if op.guard {
		cside = peek.GuardFirstLine(cc, op.head, func(err error) { t.Refuse(unreadable(pol, dst, err)) })
	}
	if len(op.head) > 0 {
		if _, err := up.Write(op.head); err != nil {
			up.Close()
			c.fail(dec, fmt.Errorf("replay first bytes: %w", err))
			return
		}
	}
	if len(op.head) == 0 && op.requests == nil {
		// Nothing from the client yet, and an origin that spoke first.
		t.InspectLate(s.lateInspect(dst, client), func(err error) policy.Decision { return unreadable(pol, dst, err) })
	}
	t.Entry, t.Began, t.Idle, t.HalfClose, t.Up = c.entry, c.start, pol.Timeouts.TunnelIdle, pol.Timeouts.HalfClose, int64(len(op.head))
	t.Request = req
	t.Request.IP = ddec.IP
	t.Start(cside, up)
	if gate != nil {
		gate.Start() // after the tunnel: a refusal closes it
	}
}

// opening is what a client's first bytes begin, read by classify.
type opening struct {
	name     string              // the name they carry (SNI, Host); "" for none, or an address
	head     []byte              // bytes read and not yet sent up
	requests *peek.RequestReader // HTTP/1: the connection's requests, read by net/http's reader
	first    *http.Request       // HTTP/1: the first of them, read already
	guard    bool                // a first line that could still become an HTTP request line
}

// classify reads whole what b, a client's first bytes, begin: the one
// reading of a connection's start, whether its bytes came within
// PeekTimeout or later (issue 18: a late client gets no more than a
// prompt one). A TLS ClientHello is read whole within
// tunnel.DefaultInspectTimeout from its first byte (peek.ReadFirst), or
// refused; an HTTP/1 request by net/http's reader within timeouts.header,
// or refused, and the connection is gated for its whole life; the HTTP/2
// preface only where the address itself is allowed; a first line that
// may still become an HTTP request line after wait is guarded
// (peek.GuardFirstLine); anything else is copied as it is. It returns
// the refusal, or what the bytes name, for the caller to decide on.
func (s *Server) classify(pol *policy.Policy, cc net.Conn, b []byte, dst netip.AddrPort, client netip.Addr, wait time.Duration) (opening, *policy.Decision) {
	var op opening
	source := peek.SourceNone
	if peek.TLS(b) {
		f := peek.ReadFirst(cc, b, tunnel.DefaultInspectTimeout)
		if d := f.Refusal(pol, policy.Decision{IP: dst.Addr(), Port: dst.Port(), Source: pol.Source}); d != nil {
			return op, d
		}
		op.name, op.head, source = f.Hello.Name, f.Bytes, peek.SourceSNI
	} else {
		op.name, source, op.head, _ = peek.More(cc, b, wait)
	}
	_, _, lineDone := peek.From(op.head)
	switch {
	case source == peek.SourceHTTP && !lineDone && len(op.head) < 16<<10:
		// The first line could still become an HTTP request line, but
		// did not in time: decided on the address, and watched until
		// that line ends (peek.GuardFirstLine).
		op.guard = true
	case source == peek.SourceHTTP:
		// HTTP/1: every request of the connection, this one included,
		// is read by net/http's reader and decided on what it names;
		// one that cannot be read is refused.
		op.requests = peek.NewRequestReader(op.head, cc, pol.Limits.MaxHeaderBytes)
		cc.SetReadDeadline(time.Now().Add(headerTimeout(pol)))
		first, err := op.requests.Read()
		cc.SetReadDeadline(time.Time{})
		if err != nil {
			d := unreadable(pol, dst, err)
			return op, &d
		}
		op.first, op.name, op.head = first, peek.RequestHost(first), nil
	case source == peek.SourceHTTP2:
		// h2c with prior knowledge: its requests are HTTP/2 frames no
		// HTTP/1 reader reads, so it goes through only where the
		// address itself is allowed, whatever it names.
		if d := pol.Decide(policy.Request{IP: dst.Addr(), Port: dst.Port(), Client: client}); !d.Allowed() {
			return op, &policy.Decision{Reason: policy.ReasonHTTP2Preface, IP: dst.Addr(), Port: dst.Port(), Source: pol.Source,
				Hint: "HTTP/2 with prior knowledge (h2c) names its host in frames egress does not read: allow the address (cidr:) or use HTTP/1.1 or TLS"}
		}
	}
	if _, err := netip.ParseAddr(op.name); err == nil {
		// An IP literal in Host (SNI may not carry one, RFC 6066 §3)
		// names nothing more than the address does.
		op.name = ""
	}
	return op, nil
}

// requestHost decides a later request r of a plain-HTTP connection to
// dst, whose first request named first ("" for none, or an address), on
// the policy in force: the same name passes, another one only if the
// policy allows that name itself on this address (not through the
// address's other names). It returns the refusal, or nil.
func (s *Server) requestHost(first string, r *http.Request, dst netip.AddrPort, client netip.Addr) *policy.Decision {
	host := peek.RequestHost(r)
	if _, err := netip.ParseAddr(host); err == nil {
		host = ""
	}
	norm := func(n string) (string, error) {
		if n == "" {
			return "", nil
		}
		h, _, err := policy.NormalizeHost(n)
		return h, err
	}
	h, err := norm(host)
	if f, ferr := norm(first); err == nil && ferr == nil && h == f {
		return nil
	}
	rq, d, ok := s.decide(s.Policy(), host, dst, client)
	if ok && err == nil && (rq.Host == host || rq.Host == h) {
		return nil
	}
	if d.Allowed() {
		d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonNameMismatch
		d.Host, d.IP = h, dst.Addr()
		d.Hint = fmt.Sprintf("a request on a connection to %s names %s, which is not an address of it", dst.Addr(), h)
		if h == "" {
			d.Hint = fmt.Sprintf("a request on a connection to %s names no host, and the address alone is not allowed", dst.Addr())
		}
	}
	return &d
}

// unreadable is the refusal of a connection whose first bytes started an
// HTTP/1 request that net/http's reader could not read.
func unreadable(pol *policy.Policy, dst netip.AddrPort, err error) policy.Decision {
	return policy.Decision{Reason: policy.ReasonHTTPUnreadable, IP: dst.Addr(), Port: dst.Port(), Source: pol.Source,
		Hint: fmt.Sprintf("egress decides only on requests it can read, and could not read this one: %v", err)}
}

// headerTimeout is timeouts.header: the time a client has to send a
// whole request head.
func headerTimeout(pol *policy.Policy) time.Duration {
	if pol.Timeouts.Header > 0 {
		return pol.Timeouts.Header
	}
	return 10 * time.Second
}

// readFirstBytes returns what the client sent within timeout: nothing
// from a client that waits for the server to speak first.
func readFirstBytes(cc net.Conn, timeout time.Duration) []byte {
	if cc.SetReadDeadline(time.Now().Add(timeout)) != nil {
		return nil
	}
	defer cc.SetReadDeadline(time.Time{})
	b := make([]byte, 2048)
	n, _ := cc.Read(b)
	return b[:n]
}

// lateInspect decides on the first bytes of a client whose origin spoke
// first (a server-speaks-first protocol: SMTP, MySQL), on a connection
// let through on its address (dst): whenever they come, before any goes
// up, a TLS ClientHello (a client that starts TLS after the greeting) is
// read whole and its name decided on as if it had come first. An HTTP
// request line is refused by the guard tunnel.InspectLate puts around it.
func (s *Server) lateInspect(dst netip.AddrPort, client netip.Addr) func(peek.First) *policy.Decision {
	return func(f peek.First) *policy.Decision {
		pol := s.Policy()
		if d := f.Refusal(pol, policy.Decision{IP: dst.Addr(), Port: dst.Port(), Source: pol.Source}); d != nil {
			return d
		}
		name := f.Hello.Name
		if _, err := netip.ParseAddr(name); err == nil || name == "" {
			return nil
		}
		if _, d, ok := s.decide(pol, name, dst, client); !ok {
			return &d
		}
		return nil
	}
}

// decide picks the request to dial, or the denial.
//
// A name from SNI or Host is decided on first: a denial is final (the
// client asked for a denied name). If it is allowed, it counts only when
// the original address belongs to it; otherwise the client may be lying
// (SNI spoofing) and the connection is decided as if it had named
// nothing, its denial reported as a name mismatch.
//
// Without a trusted name the address is decided on, then the names
// egress's DNS returned it for to this client.
func (s *Server) decide(pol *policy.Policy, name string, dst netip.AddrPort, client netip.Addr) (policy.Request, policy.Decision, bool) {
	req := policy.Request{IP: dst.Addr(), Port: dst.Port(), Client: client}
	var mismatch *policy.Decision
	if name != "" {
		d := pol.Decide(policy.Request{Host: name, Port: dst.Port(), Client: client})
		if !d.Allowed() {
			d.IP = dst.Addr()
			return req, d, false
		}
		if d.Host == "" || s.belongs(d.Host, dst.Addr(), client) {
			req.Host = name
			return req, policy.Decision{}, true
		}
		d.Verdict, d.Audit, d.Rule = policy.Deny, false, nil
		d.Reason = policy.ReasonNameMismatch
		d.IP = dst.Addr()
		d.Hint = fmt.Sprintf("the connection names %s (TLS SNI or HTTP Host) but goes to %s, which is not an address of %s", d.Host, dst.Addr(), d.Host)
		if pol.Mode == policy.Audit {
			d.Verdict, d.Audit = policy.Allow, true
		}
		mismatch = &d
	}

	d := pol.Decide(req)
	if d.Allowed() && !d.Audit {
		return req, d, true
	}
	if s.Names != nil {
		var first *policy.Decision
		for _, n := range s.Names.Names(client, dst.Addr()) {
			r := req
			r.Host = n
			nd := pol.Decide(r)
			if nd.Allowed() && !nd.Audit {
				return r, nd, true
			}
			if first == nil {
				first = &nd
			}
		}
		if first != nil && !d.Allowed() && mismatch == nil {
			// The name's hint ("- {host: db.example.com, ports: [5432]}")
			// is what a person wants to paste, not the address's.
			d = *first
		}
	}
	if mismatch != nil {
		return req, *mismatch, mismatch.Allowed()
	}
	return req, d, d.Allowed()
}

// DecideConnect decides on a connection known only by its client and
// original destination, as a filter in front of the listener sees it: the
// decision the listener makes for a connection that carries no name. A
// filter that refused a connection at connect() time (see
// policy.ConnectFilter) asks it why, to log the refusal like any other.
func (s *Server) DecideConnect(client netip.Addr, dst netip.AddrPort) policy.Decision {
	s.init()
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	_, d, _ := s.decide(s.Policy(), "", dst, client.Unmap())
	return d
}

// belongs reports whether ip is an address of name: egress's DNS gave it
// to this client for name, or name resolves to it now.
func (s *Server) belongs(name string, ip netip.Addr, client netip.Addr) bool {
	if s.Names != nil && slices.Contains(s.Names.Names(client, ip), name) {
		return true
	}
	r := s.Resolver
	if r == nil && s.dial.Resolver != nil {
		r = s.dial.Resolver
	}
	if r == nil {
		r = net.DefaultResolver
	}
	timeout := s.dial.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ips, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return false
	}
	for _, a := range ips {
		if a.Unmap() == ip {
			return true
		}
	}
	return false
}

// deny records a denial and resets the client connection.
func (c *conn) deny(d policy.Decision) {
	c.entry.Decision = d
	c.reset()
	c.entry.Duration = time.Since(c.start)
	c.s.Events.Record(c.entry)
}

// refuseRequest records the refusal d of r, the first request of a
// plain-HTTP connection allowed on its destination (a request rule
// refused it), and answers it with egress's 403, as a later request
// refused on the connection is answered: the connection is closed once
// the client has had the time to read it.
func (c *conn) refuseRequest(r *http.Request, url string, d policy.Decision) {
	c.entry.Decision = d
	c.entry.Method, c.entry.URL = r.Method, url
	answer.Send(c.client, answer.RefusedRequest(c.entry.ID, url, r, d))
	c.entry.Duration = time.Since(c.start)
	c.s.Events.Record(c.entry)
}

// fail records an allowed connection that could not be forwarded (dial
// error, client gone) and resets the client.
func (c *conn) fail(d policy.Decision, err error) {
	c.entry.Decision = d
	c.entry.Err = err
	c.reset()
	c.entry.Duration = time.Since(c.start)
	c.s.Events.Record(c.entry)
}

// reset closes the client connection with an RST, so that the client sees
// "connection reset" at once instead of an orderly (and ambiguous) EOF.
func (c *conn) reset() {
	c.client.SetLinger(0)
	c.client.Close()
}
