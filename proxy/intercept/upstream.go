package intercept

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/origin"
)

// roundTrip sends req to the origin and reads its answer's head, relaying
// 1xx answers to the client. The connection is an idle one from the pool
// of pol and the clients: entry of d, the request's decision, or a new one
// (dialOrigin), verified for x.name. When the new one is to another
// address than the connection's, d becomes the request's decision there.
func (x *exchange) roundTrip(ctx context.Context, pol *policy.Policy, d *policy.Decision, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	key := originKey{ip: x.c.Decision.IP, port: x.c.Request.Port, name: x.name, roots: x.s.roots()}
	pl := x.s.pools.For(pol, x.s.policy(), d.Policy)
	retry := replayable(req)
	for {
		x.up = pl.Get(key, retry)
		if x.up != nil {
			if x.c.Upstream != nil {
				// Dialled by the caller for the decision; not needed.
				x.c.Upstream.Close()
				x.c.Upstream = nil
			}
		} else {
			var err error
			if x.up, err = x.dialOrigin(ctx, pl, key, pol, d, req); err != nil {
				return nil, err
			}
			key = x.up.Key
		}
		x.hold()
		resp, err := x.exchangeOnce(pol, req, bw)
		if err != nil && x.up.Reused && !x.up.OC.Got() && retry {
			// The origin closed the kept-alive connection while it was
			// idle: nothing was read, so a request without a body may
			// go again on another one.
			x.up.Close()
			x.up = nil
			continue
		}
		return resp, err
	}
}

// dialOrigin makes a new origin connection for key: the caller's socket
// if it is still unused; else one dialled through the checking dialer to
// the addresses the caller decided (Conn.Resolved) where req, decided d
// on key.ip, is decided alike, key.ip first; else to key.ip. Then the TLS
// handshake, verified against key's roots for key's name, resuming a
// session when it can. A connection to another address than key.ip
// becomes the exchange's (Conn.Decision), and d the request's decision
// there: the decision logged is the one for the address used.
func (x *exchange) dialOrigin(ctx context.Context, pl *origin.Pool[originKey], key originKey, pol *policy.Policy, d *policy.Decision, req *http.Request) (*origin.PoolConn[originKey], error) {
	raw := x.c.Upstream
	x.c.Upstream = nil
	switch {
	case raw != nil:
	case len(x.c.Resolved.Allowed) > 0:
		res := x.c.Resolved.Prefer(key.ip)
		alike := make([]policy.Decision, 0, len(res.Allowed))
		there := make(map[netip.Addr]policy.Decision, len(res.Allowed))
		for _, a := range res.Allowed {
			rd := *d
			if a.IP != key.ip {
				rd = Decide(pol, x.c.Request, a, x.name, req)
				if !rd.Allowed() || rd.Rule != d.Rule || rd.RequestRule != d.RequestRule || rd.Reason != d.Reason || rd.Audit != d.Audit {
					continue
				}
			}
			alike = append(alike, a)
			there[a.IP] = rd
		}
		res.Allowed = alike
		c, dec, err := x.s.dialer().DialResolved(ctx, res)
		if err != nil {
			return nil, err
		}
		raw = c
		if dec.IP != key.ip {
			x.c.Decision, *d, key.ip = dec, there[dec.IP], dec.IP
		}
	default:
		var err error
		r := x.c.Request
		r.IP = key.ip
		if raw, _, err = x.s.dialer().Dial(ctx, "tcp", r); err != nil {
			return nil, err
		}
	}
	tc := tls.Client(raw, &tls.Config{
		ServerName:         key.name,
		RootCAs:            key.roots,
		NextProtos:         []string{"http/1.1"},
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: x.s.sessionCache(key.roots),
	})
	hctx, cancel := context.WithTimeout(ctx, DefaultHandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", key.name, err)
	}
	return origin.NewPoolConn(pl, key, origin.NewConn(tc), raw, key.ip), nil
}

// replayable reports a request that may be sent again: idempotent, no
// body.
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	}
	return false
}

