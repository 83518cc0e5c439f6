// Package intercept is egress's TLS interception data path (issue 20): for
// a destination whose rule has http: request rules, it terminates the
// client's TLS with a certificate from egress's CA (certs), reads each
// request with net/http's reader, decides it on method and normalised
// path, sets the deciding rule's inject: headers, sends it to the origin
// over TLS verified against the system roots (plus tls.upstream_ca) with
// the one origin client (proxy/origin), relays the answer, and logs one
// canonical line per request.
//
// It is handed a connection another path accepted and decided (CONNECT
// after its 200, a transparent TLS connection): it does not accept, read
// ClientHellos for a decision, or resolve names. It speaks HTTP/1.1 only
// (ALPN offers nothing else; Python 2.7 speaks nothing else). A request
// that asks to switch protocols (a WebSocket) is decided and injected as
// any other; when the origin answers 101 for the protocol asked, the
// connection becomes a tunnel (proxy/tunnel, through origin.Switch, as
// the forward proxy's upgrades do), whose bytes are not decided. h2c is
// never offered (origin.StripH2C); a 101 to another protocol ends the
// connection (upgrade.go).
//
// Why not goproxy's MITM: its request loop reads requests itself and
// sends them with its own Transport (verification off by default); that
// would be a second request reader and a second origin client.
package intercept

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/peek"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// Defaults used when neither the Server nor the policy sets a value.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 2 * time.Minute  // between requests on a client connection
	DefaultResponseTimeout  = 60 * time.Second // for the origin's response head
)

// trustHint is how a program comes to trust egress's CA.
const trustHint = "the client does not trust egress's CA: give it the CA certificate (egress run sets SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS; curl --cacert FILE; Python ssl.create_default_context(cafile=FILE); Java keytool -importcert), or install it in the system store (update-ca-certificates); hosts that pin certificates must stay tunnels (no http:)"

// Server intercepts connections. Only Policy is required; it is safe
// for concurrent use.
type Server struct {
	// Policy returns the current policy, read once per request: a reload
	// applies to the next request on an open connection.
	Policy func() *policy.Policy
	// CA returns the CA that signs what egress presents; nil, or a nil
	// CA, refuses every intercepted connection (policy.ReasonNoCA).
	CA func() *certs.CA
	// Roots returns the roots origins are verified against (the system
	// roots plus tls.upstream_ca). Nil, or a nil pool, means the system
	// roots. Verification is never skipped.
	Roots func() *x509.CertPool
	// Dialer dials origins when no connection is idle in the pool and
	// the caller dialled none (or its is used up): the addresses the
	// caller decided (Conn.Resolved), or the connection's. Nil means a
	// Dialer with Policy.
	Dialer *dialer.Dialer
	// Events records one entry per request; nil records nothing.
	Events *eventlog.Sink
	// Logger receives panics.
	Logger zerolog.Logger

	// pools keep origin TLS connections between requests, per policy
	// and clients: entry (origin.Pools, as the forward proxy's): a
	// client connection holds none while idle, and a new one takes a
	// connection another finished with instead of a second handshake.
	pools origin.Pools[originKey]

	tlsOnce   sync.Once
	tlsServer *tls.Config // tlsConfig

	sessMu    sync.Mutex
	sessRoots *x509.CertPool         // the roots sessions was filled under
	sessions  tls.ClientSessionCache // TLS sessions with origins, for sessRoots
}

// originKey names everything an origin connection was dialled and
// verified for: it is reused only for a request that would have dialled
// the same address and verified the same name against the same roots.
// The policy and clients: entry are the pool's (Server.pools).
type originKey struct {
	ip    netip.Addr // the decided address, dialled
	port  uint16
	name  string         // the TLS ServerName verified
	roots *x509.CertPool // the roots in force (nil: the system's)
}

// maxSessions bounds the TLS sessions kept for resumption with origins.
const maxSessions = 1024

// sessionCache returns the TLS session cache for roots: a session
// resumed skips the chain's verification, so a change of roots
// (tls.upstream_ca reloaded) starts a new cache.
func (s *Server) sessionCache(roots *x509.CertPool) tls.ClientSessionCache {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if s.sessions == nil || s.sessRoots != roots {
		s.sessions, s.sessRoots = tls.NewLRUClientSessionCache(maxSessions), roots
	}
	return s.sessions
}

// roots are the roots origins are verified against now (nil: the
// system's).
func (s *Server) roots() *x509.CertPool {
	if s.Roots == nil {
		return nil
	}
	return s.Roots()
}

