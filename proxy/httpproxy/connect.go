package httpproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/peek"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// serveConnect handles a CONNECT that reached the handler: one on a
// kept-alive connection after another request, or on a Server other than
// Serve's. The first request of a connection Serve accepted is answered
// before net/http (listener.go). Either way the connection is taken from
// net/http first and the tunnel set up by connect.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	cc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 has no connection of its own to tunnel on.
		failureFor(eventlog.NewID(), r.Host, policy.Decision{}, fmt.Errorf("%w: CONNECT needs an HTTP/1 connection", errBadRequest)).write(w, true)
		return
	}
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
	}
	// The dial stops when the request's context ends or the drain
	// deadline passes.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(p.tunnels.Context(), cancel)
	defer stop()
	p.connect(ctx, cc, early, r)
}

// connect handles CONNECT host:port (HTTP/1.1 or HTTP/1.0) on cc, the
// client's connection, r being the request read from it and early the
// bytes read behind it; ctx bounds the dial.
//
// Every refusal is an answer the client can read (403 with X-Egress-*
// headers and a body; 502, 503 and 504 told apart), the dial is the
// policy's (proxy/dialer, never a proxy from the environment), and once
// dialled the tunnel is proxy/tunnel's, like every other path's: counted,
// drained on shutdown, logged with its bytes. A CONNECT to an intercepted
// destination whose origin connection interception keeps idle is answered
// without a dial (intercept.Server.Pooled): interception sends its
// requests.
//
// Every answer but the 200 is written with the explanation in its status
// line (failure.sendConn), then the connection is closed after the client has
// had the time to read it.
func (p *Proxy) connect(ctx context.Context, cc net.Conn, early []byte, r *http.Request) {
	proto := answerProto(r)                // Python's urllib sends CONNECT ... HTTP/1.0
	host, port, err := splitTarget(r.Host) // for CONNECT, r.Host is the request target
	if err != nil {
		failureFor(eventlog.NewID(), r.Host, policy.Decision{}, fmt.Errorf("%w: CONNECT %v", errBadRequest, err)).sendConn(cc, proto, false)
		return
	}
	rq := p.newRequest(r, host, port)
	target := targetString(host, port)
	entry := eventlog.Entry{ID: rq.id, Proto: eventlog.ProtoConnect, Client: rq.client}
	reply := func(dec policy.Decision, err error) {
		failureFor(rq.id, target, dec, err).sendConn(cc, proto, false)
		entry.Decision = dec
		if dec.Allowed() { // audit mode too: a denial let through that then failed
			entry.Err = err
			entry.Duration = time.Since(rq.start)
		}
		p.Events.Record(entry)
	}

	pol := p.Policy()
	dec := pol.Decide(rq.req)
	if !dec.Allowed() {
		reply(dec, nil)
		return
	}
	// The slot counts while dialling; Start hands it to the tunnel, and
	// Release gives it back on every other way out, panics included.
	t, err := p.tunnels.Acquire(tunnel.MaxTunnels(pol))
	if err != nil {
		reply(dec, fmt.Errorf("%w: %w", errTooManyTunnels, err))
		return
	}
	defer t.Release()
	var up net.Conn
	var res dialer.Resolved
	if dec.Intercept {
		// Request rules (issue 20): each request goes on an origin
		// connection from interception's pool, and a dial here would go
		// unused when the pool has one for the destination. So decide
		// and resolve, and dial before the 200 only when it has none:
		// then a destination that cannot be reached is a 502 to the
		// CONNECT, as a tunnel's. Without a dial here, a request that
		// finds the pooled connection gone dials the addresses decided
		// here (res), no others.
		res, dec, err = p.dial.Resolve(ctx, "tcp", rq.req)
		if err == nil {
			if d, ok := p.intercept.Pooled(pol, res); ok {
				dec = d
			} else {
				up, dec, err = p.dial.DialResolved(ctx, res)
			}
		}
	} else {
		up, dec, err = p.dial.Dial(ctx, "tcp", rq.req)
	}
	if err != nil {
		reply(dec, err)
		return
	}
	entry.Decision = dec

	cc.SetDeadline(time.Time{}) // the header deadline must not cut the tunnel
	if _, err := io.WriteString(cc, proto+" 200 Connection established\r\n\r\n"); err != nil {
		p.endSetup(cc, up, entry, rq.start, 0, fmt.Errorf("write 200: %w", err))
		return
	}
	if dec.Intercept {
		// Request rules (issue 20): the client speaks first, in TLS or
		// in plain HTTP. TLS is terminated and each request decided
		// (proxy/intercept); plain HTTP goes through the gate below,
		// each request decided by intercept.DecidePlain; anything else
		// fails the handshake there (fail closed). The tunnel slot is
		// held until the connection ends; this goroutine returns, and
		// its stack goes away (issue 20: memory per idle intercepted
		// connection).
		if len(early) == 0 {
			var err error
			if early, err = firstBytes(cc, intercept.DefaultHandshakeTimeout); len(early) == 0 {
				p.endSetup(cc, up, entry, rq.start, 0, fmt.Errorf("read first bytes: %w", err))
				return
			}
		}
		if _, source, _ := peek.From(early); source != peek.SourceHTTP {
			p.intercept.Start(p.tunnels.Context(), intercept.Conn{Client: cc, Early: early, Upstream: up, Resolved: res, Request: rq.req, Decision: dec, ID: rq.id, ClientAddr: rq.client, Tunnel: t.Hand()}, nil)
			return
		}
		// Plain HTTP where TLS was expected (the pool held a TLS
		// connection, up is nil): dialled below once the first request
		// is decided, on the addresses decided here, so a refused one
		// opens no connection, and a failure is the answer to it.
	}
	head := early
	if len(head) == 0 {
		// Whoever speaks first: the client's first bytes are inspected
		// before any goes up (a ClientHello, an HTTP/1 request); an
		// origin that speaks first (SMTP, SSH) is not delayed.
		t.Entry = entry
		t.RecordAudit() // when it opens, not when the first byte comes
		var down []byte
		head, down, err = tunnel.FirstMove(p.tunnels.Context(), cc, up, pol.Timeouts.TunnelIdle)
		if len(down) > 0 {
			m, werr := cc.Write(down)
			t.Down = int64(m)
			if werr != nil {
				p.endSetup(cc, up, entry, rq.start, 0, fmt.Errorf("write first bytes: %w", werr))
				return
			}
		}
		if err != nil { // idle, or the drain
			p.endSetup(cc, up, entry, rq.start, 0, err)
			return
		}
		if len(head) > 0 {
			// The client's first bytes are decided on the policy in
			// force now, as a request on a gated connection is: a
			// reload while the tunnel waited applies to it (it is no
			// open tunnel yet for reload.revoke_open).
			var refused *policy.Decision
			if pol, refused = p.redecide(rq.req, dec); refused != nil {
				entry.Decision = *refused
				p.endSetup(cc, up, entry, rq.start, 0, nil)
				return
			}
		}
	} else {
		head = append([]byte(nil), early...)
	}
	var gate *origin.Gate
	var client net.Conn = cc
	unreadable := func(err error) policy.Decision {
		d := dec
		d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonHTTPUnreadable
		d.Hint = fmt.Sprintf("egress decides only on requests it can read: %v", err)
		return d
	}
	_, source, lineDone := peek.From(head)
	if source == peek.SourceHTTP && !lineDone && len(head) < 16<<10 {
		// What may become an HTTP request line but has not yet: sent
		// on, and watched until that line ends (peek.GuardFirstLine).
		_, _, head, _ = peek.More(cc, head, requestLineWait)
		_, source, lineDone = peek.From(head)
		if source == peek.SourceHTTP && !lineDone {
			if dec.Intercept {
				// What is not yet a request line is not decided by
				// method and path: refused below.
				source = peek.SourceNone
			} else {
				client = peek.GuardFirstLine(cc, head, func(err error) { t.Refuse(unreadable(err)) })
			}
			source = peek.SourceNone
		}
	}
	switch {
	case dec.Intercept && source != peek.SourceHTTP:
		// Request rules and bytes that turned out to be no HTTP/1
		// request (h2c's preface, say): nothing to decide them on.
		d := dec
		d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonRequestsUndecided
		d.Hint = "the rule has http: request rules: egress decides requests in TLS or HTTP/1, and this is neither"
		entry.Decision = d
		p.endSetup(cc, up, entry, rq.start, 0, nil)
		return
	case len(head) == 0:
		// The origin spoke first: the client's first bytes, whenever
		// they come, are decided in the tunnel before any goes up, as on
		// the transparent path, on the policy in force then (the tunnel
		// itself is re-decided on reload: reload.revoke_open).
		t.InspectLate(func(f peek.First) *policy.Decision { return sniCheck(p.Policy(), rq.req, dec)(f) }, unreadable)
	case source == peek.SourceHTTP:
		// Plaintext HTTP in the tunnel (a CONNECT to port 80): every
		// request, this first one included, is read with net/http's
		// reader and decided on its Host at the address dialled, as on
		// the transparent path; the first within the inspection time.
		requests := peek.NewRequestReader(head, cc, maxHeaderBytes(pol))
		cc.SetReadDeadline(time.Now().Add(tunnel.DefaultInspectTimeout))
		first, err := requests.Read()
		cc.SetReadDeadline(time.Time{})
		var refused *policy.Decision
		if err != nil {
			d := dec
			d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonHTTPUnreadable
			d.Hint = fmt.Sprintf("egress decides only on requests it can read, and could not read this one: %v", err)
			refused = &d
		} else if dec.Intercept {
			// Request rules (issue 20) on plain HTTP: Host, method
			// and path; never inject:. On the policy in force now, as
			// every later request.
			refused = intercept.DecidePlain(p.Policy(), rq.req, dec, first)
		} else {
			refused = hostCheck(p.Policy(), rq.req, dec, peek.RequestHost(first))
		}
		if refused == nil && up == nil {
			// The dial-free CONNECT above: dialled now that its first
			// request is allowed, and that request decided again if
			// the address dialled is another than the one decided.
			var d policy.Decision
			if up, d, err = p.dial.DialResolved(ctx, res); err != nil {
				reply(d, err)
				return
			}
			if d.IP != dec.IP {
				refused = intercept.DecidePlain(p.Policy(), rq.req, d, first)
			}
			dec, entry.Decision = d, d
		}
		if refused != nil {
			entry.Decision = *refused
			if up != nil {
				up.Close()
			}
			if err == nil {
				// Refused by the policy (a request rule, or a host not
				// allowed at the address dialled): the client reads
				// egress's 403 with the explanation, as on every other
				// path.
				entry.Method, entry.URL = first.Method, intercept.RefusedURL(dec, rq.req.Port, first, *refused)
				answer.Send(cc, answer.RefusedRequest(rq.id, entry.URL, first, *refused))
			} else {
				cc.Close()
			}
			entry.Duration = time.Since(rq.start)
			p.Events.Record(entry)
			return
		}
		// Every later request is decided on the policy in force when it
		// comes; one refused gets the same 403 as a first one, after the
		// answers to the requests before it, and ends the tunnel (the
		// line is its refusal).
		allow := func(r *http.Request) ([]byte, bool) {
			var d *policy.Decision
			if dec.Intercept {
				d = intercept.DecidePlain(p.Policy(), rq.req, dec, r)
			} else {
				d = hostCheck(p.Policy(), rq.req, dec, peek.RequestHost(r))
			}
			if d == nil {
				return nil, true
			}
			url := intercept.RefusedURL(dec, rq.req.Port, r, *d)
			t.RefusedRequest(*d, r.Method, url)
			return answer.RefusedRequest(rq.id, url, r, *d), false
		}
		// A later request that cannot be read gets egress's 400 in turn,
		// and the line is its refusal, as a first one's is.
		refuseUnreadable := func(err error) { t.RefusedRequest(unreadable(err), "", "") }
		gate = origin.NewGate(cc, up, origin.GateConfig{
			Requests: requests, First: first, Fail: t.Fail, Allow: allow, Unreadable: refuseUnreadable, ID: entry.ID,
		})
	case source == peek.SourceHTTP2 && !pol.Decide(policy.Request{IP: dec.IP, Port: rq.req.Port, Client: rq.req.Client, User: rq.req.User}).Allowed():
		// h2c with prior knowledge names its hosts in frames egress
		// does not read: only where the address itself is allowed.
		d := dec
		d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonHTTP2Preface
		d.Hint = fmt.Sprintf("the tunnel to %s carries HTTP/2 with prior knowledge, whose hosts egress does not read: allow the address (cidr:) or use HTTP/1.1 or TLS", target)
		entry.Decision = d
		cc.Close()
		up.Close()
		entry.Duration = time.Since(rq.start)
		p.Events.Record(entry)
		return
	default:
		// Checked here, whole, before a byte of it goes up: a TLS
		// ClientHello is read whole (peek.ReadFirst) or refused.
		f := peek.ReadFirst(cc, head, tunnel.DefaultInspectTimeout)
		head = f.Bytes
		if d := sniCheck(pol, rq.req, dec)(f); d != nil {
			entry.Decision = *d
			cc.Close()
			up.Close()
			entry.Duration = time.Since(rq.start)
			p.Events.Record(entry)
			return
		}
		m, err := up.Write(head)
		t.Up = int64(m)
		if err != nil {
			p.endSetup(cc, up, entry, rq.start, t.Up, fmt.Errorf("write early data: %w", err))
			return
		}
	}
	upstream := up
	if gate != nil {
		client, upstream = gate.Client, gate.Upstream
	}
	t.Entry, t.Began, t.Idle, t.HalfClose = entry, rq.start, pol.Timeouts.TunnelIdle, pol.Timeouts.HalfClose
	t.Request = rq.req
	t.Request.IP = dec.IP
	// This goroutine returns, and its stack goes away; an idle tunnel
	// waits on the poller.
	t.Start(client, upstream)
	if gate != nil {
		gate.Start() // after the tunnel: a refusal closes it
	}
}