// exchangeOnce writes req on x.up and reads the answer's head.
func (x *exchange) exchangeOnce(pol *policy.Policy, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	up := x.up.OC
	up.ResetGot()
	up.SetWriteDeadline(time.Now().Add(DefaultResponseTimeout))
	origin.WriteHead(up.BW, req, origin.Request{Via: pol.Listen.Via})
	err := up.BW.Flush()
	up.SetWriteDeadline(time.Time{}) // the body goes at the client's pace
	if err == nil && req.Body != nil {
		err = origin.WriteBody(up.BW, req, req.Body)
		if err == nil {
			err = up.BW.Flush()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("send request: %w", err)
	}
	rt := pol.Timeouts.Response
	if rt <= 0 {
		rt = DefaultResponseTimeout
	}
	up.SetReadDeadline(time.Now().Add(rt))
	resp, err := up.ReadResponse(req, func(code int, h http.Header) error {
		return origin.WriteInformational(bw, code, h)
	}, false)
	up.SetReadDeadline(time.Time{})
	return resp, err
}

func (s *Server) dialer() *dialer.Dialer {
	if s.Dialer != nil {
		return s.Dialer
	}
	return &dialer.Dialer{Policy: s.Policy}
}

// failure maps an error reaching the origin to the client's answer: the
// one place interception chooses 502 or 504.
func failure(id, target string, err error) answer.Answer {
	var ve *tls.CertificateVerificationError
	var re *dialer.ResolveError
	var ne net.Error
	switch {
	case errors.As(err, &ve):
		return answer.New(http.StatusBadGateway, id,
			"egress could not reach "+target+": TLS verification failed: "+rootCause(ve.Err),
			"egress: TLS verification of "+target+" failed: "+ve.Err.Error()+"\nhint: the origin's certificate must chain to the system roots or to tls.upstream_ca and name the host\n")
	case errors.As(err, &re):
		return answer.New(http.StatusBadGateway, id, "egress could not resolve "+re.Host, "egress: cannot resolve "+re.Host+": "+re.Err.Error()+"\n")
	case errors.Is(err, origin.ErrBadResponse):
		return answer.New(http.StatusBadGateway, id, "egress got a bad response from "+target+": "+err.Error(), "egress: bad response from "+target+": "+err.Error()+"\n")
	case errors.As(err, &ne) && ne.Timeout():
		return answer.New(http.StatusGatewayTimeout, id, "egress timed out reaching "+target+": "+rootCause(err), "egress: "+target+" did not answer in time: "+err.Error()+"\n")
	}
	return answer.New(http.StatusBadGateway, id, "egress could not reach "+target+": "+rootCause(err), "egress: cannot reach "+target+": "+err.Error()+"\n")
}

// rootCause is the innermost error of err's chain, without the "x509: "
// prefix: what a person acts on.
func rootCause(err error) string {
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed before a response"
	}
	return strings.TrimPrefix(err.Error(), "x509: ")
}

// refuse writes a on the client's TLS connection; the connection ends
// after it.
func (x *exchange) refuse(bw *bufio.Writer, proto string, head bool, a answer.Answer) {
	x.tc.SetWriteDeadline(time.Now().Add(DefaultHandshakeTimeout))
	bw.Write(a.Raw(proto, head))
	bw.Flush()
	// Let the client read the answer before the close: stop writing, read
	// what it still sends for a moment.
	x.tc.CloseWrite()
	x.tc.SetReadDeadline(time.Now().Add(answer.LingerTimeout))
	io.CopyN(io.Discard, x.tc, 1<<20)
}

// record logs one request (or the connection, when no request was read).
func (x *exchange) record(id string, d policy.Decision, method, url string, injected []string, err error) {
	x.s.Events.Record(x.entry(id, d, method, url, injected, err))
}

func (x *exchange) entry(id string, d policy.Decision, method, url string, injected []string, err error) eventlog.Entry {
	e := eventlog.Entry{ID: id, Proto: eventlog.ProtoHTTPS, Client: x.c.ClientAddr, Decision: d, Method: method, URL: url, Injected: injected, Err: err}
	if e.Decision.IP == (netip.Addr{}) {
		e.Decision.IP = x.c.Decision.IP
	}
	if method == "" {
		e.Duration = time.Since(x.start)
	}
	return e
}
