// Package origin is egress's HTTP/1.1 client for origins: one request
// writer, one response reader (one header cap, one loop over 1xx answers,
// status validation), one hop-by-hop rule, and one response copier
// (trailers, flushing, Via). Every path that talks HTTP/1.1 to an origin
// uses it: the forward proxy's pooled requests, its upgrades (WebSocket),
// interception's requests and upgrades, and the transparent listener's
// plain-HTTP gate, which must know whether an origin really switched
// protocols. A 101 is handed to the tunnel by one switch (Switch).
//
// It dials nothing: connections come from the caller (dialled through
// the checking dialer), so that the decision on the address stays with
// the caller. It keeps them between requests (pool.go): the one pool of
// origin connections, for the forward proxy's plain-HTTP requests and
// interception's origin TLS connections, one pool per policy and
// clients: entry, keyed by what the caller dialled and verified. It lives outside proxy/httpproxy so that
// proxy/transparent can use it without importing the forward proxy.
//
// Why not net/http's Transport: it owns dialling and pooling (a pool per
// policy and clients: entry is egress's), it cannot hand a 101's
// connection to proxy/tunnel with the bytes read behind it, and it hides
// the 1xx answers a gate must relay; see README's Dependencies for the
// measured cost of each.
package origin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// MaxHeaderBytes caps an origin's status line and header, 1xx answers
// each; a larger one is a bad response (a 502).
const MaxHeaderBytes = 1 << 20

// Max1xx bounds the informational answers read before the final one.
const Max1xx = 5

// ErrBadResponse is wrapped by every error that says the origin's answer
// cannot be relayed (the caller answers 502): a header over the cap, too
// many 1xx, a status code outside 100–999, a 101 to a request that did not
// ask to switch.
var ErrBadResponse = errors.New("bad response")

var (
	ErrHeaderTooLarge error = badResponse(fmt.Sprintf("response header larger than %d KiB", MaxHeaderBytes>>10))
	ErrTooMany1xx     error = badResponse(fmt.Sprintf("more than %d informational responses", Max1xx))
	ErrUnasked101     error = badResponse("101 Switching Protocols to a request that did not ask to switch")
)

// badResponse is an ErrBadResponse with its own text.
type badResponse string

func (e badResponse) Error() string        { return string(e) }
func (e badResponse) Is(target error) bool { return target == ErrBadResponse }

// StatusError is a status code net/http cannot relay: outside 100–999
// (net/http's server panics on one; RFC 9110 §15 allows 100–599, and
// egress passes 600–999 as net/http and ReverseProxy do).
type StatusError struct{ Code int }

func (e StatusError) Error() string {
	return fmt.Sprintf("status code %d is outside 100-999", e.Code)
}
func (e StatusError) Unwrap() error { return ErrBadResponse }

// TimeoutError is the caller's response deadline passing before the
// response head came (timeouts.response: a 504).
type TimeoutError struct{}

func (TimeoutError) Error() string   { return "timeout awaiting response headers" }
func (TimeoutError) Timeout() bool   { return true }
func (TimeoutError) Temporary() bool { return true }

// Conn is one connection to an origin, used by one exchange at a time.
type Conn struct {
	net.Conn               // what requests are written on: a socket, or TLS over one
	BR       *bufio.Reader // responses are read from it
	BW       *bufio.Writer // requests are written to it
	lim      *limitReader  // under BR: caps a response header
}

// NewConn wraps c for exchanges.
func NewConn(c net.Conn) *Conn {
	lim := &limitReader{r: c, n: -1}
	return &Conn{Conn: c, BR: bufio.NewReaderSize(lim, 4<<10), BW: bufio.NewWriterSize(c, 4<<10), lim: lim}
}

// Got reports whether anything was read since ResetGot: a kept-alive
// connection that failed before a byte came was closed by the origin
// while idle, and an idempotent request can be sent again.
func (c *Conn) Got() bool { return c.lim.got }

// ResetGot starts a new exchange for Got.
func (c *Conn) ResetGot() { c.lim.got = false }

// limitReader reads at most n bytes until lifted: it caps what bufio and
// net/http's header parser may read of a response header.
type limitReader struct {
	r   io.Reader
	n   int64 // < 0: no limit
	got bool
}