// hostCheck decides a plaintext HTTP request inside a tunnel opened for
// req and allowed by dec: a host other than the tunnel's must be one the
// policy allows on the address dialled, or the request (and the tunnel)
// is refused. A request that names no host, or an address, is the
// tunnel's.
func hostCheck(pol *policy.Policy, req policy.Request, dec policy.Decision, host string) *policy.Decision {
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	n, _, err := policy.NormalizeHost(host)
	if err == nil && (n == dec.Host || n == req.Host) {
		return nil
	}
	d := pol.Decide(policy.Request{Host: host, IP: dec.IP, Port: req.Port, Client: req.Client, User: req.User})
	if d.Allowed() && err == nil {
		return nil
	}
	why := d.Reason
	d.Verdict, d.Audit, d.Reason = policy.Deny, false, policy.ReasonHostMismatch
	d.Hint = fmt.Sprintf("the tunnel to %s carries an HTTP request for %s, which the policy refuses there (%s)", targetString(req.Host, req.Port), host, why)
	return &d
}

// redecide decides req, a tunnel allowed by dec whose client's first
// bytes have just come, again on the policy in force now, and returns
// that policy, or the refusal: the new policy refuses the destination
// (its decision), or decides each request to it (http:) where the tunnel
// was opened as a plain one (policy.ReasonRevoked: the client's next
// CONNECT is intercepted). An audit pass is no refusal.
func (p *Proxy) redecide(req policy.Request, dec policy.Decision) (*policy.Policy, *policy.Decision) {
	pol := p.Policy()
	req.IP = dec.IP
	d := pol.Decide(req)
	switch {
	case !d.Allowed():
		return pol, &d
	case d.Intercept != dec.Intercept:
		d.Verdict, d.Audit, d.Reason = policy.Deny, false, policy.ReasonRevoked
		d.Hint = "the policy was reloaded while the tunnel waited for its first bytes, and now decides each request to it (http:): connect again"
		return pol, &d
	}
	return pol, nil
}