// Pooled reports whether the pool of pol (the policy that decided res)
// and res's clients: entry holds an idle origin connection that the
// first request of a connection decided as one of res's addresses would
// take: that address and port, the roots in force, and the name egress
// verifies: the decided host, or for a connection decided on its
// address alone (a cidr rule), the address itself, which is the name
// when the ClientHello carries none (what clients send for an IP). It
// returns that address's decision. A CONNECT to an intercepted
// destination that finds one is answered without a dial of its own
// (proxy/httpproxy): Serve dials, those addresses only, if by the first
// request the connection is gone or the ClientHello named another
// server. It takes nothing from the pool.
func (s *Server) Pooled(pol *policy.Policy, res dialer.Resolved) (policy.Decision, bool) {
	roots := s.roots()
	for _, d := range res.Allowed {
		if !d.Intercept {
			continue
		}
		pl := s.pools.For(pol, s.policy(), d.Policy)
		if pl.Has(originKey{ip: d.IP, port: res.Request.Port, name: PresentedName(d), roots: roots}) {
			return d, true
		}
	}
	return policy.Decision{}, false
}

// PresentedName is the name egress presents a certificate for, and
// verifies the origin's for, on a connection decided d: its host, or
// its address as text. A ClientHello may name another for an address
// (see handshake). The requests of a connection to an intercepted
// destination are decided on it, in TLS or plain HTTP.
func PresentedName(d policy.Decision) string {
	if d.Host != "" {
		return d.Host
	}
	return d.IP.String()
}

// CloseIdleConnections closes the origin connections kept between
// requests. Requests decided under a new policy never reuse one dialled
// under the old one (each policy has pools of its own); call it after a
// reload to close the old ones now rather than at the next request.
func (s *Server) CloseIdleConnections() { s.pools.CloseIdle() }

// Conn is a connection handed over for interception.
type Conn struct {
	// Client is the client's connection, its TLS ClientHello unread but
	// for Early.
	Client net.Conn
	// Early are bytes already read from Client (a peeked ClientHello).
	Early []byte
	// Upstream, if set, is a connection to Decision.IP dialled through
	// the checking dialer; Serve owns it (closes it). When it is nil or
	// used up, a request that finds no idle origin connection dials
	// Resolved, or else Decision.IP.
	Upstream net.Conn
	// Resolved, if set, are the destination's allowed addresses as the
	// caller decided them (dialer.Resolve), Decision.IP among them: an
	// origin connection is dialled to those only, Decision.IP first, and
	// to another only where the request is decided there as on
	// Decision.IP. Nothing is resolved again.
	Resolved dialer.Resolved
	// Request and Decision are the connection's: Decision.Intercept
	// set, Decision.IP the address dialled, or to dial.
	Request  policy.Request
	Decision policy.Decision
	// ID is the connection's decision id, given to its first request.
	ID string
	// ClientAddr is the client's address, for the log.
	ClientAddr netip.AddrPort
	// Tunnel is the slot the caller took for the connection
	// (limits.max_tunnels): an upgrade the origin accepts becomes this
	// tunnel, which then owns both connections; otherwise it is given
	// back (Release) when the connection ends. Nil: no upgrade is
	// offered (Upgrade is removed from requests).
	Tunnel *tunnel.Tunnel
}

// Serve intercepts c until the client or the origin ends it, or ctx is
// done. It closes c.Client and c.Upstream.
func (s *Server) Serve(ctx context.Context, c Conn) {
	ended := make(chan struct{})
	s.Start(ctx, c, func() { close(ended) })
	<-ended
}

// Start intercepts c as Serve does, on the caller's goroutine through
// the handshake and the requests the client sends at once, and returns
// when the connection first waits for a request (on a small goroutine
// of its own) or has ended; done, if not nil, is called once the
// connection has ended, c.Client and c.Upstream closed and c.Tunnel's
// slot given back (or become the tunnel of an upgrade). A caller that
// hands the connection over this way and returns keeps no goroutine, and
// no stack, for it: an idle intercepted connection is then one small
// goroutine waiting on its socket (exchange.serve). Not a goroutine of
// its own to start with: one goroutine fewer per connection, and the
// caller's stack is freed as soon.
func (s *Server) Start(ctx context.Context, c Conn, done func()) {
	x := &exchange{s: s, c: c, start: time.Now(), done: done}
	x.stop = context.AfterFunc(ctx, x.cut)
	if c.Tunnel != nil {
		x.stopDrain = context.AfterFunc(c.Tunnel.Draining(), x.wake)
	}
	x.serve(ctx)
}

