package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// forward is the state of one absolute-form request, shared with the
// Transport's dial (which may run on another goroutine) through the
// request context.
type forward struct {
	request
	pol          *policy.Policy // the policy that decided the name
	clientPolicy string         // Decision.Policy of the name decision: selects the Transport

	mu      sync.Mutex
	dec     policy.Decision // the final decision: the dial's, or the name's
	dialErr error
	connIP  netip.Addr // address of the connection used, pooled or new

	failed atomic.Pointer[failure] // roundTrip's answer, sent instead of goproxy's copy of it
}

type forwardKey struct{}

// serveForward handles an absolute-form request: decide on the name, then
// let goproxy forward it through our Transport, whose dial decides on the
// address. The Host header never decides: net/http sets r.Host from the
// absolute URI and drops the header, and the Transport sends the URI's
// host upstream (RFC 9112 §3.2.2: a proxy ignores Host for absolute-form).
func (p *Proxy) serveForward(w http.ResponseWriter, r *http.Request) {
	var port uint16 = 80
	switch r.URL.Scheme {
	case "http":
	case "https":
		port = 443
	default:
		p.fail(w, r, "", fmt.Errorf("%w: scheme %q not supported (use CONNECT for other protocols)", errBadRequest, r.URL.Scheme))
		return
	}
	host := r.URL.Hostname()
	if ps := r.URL.Port(); ps != "" {
		n, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || n == 0 {
			p.fail(w, r, "", fmt.Errorf("%w: bad port in %q", errBadRequest, r.URL.Host))
			return
		}
		port = uint16(n)
	}
	if host == "" || r.URL.User != nil {
		p.fail(w, r, "", fmt.Errorf("%w: bad host in %q", errBadRequest, r.URL.Redacted()))
		return
	}
	fw := &forward{request: p.newRequest(r, host, port)}
	target := targetString(host, port)
	entry := eventlog.Entry{ID: fw.id, Proto: eventlog.ProtoHTTP, Client: fw.client, Method: r.Method, URL: r.URL.Redacted()}

	// Step one: can the name be reached at all? A denial here is final,
	// and it must be made per request: the Transport may reuse a pooled
	// connection without dialling.
	pol := p.Policy()
	dec := pol.Decide(fw.req)
	if !dec.Allowed() {
		entry.Decision = dec
		p.Events.Record(entry)
		denied(fw.id, target, dec).send(w, r)
		return
	}
	fw.dec = dec
	fw.pol, fw.clientPolicy = pol, dec.Policy
	if isUpgrade(r) {
		p.serveUpgrade(w, r, fw, entry, pol) // a WebSocket handshake: becomes a tunnel
		return
	}

	cw := &countingWriter{ResponseWriter: w, fw: fw}
	var up *countingReader
	if r.Body != nil && r.Body != http.NoBody {
		up = &countingReader{ReadCloser: r.Body}
		r.Body = up
	}
	r = r.WithContext(context.WithValue(r.Context(), forwardKey{}, fw))
	p.gp.ServeHTTP(cw, r)

	fw.mu.Lock()
	entry.Decision = fw.dec
	if !entry.Decision.IP.IsValid() {
		entry.Decision.IP = fw.connIP
	}
	entry.Err = fw.dialErr
	fw.mu.Unlock()
	if entry.Decision.Denied() && !entry.Decision.Allowed() {
		// Refused at the address: the decision says why; nothing was sent.
		entry.Err = nil
	} else {
		if up != nil {
			entry.BytesUp = up.n.Load()
		}
		entry.BytesDown = cw.n
		entry.Duration = time.Since(fw.start)
	}
	p.Events.Record(entry)
	if f := fw.failed.Load(); f != nil {
		f.send(w, r)
	}
}

// fail answers a request that never got a decision (malformed).
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, target string, err error) {
	failureFor(eventlog.NewID(), target, policy.Decision{}, err).send(w, r)
}

// roundTrip is goproxy's RoundTripper for every absolute-form request.
// Errors become answers here (403 for an address the dial refused, 502,
// 504), so goproxy never writes its own 500. goproxy would write the
// answer with net/http's standard reason phrase: the countingWriter
// discards its copy and serveForward sends the answer itself.
func (p *Proxy) roundTrip(req *http.Request, _ *goproxy.ProxyCtx) (*http.Response, error) {
	fw, _ := req.Context().Value(forwardKey{}).(*forward)
	if fw == nil {
		return nil, errors.New("httpproxy: request without state")
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if ap, err := netip.ParseAddrPort(info.Conn.RemoteAddr().String()); err == nil {
			fw.mu.Lock()
			fw.connIP = ap.Addr().Unmap()
			fw.mu.Unlock()
		}
	}}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := p.transport(fw.pol, fw.clientPolicy).RoundTrip(req)
	if err == nil {
		return resp, nil
	}
	fw.mu.Lock()
	if fw.dialErr == nil {
		fw.dialErr = err
	}
	f := failureFor(fw.id, targetString(fw.req.Host, fw.req.Port), fw.dec, err)
	fw.mu.Unlock()
	fw.failed.Store(&f)
	return f.response(req), nil
}