func (l *limitReader) Read(b []byte) (int, error) {
	if l.n == 0 {
		return 0, ErrHeaderTooLarge
	}
	if l.n > 0 && int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.got = l.got || n > 0
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

// Informational is told of each 1xx answer but 101 before the final one:
// the forward proxy relays them to HTTP/1.1 clients (but 100, which
// net/http's server sends itself), the transparent gate relays them all.
type Informational func(code int, h http.Header) error

// ReadResponse reads the answer to req: 1xx answers go to info (nil drops
// them) until a final one, or a 101 to a request that asked to switch
// protocols (IsUpgrade), which is returned for the caller to make the
// connection a tunnel. With stopAt100, a 100 Continue returns nil, nil:
// the request body may go up. Errors: ErrHeaderTooLarge, ErrTooMany1xx,
// ErrUnasked101, StatusError, TimeoutError (the read deadline passed), or
// the connection's.
func (c *Conn) ReadResponse(req *http.Request, info Informational, stopAt100 bool) (*http.Response, error) {
	upgrade := IsUpgrade(req)
	for n := 0; ; n++ {
		if n > Max1xx {
			return nil, ErrTooMany1xx
		}
		c.lim.n = MaxHeaderBytes
		resp, err := http.ReadResponse(c.BR, req)
		c.lim.n = -1
		switch {
		case errors.Is(err, ErrHeaderTooLarge):
			return nil, ErrHeaderTooLarge
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, TimeoutError{}
		case err != nil:
			return nil, err
		}
		code := resp.StatusCode
		switch {
		case code < 100 || code > 999:
			return nil, StatusError{code}
		case code == http.StatusSwitchingProtocols && HeaderHasToken(resp.Header, "Upgrade", "h2c"):
			// egress never asks for h2c (StripH2C): HTTP/2 frames it
			// does not read would follow.
			return nil, ErrUnasked101
		case code == http.StatusSwitchingProtocols && (upgrade || req.Method == http.MethodConnect):
			return resp, nil
		case code == http.StatusSwitchingProtocols:
			return nil, ErrUnasked101
		case code == http.StatusContinue && stopAt100:
			return nil, nil
		case code < 200:
			if info != nil {
				if err := info(code, resp.Header); err != nil {
					return nil, err
				}
			}
		default:
			return resp, nil
		}
	}
}

// IsUpgrade reports whether r asks to switch protocols (RFC 9110 §7.8),
// as a WebSocket handshake does.
func IsUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && HeaderHasToken(r.Header, "Connection", "upgrade")
}

// StripH2C removes an h2c upgrade (RFC 7540 §3.2) from a request's
// header h, in place, and reports whether there was one: the h2c token
// from Upgrade (the header gone when no token is left, and with it the
// "upgrade" token of Connection) and HTTP2-Settings (and its Connection
// token). Every path that decides HTTP/1 requests one at a time calls it
// before a request goes up (the gate, the forward proxy): after a 101 to
// h2c the connection carries HTTP/2 frames, whose :authority egress does
// not read, so they could name any host the origin serves; this is the
// rule of the HTTP/2 preface (http2_prior_knowledge). Stripped rather
// than refused: the upgrade is an offer the origin may ignore, so an
// h2c-capable origin (Go's h2c, Apache mod_http2, Envoy) answers the
// request itself in HTTP/1.1 and the client (curl --http2, Go's h2c
// transport) goes on in HTTP/1.1: nothing that works stops working,
// where the preface, with no HTTP/1 answer, can only be refused.
func StripH2C(h http.Header) bool {
	if !HeaderHasToken(h, "Upgrade", "h2c") && h["Http2-Settings"] == nil {
		return false
	}
	upgrade := keepTokens(h["Upgrade"], func(t string) bool { return !strings.EqualFold(t, "h2c") })
	if upgrade == nil {
		delete(h, "Upgrade")
	} else {
		h["Upgrade"] = upgrade
	}
	delete(h, "Http2-Settings")
	conn := keepTokens(h["Connection"], func(t string) bool {
		return !strings.EqualFold(t, "http2-settings") && (upgrade != nil || !strings.EqualFold(t, "upgrade"))
	})
	if conn == nil {
		delete(h, "Connection")
	} else {
		h["Connection"] = conn
	}
	return true
}

// keepTokens returns the tokens of the comma-separated list values vs
// that keep accepts, as one value, or nil when none is left.
func keepTokens(vs []string, keep func(string) bool) []string {
	var kept []string
	for _, v := range vs {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" && keep(t) {
				kept = append(kept, t)
			}
		}
	}
	if kept == nil {
		return nil
	}
	return []string{strings.Join(kept, ", ")}
}

// HeaderHasToken reports whether a comma-separated list header has token.
func HeaderHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for s := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(s), token) {
				return true
			}
		}
	}
	return false
}