// cut closes the client's connection and the origin connection in use,
// when Start's ctx is done (the drain deadline): whatever read or write
// waits on either returns, a response body the origin streams slowly, or
// not at all, included.
func (x *exchange) cut() {
	x.mu.Lock()
	x.severed = true
	up := x.inUse
	x.mu.Unlock()
	x.c.Client.Close()
	if up != nil {
		up.Close()
	}
}

// hold makes x.up the origin connection cut closes; one made after the
// cut is closed at once.
func (x *exchange) hold() {
	x.mu.Lock()
	x.inUse = x.up.Raw
	severed := x.severed
	x.mu.Unlock()
	if severed {
		x.up.Raw.Close()
	}
}

// letGo takes x.up out of cut's reach and reports whether it may go back
// to the pool: not once cut closed it, or may be closing it.
func (x *exchange) letGo() bool {
	x.mu.Lock()
	x.inUse = nil
	severed := x.severed
	x.mu.Unlock()
	return !severed
}

// wake ends the wait of a connection waiting for its next request once
// the drain has begun (tunnel.Group.Draining), as net/http's Shutdown
// closes idle connections; one in a request is left to finish, and
// ends when it would next wait (idle).
func (x *exchange) wake() {
	x.mu.Lock()
	x.draining = true
	if x.awaiting {
		x.pc.Conn.SetReadDeadline(time.Now())
	}
	x.mu.Unlock()
}

// exchange is one intercepted connection.
type exchange struct {
	s      *Server
	c      Conn
	start  time.Time
	name   string // the name egress's certificate is for: the decided host, or the IP
	ca     *certs.CA
	pc     *prefixConn
	tc     *tls.Conn
	up     *origin.PoolConn[originKey] // the origin connection, during a request only
	served int                         // requests read so far
	stop   func() bool                 // stops cut when Serve's ctx is done
	done   func()                      // Start's
	ended  bool
	// stopDrain stops wake when the tunnel group's drain begins; nil
	// without a Conn.Tunnel.
	stopDrain func() bool
	// mu guards what cut and wake, on goroutines of their own, share
	// with the goroutine serving the connection.
	mu       sync.Mutex
	inUse    net.Conn // the socket of x.up, during a request (hold)
	severed  bool     // cut ran
	draining bool     // wake ran
	awaiting bool     // idle waits for the next request
	// switched: a tunnel (Conn.Tunnel) owns the connections now.
	switched bool
	// peerDone: the client closed its side (EOF in TLS).
	peerDone bool

	refused *policy.Decision // the handshake's refusal, if any
}

// end closes the connection and gives its tunnel slot back, once, from
// the goroutine that serves it; after a switch (Conn.Tunnel) the tunnel
// owns both.
func (x *exchange) end() {
	if x.ended {
		return
	}
	x.ended = true
	x.stop()
	if x.stopDrain != nil {
		x.stopDrain()
	}
	defer func() {
		if x.c.Tunnel != nil {
			x.c.Tunnel.Release() // nothing once it became the tunnel
		}
		if x.done != nil {
			x.done()
		}
	}()
	if x.switched {
		return
	}
	if x.tc != nil && !x.peerDone && !x.pc.closed {
		x.tc.Close() // close_notify: pointless to a client that has closed
	}
	x.c.Client.Close()
	if x.up != nil {
		x.up.Close()
	} else if x.c.Upstream != nil {
		x.c.Upstream.Close()
	}
}

// serve is the whole story: handshake with the client, then each
// request: read → Host check → decide → inject → origin → relay → log.
//
// What an idle connection costs (issue 20: memory per idle intercepted
// connection): the handshake (crypto/tls, x509, ML-KEM) and requests
// (net/http's reader, the origin's TLS) run deep and grow a goroutine's
// stack to 16 or 32 KiB, which a goroutine keeps once grown. So no
// goroutine waits for long after it went deep: once the client has sent
// nothing more, a new one, whose stack is small, waits for its next
// request on the socket itself (idle; not through crypto/tls), serves it,
// and leaves the wait for the one after to a new one again. Buffers are
// held during a request only. A goroutine that went deep does wait a
// little: up to busyWait for what a client sends at once (its first
// request right behind its Finished, the next of a burst, or its close
// after an answer), then leaves the wait to a small one: no goroutine is
// started for a connection that is not idle.
func (x *exchange) serve(ctx context.Context) {
	defer x.catch()
	if x.handshake() && x.requests(ctx, time.Now().Add(busyWait)) {
		go x.idle(ctx)
		return
	}
	x.end()
}

