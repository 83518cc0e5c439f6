// Package httpproxy is egress's HTTP forward proxy: absolute-form HTTP
// requests (http:// and, fetched over verified TLS, https://) and CONNECT
// tunnels, each decided by the policy, dialled through the checking dialer
// and recorded as one canonical log line.
//
// Plain HTTP is forwarded on the client connection's goroutine over pools
// of kept-alive upstream connections, one pool per policy and clients:
// entry, every new connection dialled through proxy/dialer (forward.go,
// upstream.go); no net/http.Transport, no proxies from the environment,
// TLS verification on. CONNECT and upgrades (WebSocket) become
// proxy/tunnel tunnels once dialled (connect.go, upgrade.go); a
// connection's first request, when it is a CONNECT, is read and answered
// before net/http's Server, which gets every other connection
// (listener.go). It does not intercept TLS (no MITM) and does not
// authenticate proxy users; a Basic Proxy-Authorization user name only
// selects a per-client policy.
package httpproxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/accept"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// Defaults used when the policy leaves a setting at zero.
const (
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultMaxTunnels     = tunnel.DefaultMaxTunnels
	DefaultMaxHeaderBytes = 64 << 10
	idleClientTimeout     = 2 * time.Minute // between requests on a kept-alive client connection
)

// Proxy is the HTTP forward proxy. Only Policy is required; every other
// field has a safe default. Serve it with Serve (which applies the
// policy's timeouts and limits) or mount it as an http.Handler.
type Proxy struct {
	// Policy returns the current policy; it is called per request, never
	// copied, so an atomically swapped policy applies to the next request.
	Policy func() *policy.Policy
	// Dialer dials upstream connections for both plain HTTP and CONNECT.
	// Nil means a Dialer with Policy, the system resolver and, as loop
	// guard, the listeners this Proxy serves on.
	Dialer *dialer.Dialer
	// Events records one entry per request or tunnel; nil records nothing.
	Events *eventlog.Sink
	// Logger receives what is not a canonical line: panics, server errors.
	Logger zerolog.Logger
	// TLSClientConfig verifies origins of absolute-form https:// requests.
	// Nil means the system roots. Verification is never skipped.
	TLSClientConfig *tls.Config
	// Intercept serves the destinations whose rules have http: request
	// rules (Decision.Intercept), CONNECT and plain http:// alike. Nil
	// means a Server without a CA, which refuses them (fail closed).
	Intercept *intercept.Server
	// Tunnels is the set CONNECT tunnels and upgraded connections join:
	// share one with the other data paths of the process, so that
	// limits.max_tunnels holds for all of them and a reload can revoke
	// them all. Nil means a set of this Proxy's own.
	Tunnels *tunnel.Set

	initOnce  sync.Once
	dial      *dialer.Dialer
	self      dialer.Self
	tunnels   *tunnel.Group
	intercept *intercept.Server

	mu       sync.Mutex
	srvs     []*http.Server
	shutdown bool
	pools    origin.Pools[poolKey] // upstream connections by policy and client policy name

	pending accept.InFlight // connections accepted, not yet the Server's or a tunnel's (listener.go)
}

func (p *Proxy) init() {
	p.initOnce.Do(func() {
		p.tunnels = &tunnel.Group{Set: p.Tunnels, Events: p.Events, Logger: p.Logger}
		p.dial = p.Dialer
		if p.dial == nil {
			p.dial = &dialer.Dialer{Policy: p.Policy, IsSelf: p.self.Contains}
		}
		p.intercept = p.Intercept
		if p.intercept == nil {
			p.intercept = &intercept.Server{Policy: p.Policy, Dialer: p.dial, Events: p.Events, Logger: p.Logger}
		}
	})
}

// Serve accepts connections on l until Shutdown. It applies the current
// policy's header timeout and header size limit to the listener's server.
// It closes l when it returns; after Shutdown it returns
// http.ErrServerClosed at once.
func (p *Proxy) Serve(l net.Listener) error {
	p.init()
	pol := p.Policy()
	hdrTimeout := pol.Timeouts.Header
	if hdrTimeout <= 0 {
		hdrTimeout = DefaultHeaderTimeout
	}
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: hdrTimeout, // slowloris
		IdleTimeout:       idleClientTimeout,
		// net/http reads MaxHeaderBytes+4096 before answering 431; take
		// the slack off so that limits.max_header_bytes is the limit.
		MaxHeaderBytes: max(maxHeaderBytes(pol)-4096, 4096),
		ErrorLog:       log.New(p.Logger.With().Str("component", "httpproxy").Logger(), "", 0),
	}
	p.mu.Lock()
	if p.shutdown {
		p.mu.Unlock()
		// Close l as http.Server.Serve would: clients are refused
		// rather than left in the backlog of a socket nobody accepts on.
		l.Close()
		return http.ErrServerClosed
	}
	p.srvs = append(p.srvs, srv)
	p.mu.Unlock()
	p.self.Add(l.Addr())
	return srv.Serve(p.connectFirst(l, hdrTimeout, maxHeaderBytes(pol)))
}

