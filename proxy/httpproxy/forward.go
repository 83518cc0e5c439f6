package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/origin"
)

// expectContinueTimeout is how long a request with "Expect: 100-continue"
// waits for the origin's 100 (or final answer) before its body goes up
// anyway (RFC 9110 §10.1.1).
const expectContinueTimeout = time.Second

// forward is the state of one absolute-form request.
type forward struct {
	request
	pol          *policy.Policy // the policy that decided the name
	clientPolicy string         // Decision.Policy of the name decision: selects the pool

	dec    policy.Decision // the final decision: the dial's, or the name's
	connIP netip.Addr      // address of the connection used, pooled or new
}

// serveForward handles an absolute-form request: decide on the name, then
// send it on a connection from the pool of its policy and clients: entry,
// or a new one dialled through the checking dialer, which decides on the
// address. Everything happens on the client connection's goroutine: the
// request is written, the response read and copied to the client, then
// the connection goes back to the pool. The Host header never decides:
// net/http sets r.Host from the absolute URI and drops the header, and the
// URI's host is what is sent upstream (RFC 9112 §3.2.2: a proxy ignores
// Host for absolute-form).
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
	if host == "" || r.URL.User != nil || !httpguts.ValidHostHeader(r.URL.Host) {
		p.fail(w, r, "", fmt.Errorf("%w: bad host in %q", errBadRequest, r.URL.Redacted()))
		return
	}
	fw := &forward{request: p.newRequest(r, host, port)}
	target := targetString(host, port)
	entry := eventlog.Entry{ID: fw.id, Proto: eventlog.ProtoHTTP, Client: fw.client, Method: r.Method, URL: r.URL.Redacted()}

	// Step one: can the name be reached at all? A denial here is final,
	// and it must be made per request: a pooled connection is reused
	// without dialling.
	pol := p.Policy()
	dec := pol.Decide(fw.req)
	if !dec.Allowed() {
		entry.Decision = dec
		p.Events.Record(entry)
		denied(fw.id, target, dec).send(w, r)
		return
	}
	if dec.Intercept {
		// Request rules (issue 20): decided per request on plain HTTP
		// too, the normal path forwarded; inject: never applies here.
		name := dec.Host
		if name == "" {
			name = host
		}
		rd := intercept.Decide(pol, fw.req, dec, name, r)
		if !rd.Allowed() {
			entry.Decision = rd
			p.Events.Record(entry)
			denied(fw.id, r.Method+" "+intercept.URL(r.URL.Scheme, name, port, rd.Path), rd).send(w, r)
			return
		}
		r.URL.Opaque, r.URL.Path, r.URL.RawPath = rd.Path, "", ""
		dec = rd
	}
	fw.dec = dec
	fw.pol, fw.clientPolicy = pol, dec.Policy
	// An h2c upgrade would switch to HTTP/2, whose frames could name
	// other hosts on the same origin: it goes up as HTTP/1.1.
	origin.StripH2C(r.Header)
	if isUpgrade(r) {
		p.serveUpgrade(w, r, fw, entry, pol) // a WebSocket handshake: becomes a tunnel
		return
	}

	cw := &countingWriter{ResponseWriter: w}
	var body *countingReader
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingReader{r: r.Body}
	}
	// Step two, for a new connection: the dial decides on the address.
	err := p.roundTrip(cw, r, fw, body)

	entry.Decision = fw.dec
	if !entry.Decision.IP.IsValid() {
		entry.Decision.IP = fw.connIP
	}
	if !entry.Decision.Allowed() {
		// Refused at the address: the decision says why; nothing was sent.
		entry.Err = nil
	} else {
		entry.Err = err
		if body != nil {
			entry.BytesUp = body.n
		}
		entry.BytesDown = cw.n
		entry.Duration = time.Since(fw.start)
	}
	p.Events.Record(entry)
	switch {
	case err == nil:
	case !cw.wroteHeader:
		failureFor(fw.id, target, fw.dec, err).send(w, r)
	default:
		// The response was under way: end the client's connection so
		// that it sees a truncated response, not a complete one.
		panic(http.ErrAbortHandler)
	}
}

// fail answers a request that never got a decision (malformed).
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, target string, err error) {
	failureFor(eventlog.NewID(), target, policy.Decision{}, err).send(w, r)
}

// Errors of the exchange with the origin, each mapped to its answer by
// failureFor.
var (
	errRequestBody = errors.New("request body")
)

// idleClosedError is a reused connection that failed before a byte of the
// response came: the origin had closed it while it was idle.
type idleClosedError struct{ err error }

func (e idleClosedError) Error() string { return e.err.Error() }
func (e idleClosedError) Unwrap() error { return e.err }