// firstBytes reads the client's first bytes of a tunnel, within timeout.
func firstBytes(c net.Conn, timeout time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, 2048)
	n, err := c.Read(b)
	return b[:n], err
}

// requestLineWait is how long the rest of a first line that may become an
// HTTP request line is waited for before the tunnel goes on guarded
// (peek.GuardFirstLine): a request line split across segments comes
// within it; a protocol that sends a word and waits pays it once.
const requestLineWait = 500 * time.Millisecond

// ReasonSNIMismatch is policy.ReasonSNIMismatch, under the name the
// other branches still use while they merge; new code uses policy's.
const ReasonSNIMismatch = policy.ReasonSNIMismatch

// sniCheck returns the check of a CONNECT tunnel's first bytes, opened
// for req and allowed by dec: a TLS handshake must give a ClientHello
// egress can read (policy.ReasonTLSUnreadable) without ECH unless the
// policy lets it through (policy.ReasonTLSECH), and a server name that is
// not the tunnel's must be a name the policy allows on the address
// dialled too, or the tunnel is refused (ReasonSNIMismatch; a name that
// is no host name included). A hello without a server name, and
// protocols that are not TLS, pass.
func sniCheck(pol *policy.Policy, req policy.Request, dec policy.Decision) func(peek.First) *policy.Decision {
	return func(f peek.First) *policy.Decision {
		if d := f.Refusal(pol, dec); d != nil {
			d.Hint = fmt.Sprintf("the tunnel to %s: %s", targetString(req.Host, req.Port), d.Hint)
			return d
		}
		name := f.Hello.Name
		if !f.TLS || name == "" {
			return nil
		}
		d, ok := intercept.NameOnAddress(pol, req, dec, name)
		if ok {
			return nil
		}
		d.Hint = fmt.Sprintf("the tunnel to %s carries a TLS ClientHello for %s: %s", targetString(req.Host, req.Port), name, d.Hint)
		return &d
	}
}

// endSetup closes a tunnel that failed between the hijack and its start
// and records its line.
func (p *Proxy) endSetup(cc, up net.Conn, entry eventlog.Entry, start time.Time, bytesUp int64, err error) {
	cc.Close()
	if up != nil {
		up.Close()
	}
	entry.Err, entry.BytesUp, entry.Duration = err, bytesUp, time.Since(start)
	p.Events.Record(entry)
}