// transport returns the Transport for one client policy of pol. Pooled
// upstream connections are shared only between requests decided by the
// same policy (same file version, same clients: entry), so a connection
// dialled for one client is never reused for a client whose policy would
// refuse its address; a reload starts fresh pools.
func (p *Proxy) transport(pol *policy.Policy, clientPolicy string) *http.Transport {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pol != p.trPolicy {
		for _, t := range p.trs {
			t.CloseIdleConnections()
		}
		p.trs = map[string]*http.Transport{}
		p.trPolicy = pol
	}
	t := p.trs[clientPolicy]
	if t == nil {
		t = p.newTransport(pol)
		p.trs[clientPolicy] = t
	}
	return t
}

// newTransport builds the Transport for pol: the policy the request was
// decided under, not whatever p.Policy returns by now (a reload between
// the two would cache the new timeout under the old policy).
func (p *Proxy) newTransport(pol *policy.Policy) *http.Transport {
	tc := &tls.Config{}
	if p.TLSClientConfig != nil {
		tc = p.TLSClientConfig.Clone()
	}
	tc.InsecureSkipVerify = false
	return &http.Transport{
		Proxy:               nil, // never HTTP_PROXY/HTTPS_PROXY from the environment
		DialContext:         p.dialForward,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		// A silent upstream must not hold the client forever: the
		// Transport gives up after timeouts.response (a 504, answer.go).
		ResponseHeaderTimeout: pol.Timeouts.Response,
		MaxIdleConns:          1000,
		MaxIdleConnsPerHost:   100,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass bodies through as the origin sent them
	}
}

// dialForward is the Transport's dial: the checking dialer, with the
// client and user of the request that asked for the connection.
func (p *Proxy) dialForward(ctx context.Context, network, addr string) (c net.Conn, err error) {
	// The Transport dials on its own goroutine, outside ServeHTTP's
	// recover: a panic here would take the process down.
	defer func() {
		if v := recover(); v != nil {
			p.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
				Str("addr", addr).Msg("panic serving request; dial failed")
			c, err = nil, fmt.Errorf("dial %s: internal error (panic)", addr)
		}
	}()
	fw, _ := ctx.Value(forwardKey{}).(*forward)
	if fw == nil {
		return nil, errors.New("httpproxy: dial without request state")
	}
	host, port, err := splitTarget(addr)
	if err != nil {
		return nil, err
	}
	req := fw.req
	req.Host, req.Port = host, port
	c, dec, err := p.dial.Dial(ctx, network, req)
	fw.mu.Lock()
	if dec.Reason != "" {
		fw.dec = dec
	}
	fw.dialErr = err
	fw.mu.Unlock()
	return c, err
}

// countingWriter counts the body bytes written to the client. Once
// roundTrip has failed it discards what goproxy writes: serveForward sends
// the failure itself, with its reason phrase.
type countingWriter struct {
	http.ResponseWriter
	fw *forward
	n  int64
}

// discard reports whether roundTrip failed and goproxy is copying out the
// failure's response.
func (c *countingWriter) discard() bool { return c.fw.failed.Load() != nil }

func (c *countingWriter) WriteHeader(code int) {
	if c.discard() {
		return
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.discard() {
		return len(b), nil
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// copyBufs are the buffers goproxy's io.Copy of a response body uses
// through ReadFrom; without them every response allocates 32 KiB.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// ReadFrom copies a response body with a pooled buffer.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{c}, r, *bp)
}

func (c *countingWriter) Flush() {
	if c.discard() {
		return
	}
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Hijack refuses: goproxy hijacks for a WebSocket upgrade, and upgrades
// never reach it (serveUpgrade makes them tunnels).
func (c *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("httpproxy: upgrades are served by serveUpgrade")
}

// countingReader counts the request body bytes sent upstream; the
// Transport reads it on another goroutine, hence the atomic.
type countingReader struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.n.Add(int64(n))
	return n, err
}