// busyWait is how long a goroutine that went deep (the handshake, a
// request) waits for the client's next bytes before a small one takes
// the wait over (serve): what a client sends at once comes within a
// round trip and some, so this is not an idle time. timeouts.tunnel_idle
// counts from its end.
const busyWait = 100 * time.Millisecond

// idle waits for the client's next request and serves it (serve).
func (x *exchange) idle(ctx context.Context) {
	defer x.catch()
	idle := x.s.policy().Timeouts.TunnelIdle
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	until := time.Now().Add(idle)
	// The wait's deadline is set under mu, where wake sets its own: a
	// drain that began is seen here, or ends the wait.
	x.mu.Lock()
	draining := x.draining
	if !draining {
		x.pc.Conn.SetReadDeadline(until)
		x.awaiting = true
	}
	x.mu.Unlock()
	if draining {
		x.end()
		return
	}
	got := x.pc.await()
	x.mu.Lock()
	x.awaiting = false
	x.mu.Unlock()
	if got && x.requests(ctx, until) {
		go x.idle(ctx)
		return
	}
	x.end() // the client is done, or idle too long
}

// catch ends the connection on a panic of the goroutine serving it,
// and logs the panic with its stack.
func (x *exchange) catch() {
	if v := recover(); v != nil {
		x.s.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
			Str(eventlog.FieldID, x.c.ID).Msg("panic in an intercepted connection; connection closed")
		x.end()
	}
}

// requests reads and serves the client's requests until it has sent
// nothing more: true when the connection is to wait for its next request
// (serve), false when it ends. until bounds each wait for a request's
// first byte (busyWait; timeouts.tunnel_idle from idle); zero, there is
// no wait: only what crypto/tls already holds is read.
func (x *exchange) requests(ctx context.Context, until time.Time) bool {
	// The one HTTP/1 request reader (net/http's, with its server's
	// checks), as every path that decides on requests reads them. Its
	// buffer and the writer's are held during a request only.
	var rr *peek.RequestReader
	var first [1]byte
	for ; ; x.served++ {
		pol := x.s.policy()
		if rr == nil {
			// Nothing buffered past the last request: the client's
			// next bytes, which may already be crypto/tls's (sent with
			// the Finished, or one record carrying two requests): a read
			// that may not wait tells, else the connection is idle.
			wait := until
			if wait.IsZero() {
				wait = time.Unix(1, 0)
			}
			x.tc.SetReadDeadline(wait)
			k, err := x.tc.Read(first[:])
			if k == 0 {
				// Nothing yet (the wait is idle's), or the client is
				// done.
				x.peerDone = x.peerDone || errors.Is(err, io.EOF)
				return errors.Is(err, os.ErrDeadlineExceeded)
			}
			rr = peek.NewRequestReader(first[:k], x.tc, pol.Limits.MaxHeaderBytes)
		} else {
			idle := pol.Timeouts.TunnelIdle
			if idle <= 0 {
				idle = DefaultIdleTimeout
			}
			x.tc.SetReadDeadline(time.Now().Add(idle))
			if _, err := rr.Buffered().Peek(1); err != nil {
				return false // the client is done, or idle too long
			}
		}
		hdr := pol.Timeouts.Header
		if hdr <= 0 {
			hdr = DefaultHandshakeTimeout
		}
		x.tc.SetReadDeadline(time.Now().Add(hdr))
		id := x.c.ID
		if x.served > 0 || id == "" {
			id = eventlog.NewID()
		}
		bw := writers.Get().(*bufio.Writer)
		bw.Reset(x.tc)
		ok := x.request(ctx, pol, id, rr, bw)
		ok = bw.Flush() == nil && ok
		bw.Reset(nil)
		writers.Put(bw)
		if !ok {
			return false
		}
		if rr.Release() {
			rr, until = nil, time.Now().Add(busyWait)
		}
	}
}

// writers are the 4 KiB buffers answers are written with, held by a
// connection during a request only.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// policy is the policy in force.
func (s *Server) policy() *policy.Policy { return s.Policy() }