// Shutdown stops accepting, closes idle client connections, waits for
// requests in flight and then for open tunnels to finish, until ctx is
// done; then it closes the tunnels still open and returns ctx's error.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.init()
	p.mu.Lock()
	p.shutdown = true
	srvs := p.srvs
	p.mu.Unlock()
	p.pools.Shutdown()
	var err error
	for _, s := range srvs {
		if e := s.Shutdown(ctx); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		// Past the deadline: close the connections still in a request,
		// which cancels the dial of a CONNECT being set up.
		for _, s := range srvs {
			s.Close()
		}
	}
	// Connections accepted and not yet handed to the Server or set up as
	// a tunnel (listener.go): a CONNECT whose head was read when Shutdown
	// began takes its tunnel slot after this.
	p.pending.Wait(ctx)
	if e := p.tunnels.Drain(ctx); e != nil && err == nil {
		err = e
	}
	for _, s := range srvs {
		s.Close() // connections that did not finish in time
	}
	p.CloseIdleConnections()
	return err
}

// OpenTunnels is the number of this Proxy's tunnels (CONNECT and
// upgraded connections) open or being set up.
func (p *Proxy) OpenTunnels() int {
	p.init()
	return p.tunnels.Open()
}

// ServeHTTP answers one proxy request: CONNECT, absolute-form requests,
// and anything else with a 400 info page.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.init()
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			p.logPanic(v, r.RemoteAddr, r.Method)
			panic(http.ErrAbortHandler) // net/http closes this connection quietly and keeps serving
		}
	}()
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	if !r.URL.IsAbs() {
		serveInfo(w, r) // never forwarded: egress is not a reverse proxy
		return
	}
	p.serveForward(w, r)
}

// logPanic logs a panic recovered while serving a request of client
// (method "" when none was read yet), with its stack.
func (p *Proxy) logPanic(v any, client, method string) {
	ev := p.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).Str("client", client)
	if method != "" {
		ev = ev.Str("method", method)
	}
	ev.Msg("panic serving request; connection closed")
}

// serveInfo answers requests that are not proxy requests (origin-form,
// "GET / HTTP/1.1"): they are never forwarded anywhere. No decision, so
// no id.
func serveInfo(w http.ResponseWriter, r *http.Request) {
	plainFailure(http.StatusBadRequest, "egress bad request: not a proxy request",
		"egress is a forward proxy: send absolute-form requests (GET http://host/path)\n"+
			"or CONNECT host:port, e.g. curl -x http://"+r.Host+" https://host/\n").send(w, r)
}

// request is what every path knows about one proxy request.
type request struct {
	id     string
	client netip.AddrPort
	req    policy.Request
	start  time.Time
}

func (p *Proxy) newRequest(r *http.Request, host string, port uint16) request {
	client, _ := netip.ParseAddrPort(r.RemoteAddr)
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	return request{
		id:     eventlog.NewID(),
		client: client,
		req:    policy.Request{Host: host, Port: port, Client: client.Addr(), User: proxyUser(r.Header)},
		start:  time.Now(),
	}
}

// proxyUser is the user name of a Basic Proxy-Authorization header. It
// is not authenticated: it only selects a clients: entry.
func proxyUser(h http.Header) string {
	v := h.Get("Proxy-Authorization")
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return ""
	}
	user, _, _ := strings.Cut(string(b), ":")
	return user
}

// splitTarget splits host:port as found in a CONNECT authority or URL.
func splitTarget(hostport string) (string, uint16, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("target %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("target %q: bad port", hostport)
	}
	if host == "" {
		return "", 0, fmt.Errorf("target %q: empty host", hostport)
	}
	return host, uint16(port), nil
}

func maxHeaderBytes(pol *policy.Policy) int {
	if pol.Limits.MaxHeaderBytes > 0 {
		return pol.Limits.MaxHeaderBytes
	}
	return DefaultMaxHeaderBytes
}
