package httpproxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/answer"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/origin"
)

// Headers on every answer egress itself writes.
const (
	HeaderDecision = answer.HeaderDecision // "deny" on a 403
	HeaderReason   = answer.HeaderReason   // the policy.Reason code
	HeaderID       = answer.HeaderID       // the decision id, also in the log line
)

var (
	errTooManyTunnels = errors.New("too many open tunnels")
	errBadRequest     = errors.New("bad proxy request")
)

// failure is an answer to a request egress could not or would not serve.
// reason is the status line's reason phrase: clients that drop the body
// of a refused CONNECT (Python's http.client and httplib raise "Tunnel
// connection failed: 403 <reason>") still show what happened, to what,
// and the id to look for in the log.
type failure struct {
	status int
	reason string
	header http.Header
	body   string
}

// failureFor maps an error from deciding or dialling to the client's
// answer. It is the one place that chooses 400/403/502/503/504.
func failureFor(id, target string, dec policy.Decision, err error) failure {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderID, id)
	var b strings.Builder
	var reason string
	status := http.StatusBadGateway
	var de *dialer.DeniedError
	var re *dialer.ResolveError
	var ve *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case err == nil && !dec.Allowed():
		return denied(id, target, dec)
	case err == nil:
		err = errors.New("internal error")
		fallthrough
	default:
		b.WriteString("egress: cannot reach " + target + ": " + err.Error() + "\n")
		reason = "egress could not reach " + target + ": " + rootCause(err)
	case errors.As(err, &de):
		return denied(id, target, de.Decision)
	case errors.Is(err, errBadRequest):
		status = http.StatusBadRequest
		b.WriteString("egress: bad request: " + err.Error() + "\n")
		reason = "egress bad request: " + strings.TrimPrefix(err.Error(), errBadRequest.Error()+": ")
	case errors.Is(err, errRequestBody):
		// The client's body ended before its length, or was malformed.
		status = http.StatusBadRequest
		b.WriteString("egress: bad request: " + err.Error() + "\n")
		reason = "egress bad request: " + err.Error()
	case errors.Is(err, origin.ErrBadResponse):
		b.WriteString("egress: bad response from " + target + ": " + err.Error() + "\n")
		reason = "egress got a bad response from " + target + ": " + err.Error()
	case errors.Is(err, errTooManyTunnels):
		status = http.StatusServiceUnavailable
		b.WriteString("egress: too many open tunnels (limits.max_tunnels); try again later\n")
		reason = "egress too many open tunnels (limits.max_tunnels)"
	case errors.As(err, &re):
		b.WriteString("egress: cannot resolve " + re.Host + ": " + re.Err.Error() + "\n")
		reason = "egress could not resolve " + re.Host + ": " + resolveCause(re.Err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		status = http.StatusGatewayTimeout
		b.WriteString("egress: timed out connecting to " + target + ": " + err.Error() + "\n")
		reason = "egress timed out reaching " + target + ": connect timed out (timeouts.dial)"
	case isTimeout(err):
		// timeouts.response: connected, then silence.
		status = http.StatusGatewayTimeout
		b.WriteString("egress: " + target + " did not answer in time: " + err.Error() + "\n")
		reason = "egress timed out reaching " + target + ": " + rootCause(err)
	case errors.As(err, &ve), errors.As(err, &ue), errors.As(err, &he):
		b.WriteString("egress: TLS verification of " + target + " failed: " + err.Error() + "\n")
		reason = "egress could not reach " + target + ": TLS verification failed: " + rootCause(err)
	}
	b.WriteString("id: " + id + "\n")
	return failure{status: status, reason: reasonPhrase(reason, id), header: h, body: b.String()}
}

// denied is the 403 answer, built by proxy/answer (the one home of
// refusal text, shared with interception).
func denied(id, target string, d policy.Decision) failure {
	a := answer.Denied(id, target, d)
	return failure{status: a.Status, reason: a.Reason, header: a.Header, body: a.Body}
}

// DenyBody is the text of a 403: see answer.DenyBody.
func DenyBody(id, target string, d policy.Decision) string { return answer.DenyBody(id, target, d) }

// reasonPhrase is answer.ReasonPhrase.
func reasonPhrase(text, id string) string { return answer.ReasonPhrase(text, id) }

// rootCause is the innermost error of err's chain, what a person acts on
// ("connection refused"), without wrappers such as "dial tcp ADDR:" that
// repeat the target.
func rootCause(err error) string {
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed before a response"
	}
	s := strings.TrimPrefix(err.Error(), "net/http: ")
	return strings.TrimPrefix(s, "x509: ")
}

// resolveCause tells a name that does not exist (NXDOMAIN) from a DNS
// server that failed (SERVFAIL, REFUSED, unreachable) or did not answer.
func resolveCause(err error) string {
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return "no such host"
	case isTimeout(err):
		return "DNS timeout"
	case errors.As(err, &de):
		return "DNS server failure"
	}
	return rootCause(err)
}

// send writes f on w's connection, with f's reason phrase, and closes the
// connection. net/http's WriteHeader always writes the standard phrase
// (StatusText), so the answer is written on the hijacked connection; one
// that cannot be hijacked (HTTP/2) gets the standard phrase. Nothing must
// have been written on w yet.
func (f failure) send(w http.ResponseWriter, r *http.Request) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		f.write(w, true)
		return
	}
	f.sendConn(c, answerProto(r), r.Method == http.MethodHead)
}

// sendConn writes f on c, a connection no longer net/http's, and closes
// it.
func (f failure) sendConn(c net.Conn, proto string, head bool) {
	answer.Send(c, f.raw(proto, head))
}

// answerProto is the version of egress's answer to r: HTTP/1.0 to an
// HTTP/1.0 request, as net/http answers.
func answerProto(r *http.Request) string {
	if !r.ProtoAtLeast(1, 1) {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// raw is f as bytes on the wire (answer.Answer.Raw).
func (f failure) raw(proto string, head bool) []byte {
	return answer.Answer{Status: f.status, Reason: f.reason, Header: f.header, Body: f.body}.Raw(proto, head)
}

// write sends f through a ResponseWriter with the standard reason phrase:
// the fallback of send.
func (f failure) write(w http.ResponseWriter, closeConn bool) {
	for k, v := range f.header {
		w.Header()[k] = v
	}
	if closeConn {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
	w.WriteHeader(f.status)
	io.WriteString(w, f.body)
}

// targetString is host:port as the client asked for it, for answers.
func targetString(host string, port uint16) string {
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
		return "[" + host + "]:" + strconv.Itoa(int(port))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// isTimeout reports a timeout that is not a dial's deadline, such as
// timeouts.response's "timeout awaiting response headers".
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