// roundTrip sends r to its origin and copies the response to w. A request
// that failed on a kept-alive connection the origin had closed is sent
// again on another one when that is safe: the method is idempotent (RFC
// 9110 §9.2.2) and there is no body to replay, as net/http's Transport
// does.
func (p *Proxy) roundTrip(w *countingWriter, r *http.Request, fw *forward, body *countingReader) error {
	key := poolKey{scheme: r.URL.Scheme, host: fw.req.Host, port: fw.req.Port}
	pl := p.pool(fw.pol, fw.clientPolicy)
	retry := body == nil && isIdempotent(r)
	var inline []byte
	if body != nil && !expectsContinue(r) && r.ContentLength > 0 && r.ContentLength <= inlineBody {
		// Read whole before a connection is taken: a client slow or
		// silent in the middle of its body holds no upstream connection
		// with a request head that never went up.
		bp := inlineBufs.Get().(*[]byte)
		defer inlineBufs.Put(bp)
		inline = (*bp)[:r.ContentLength]
		if _, err := io.ReadFull(body, inline); err != nil {
			return fmt.Errorf("%w: %w", errRequestBody, err)
		}
	}
	for {
		uc := pl.Get(key, retry)
		if uc == nil {
			var err error
			if uc, err = p.dialUpstream(r.Context(), pl, fw, key); err != nil {
				return err
			}
		}
		fw.connIP = uc.IP
		err := p.exchange(w, r, uc, body, inline, fw.pol.Timeouts.Response, fw.pol.Timeouts.TunnelIdle, fw.pol.Listen.Via)
		var ic idleClosedError
		if errors.As(err, &ic) && retry {
			continue
		}
		return err
	}
}

// isIdempotent reports whether r may be sent twice (RFC 9110 §9.2.2), or
// says it may (an Idempotency-Key, as net/http's Transport takes it).
func isIdempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}

// inlineBody is the largest request body read whole, then written with
// the head on the client connection's goroutine before the response is
// read: it fits in the socket's buffers, so an origin that answers before
// reading it cannot block the write. A larger or chunked body goes up
// from a goroutine of its own while the response comes down, as with
// net/http's Transport (an origin may stream its answer while it reads).
const inlineBody = 16 << 10

// inlineBufs hold request bodies of up to inlineBody bytes.
var inlineBufs = sync.Pool{New: func() any { b := make([]byte, inlineBody); return &b }}

// expectsContinue reports whether r waits for a 100 Continue before its
// body (RFC 9110 §10.1.1).
func expectsContinue(r *http.Request) bool {
	return r.ContentLength != 0 && r.ProtoAtLeast(1, 1) && headerHasToken(r.Header, "Expect", "100-continue")
}

// exchange writes r on uc, reads the response and copies it to w, then
// puts uc back into its pool if it can carry another request, or closes
// it. inline is r's whole body, already read, or nil; timeout is
// timeouts.response, idle timeouts.tunnel_idle (copyResponse).
func (p *Proxy) exchange(w *countingWriter, r *http.Request, uc *upConn, body *countingReader, inline []byte, timeout, idle time.Duration, via bool) (err error) {
	// A client that goes away cancels the request: close the
	// connection under whatever read or write waits on it.
	stop := context.AfterFunc(r.Context(), func() { uc.Raw.Close() })
	keep := false
	var up *bodyWriter // the body going up on its own goroutine
	defer func() {
		if up != nil && !up.finish(w) {
			keep = false
		}
		if stop() && keep {
			uc.Put()
		} else {
			uc.OC.Conn.Close()
		}
	}()
	upstreamErr := func(err error) error {
		if up != nil {
			uc.Raw.Close()
			up.finish(w)
		}
		if body != nil && body.err != nil {
			return fmt.Errorf("%w: %w", errRequestBody, body.err)
		}
		if uc.Reused && uc.OC.BR.Buffered() == 0 && (body == nil || body.n == 0) && !uc.OC.Got() {
			return idleClosedError{err}
		}
		return err
	}

	uc.OC.ResetGot()
	dl := &responseDeadline{conn: uc.Raw, d: timeout}
	origin.WriteHead(uc.OC.BW, r, origin.Request{Via: via})
	expect := body != nil && expectsContinue(r)
	uc.OC.BW.Write(inline) // an error is Flush's
	if err := uc.OC.BW.Flush(); err != nil {
		return upstreamErr(err)
	}
	if expect {
		// Wait a moment for the origin's 100 Continue, or its final
		// answer without the body (a 401, a 413). net/http's server
		// sends the client its own 100 when the body is first read.
		uc.Raw.SetReadDeadline(time.Now().Add(expectContinueTimeout))
		_, err := uc.OC.BR.Peek(1)
		uc.Raw.SetReadDeadline(time.Time{})
		if err != nil && !isTimeout(err) {
			return upstreamErr(err)
		}
		if err == nil {
			resp, err := readHead(w, r, uc, dl, true)
			if err != nil {
				return upstreamErr(err)
			}
			if resp != nil {
				// A final answer: the body stays with the client, and
				// the origin's connection cannot be reused.
				return copyResponse(w, resp, uc, idle, via)
			}
		}
	}
	if body != nil && inline == nil {
		up = startBody(uc, r, body, dl)
	} else {
		dl.arm()
	}
	resp, err := readHead(w, r, uc, dl, false)
	if err != nil {
		return upstreamErr(err)
	}
	if err := copyResponse(w, resp, uc, idle, via); err != nil {
		return err
	}
	keep = !resp.Close && uc.OC.BR.Buffered() == 0
	uc.MustLook = r.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	return nil
}