// request serves one request; false ends the connection.
func (x *exchange) request(ctx context.Context, pol *policy.Policy, id string, rr *peek.RequestReader, bw *bufio.Writer) bool {
	start := time.Now()
	req, err := rr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			x.peerDone = true
			return false
		}
		d := x.c.Decision
		x.refuse(bw, "HTTP/1.1", false, answer.BadRequest(id, err))
		x.record(id, d, "", "", nil, fmt.Errorf("read request: %w", err))
		return false
	}
	// The header deadline bounded the head; the body streams (an upload
	// may take longer), and the connection's context ends it at drain.
	x.tc.SetReadDeadline(time.Time{})
	proto := "HTTP/1.1"
	if !req.ProtoAtLeast(1, 1) {
		proto = "HTTP/1.0"
	}
	head := req.Method == http.MethodHead
	d := Decide(pol, x.c.Request, x.c.Decision, x.name, req)
	target := req.Method + " " + URL("https", x.name, x.c.Request.Port, d.Path)
	if !d.Allowed() {
		x.refuse(bw, proto, head, answer.Denied(id, target, d))
		x.record(id, d, req.Method, URL("https", x.name, x.c.Request.Port, d.Path), nil, nil)
		return false
	}

	// Forward the normal path, the query as sent; Host as the client
	// wrote it (it names x.name).
	req.URL.Scheme, req.URL.Host, req.URL.Path, req.URL.RawPath = "", "", "", ""
	req.URL.Opaque = d.Path
	// The client's hop-by-hop headers go first, so that a header the
	// client names in Connection cannot strip what egress injects; an
	// upgrade's Upgrade is set again after (upgrade.go).
	upgrade := x.upgradeOffer(req)
	origin.DropHopHeaders(req.Header)
	var injected []string
	for _, in := range d.Inject {
		v, ok := in.Value()
		if !ok {
			// Never send without the header the rule promises.
			x.refuse(bw, proto, head, answer.New(http.StatusBadGateway, id, "egress could not set "+in.Header+" for "+target, "egress: the value of "+in.Header+" ("+in.Source()+") is not loaded\n"))
			x.record(id, d, req.Method, URL("https", x.name, x.c.Request.Port, d.Path), nil, fmt.Errorf("inject %s: value not loaded", in.Header))
			return false
		}
		req.Header.Set(in.Header, v)
		injected = append(injected, in.Header)
	}
	offerUpgrade(req, upgrade)
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// egress reads the body itself: say Continue, as net/http's
		// server does, rather than make the client wait.
		req.Header.Del("Expect")
		if req.ContentLength != 0 {
			bw.WriteString(proto + " 100 Continue\r\n\r\n")
			bw.Flush()
		}
	}

	resp, err := x.roundTrip(ctx, pol, &d, req, bw)
	if err != nil {
		var de *dialer.DeniedError
		if errors.As(err, &de) {
			x.refuse(bw, proto, head, answer.Denied(id, x.c.Request.Host, de.Decision))
			x.record(id, de.Decision, req.Method, URL("https", x.name, x.c.Request.Port, d.Path), injected, nil)
			return false
		}
		x.refuse(bw, proto, head, failure(id, x.name+":"+strconv.Itoa(int(x.c.Request.Port)), err))
		x.record(id, d, req.Method, URL("https", x.name, x.c.Request.Port, d.Path), injected, err)
		return false
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Only to a request that asked (origin.Conn.ReadResponse).
		return x.switchProtocols(pol, id, d, req, resp, rr, bw, injected, start)
	}
	// The body streams at the origin's pace, each read bounded by
	// timeouts.tunnel_idle of silence, as a tunnel is; the drain's
	// deadline cuts it (cut).
	resp.Body = origin.IdleBody(resp.Body, x.up.OC, pol.Timeouts.TunnelIdle)
	closeAfter, err := origin.WriteResponse(bw, req, resp)
	resp.Body.Close()
	x.up.OC.SetReadDeadline(time.Time{})
	entry := x.entry(id, d, req.Method, URL("https", x.name, x.c.Request.Port, d.Path), injected, err)
	entry.Duration = time.Since(start)
	x.s.Events.Record(entry)
	// The origin connection goes back to the pool for the next request
	// of any client connection with the same decision, or is closed.
	if !x.letGo() || err != nil || resp.Close || req.Close || x.up.OC.BR.Buffered() != 0 {
		x.up.Close()
	} else {
		x.up.MustLook = head || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
		x.up.Put()
	}
	x.up = nil
	return err == nil && !closeAfter && !req.Close
}