// HopHeader reports the headers that belong to one connection, not the
// message (RFC 9110 §7.6.1), and Proxy-* meant for egress: a proxy passes
// none of them on, in either direction. Content-Length is set by the
// writer from the body it sends.
func HopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// connectionNamed returns the headers h's Connection names (RFC 9110
// §7.6.1: they are hop-by-hop too), canonical, or nil.
func connectionNamed(h http.Header) map[string]bool {
	var named map[string]bool
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				if named == nil {
					named = map[string]bool{}
				}
				named[http.CanonicalHeaderKey(tok)] = true
			}
		}
	}
	return named
}

// CopyHeader copies src into dst but for hop-by-hop headers and those
// src's Connection header names: the one hop-by-hop rule, for requests
// and responses.
func CopyHeader(dst, src http.Header) {
	named := connectionNamed(src)
	for k, vs := range src {
		if !HopHeader(k) && !named[k] {
			dst[k] = vs
		}
	}
}

// DropHopHeaders deletes from h, in place, the hop-by-hop headers and
// those h's Connection header names: the one hop-by-hop rule, for a
// caller that must set headers after it (interception's inject:, which a
// client's "Connection: Authorization" must not strip).
func DropHopHeaders(h http.Header) {
	for k := range connectionNamed(h) {
		delete(h, k)
	}
	for k := range h {
		if HopHeader(k) {
			delete(h, k)
		}
	}
}

// Via is the value egress adds to Via (RFC 9110 §7.6.3) for a message
// received with protocol version major.minor: a pseudonym, no host name.
func Via(major, minor int) string {
	if major == 1 && minor == 1 {
		return "1.1 egress"
	}
	return strconv.Itoa(major) + "." + strconv.Itoa(minor) + " egress"
}

// Request says how WriteHead forwards a request.
type Request struct {
	// Via adds a Via entry (RFC 9110 §7.6.3).
	Via bool
	// Transparent keeps every header but the framing ones (the client
	// talks to the origin, not to a proxy it knows): the transparent
	// gate. Otherwise hop-by-hop headers are dropped, and an upgrade's
	// Upgrade and "Connection: Upgrade" are set again.
	Transparent bool
}

// WriteHead writes r's request line and header for the origin: origin
// form (or r.RequestURI as read, for Transparent), Host from the URI (RFC
// 9112 §3.2.2) or r.Host, the body's framing egress's own (Content-Length,
// or chunked for a body of unknown length).
func WriteHead(bw *bufio.Writer, r *http.Request, o Request) {
	host := r.Host
	uri := r.RequestURI
	if r.URL.Host != "" && !o.Transparent {
		host = r.URL.Host
	}
	if !o.Transparent || uri == "" {
		uri = r.URL.RequestURI()
	}
	if r.Method == http.MethodConnect {
		uri = host
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	if o.Transparent && r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		// The client's version: an HTTP/1.0 request (no Host, say)
		// must not become an HTTP/1.1 one the origin refuses.
		bw.WriteString(" HTTP/1.0\r\n")
	} else {
		bw.WriteString(" HTTP/1.1\r\n")
	}
	if host != "" {
		bw.WriteString("Host: ")
		bw.WriteString(host)
		bw.WriteString("\r\n")
	}
	var named map[string]bool
	if !o.Transparent {
		named = connectionNamed(r.Header)
	}
	for k, vs := range r.Header {
		switch {
		case k == "Content-Length" || k == "Transfer-Encoding" || k == "Host":
			continue
		case o.Transparent:
		case HopHeader(k) || named[k]:
			continue
		}
		writeField(bw, k, vs)
	}
	if !o.Transparent && IsUpgrade(r) {
		writeField(bw, "Upgrade", r.Header.Values("Upgrade"))
		bw.WriteString("Connection: Upgrade\r\n")
	}
	if o.Via {
		bw.WriteString("Via: ")
		bw.WriteString(Via(r.ProtoMajor, r.ProtoMinor))
		bw.WriteString("\r\n")
	}
	switch {
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
		bw.WriteString("\r\n")
	case r.ContentLength < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case r.Header["Content-Length"] != nil || r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
}

// writeField writes one header field line per value; a value net/http
// read cannot hold CR or LF, one set by a caller is cleaned.
func writeField(bw *bufio.Writer, k string, vs []string) {
	for _, v := range vs {
		bw.WriteString(k)
		bw.WriteString(": ")
		if strings.ContainsAny(v, "\r\n") {
			v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
		}
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}
}