// responseDeadline is timeouts.response: it starts when the request is
// all sent (as net/http's Transport's ResponseHeaderTimeout did) and ends
// with the response head, whichever goroutine gets there first.
type responseDeadline struct {
	conn net.Conn
	d    time.Duration
	mu   sync.Mutex
	done bool // the head came
}

func (r *responseDeadline) arm() {
	if r.d <= 0 {
		return
	}
	r.mu.Lock()
	if !r.done {
		r.conn.SetReadDeadline(time.Now().Add(r.d))
	}
	r.mu.Unlock()
}

func (r *responseDeadline) disarm() {
	if r.d <= 0 {
		return
	}
	r.mu.Lock()
	r.done = true
	r.conn.SetReadDeadline(time.Time{})
	r.mu.Unlock()
}

// bodyWriter sends a request body on a goroutine of its own.
type bodyWriter struct {
	up   net.Conn // the upstream socket it writes on
	done chan struct{}
	err  error // read after done
}

// startBody writes r's body on uc from a new goroutine; a body that
// cannot be read whole from the client, or written whole, closes the
// connection, so the origin never takes part of a body for all of it.
func startBody(uc *upConn, r *http.Request, body *countingReader, dl *responseDeadline) *bodyWriter {
	bw := &bodyWriter{up: uc.Raw, done: make(chan struct{})}
	go func() {
		defer close(bw.done)
		err := origin.WriteBody(uc.OC.BW, r, body)
		if err == nil {
			err = uc.OC.BW.Flush()
		}
		if err != nil {
			bw.err = err
			uc.Raw.Close()
			return
		}
		dl.arm()
	}()
	return bw
}

// finish waits for the body's goroutine and reports whether the whole
// body went up. Once the response is over, a body still being read from
// the client, or written to an origin that answered early and reads no
// more of it, is cut short: it is no use to the origin any more, and the
// connection is not reused.
func (b *bodyWriter) finish(w http.ResponseWriter) bool {
	select {
	case <-b.done:
	default:
		t := time.NewTimer(50 * time.Millisecond) // the last write may just be finishing
		select {
		case <-b.done:
			t.Stop()
		case <-t.C:
			http.NewResponseController(w).SetReadDeadline(time.Now())
			b.up.Close() // a write the origin does not read
			<-b.done
			return false
		}
	}
	return b.err == nil
}

// readHead reads the final response head for r with the origin client,
// forwarding informational answers (103 Early Hints...) to w for an
// HTTP/1.1 client (RFC 9110 §15.2). 100 Continue is not forwarded:
// net/http's server sends its own when it reads the body. With
// continueOnly, a 100 returns nil, nil: the body may go up.
func readHead(w *countingWriter, r *http.Request, uc *upConn, dl *responseDeadline, continueOnly bool) (*http.Response, error) {
	if !continueOnly {
		defer dl.disarm()
	}
	return uc.OC.ReadResponse(r, func(code int, hdr http.Header) error {
		if code == http.StatusContinue || !r.ProtoAtLeast(1, 1) {
			return nil
		}
		h := w.Header()
		origin.CopyHeader(h, hdr)
		w.WriteHeader(code)
		clear(h) // net/http keeps them for the final answer otherwise
		return nil
	}, continueOnly)
}

// copyResponse sends resp to w with the origin client's copier. A body
// that ends early (the origin reset), one the origin stops sending for
// idle (timeouts.tunnel_idle, as an intercepted body: origin.IdleBody),
// or a client that went away is an error; the response's end is then
// the connection's end.
func copyResponse(w *countingWriter, resp *http.Response, uc *upConn, idle time.Duration, via bool) error {
	resp.Body = origin.IdleBody(resp.Body, uc.Raw, idle)
	err := origin.CopyResponse(w, resp, via)
	if err != nil {
		uc.OC.Conn.Close() // or Close would read the rest
	}
	resp.Body.Close()
	uc.Raw.SetReadDeadline(time.Time{}) // IdleBody's, before uc is reused
	return err
}

// countingWriter counts the body bytes written to the client and
// whether the final answer's head is out.
type countingWriter struct {
	http.ResponseWriter
	n           int64
	wroteHeader bool
}

func (c *countingWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		c.wroteHeader = true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.wroteHeader = true
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// countingReader counts the request body bytes sent upstream and keeps
// the error that ended reading it (the client's, not the origin's).
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}
