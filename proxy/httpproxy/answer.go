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
	"github.com/egress-proxy/egress/proxy/dialer"
)

// Headers on every answer egress itself writes.
const (
	HeaderDecision = "X-Egress-Decision" // "deny" on a 403
	HeaderReason   = "X-Egress-Reason"   // the policy.Reason code
	HeaderID       = "X-Egress-Id"       // the decision id, also in the log line
)

var (
	errTooManyTunnels = errors.New("too many open tunnels")
	errBadRequest     = errors.New("bad proxy request")
)

// failure is an answer to a request egress could not or would not serve.
type failure struct {
	status int
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
	case errors.As(err, &de):
		return denied(id, target, de.Decision)
	case errors.Is(err, errBadRequest):
		status = http.StatusBadRequest
		b.WriteString("egress: bad request: " + err.Error() + "\n")
	case errors.Is(err, errTooManyTunnels):
		status = http.StatusServiceUnavailable
		b.WriteString("egress: too many open tunnels (limits.max_tunnels); try again later\n")
	case errors.As(err, &re):
		b.WriteString("egress: cannot resolve " + re.Host + ": " + re.Err.Error() + "\n")
	case errors.Is(err, os.ErrDeadlineExceeded):
		status = http.StatusGatewayTimeout
		b.WriteString("egress: timed out connecting to " + target + ": " + err.Error() + "\n")
	case isTimeout(err):
		// The Transport's timeouts.response: connected, then silence.
		status = http.StatusGatewayTimeout
		b.WriteString("egress: " + target + " did not answer in time: " + err.Error() + "\n")
	case errors.As(err, &ve), errors.As(err, &ue), errors.As(err, &he):
		b.WriteString("egress: TLS verification of " + target + " failed: " + err.Error() + "\n")
	}
	b.WriteString("id: " + id + "\n")
	return failure{status: status, header: h, body: b.String()}
}

// denied is the 403 answer: headers a program can act on, and a body a
// person can read, naming the target, the rule, the reason and the fix.
func denied(id, target string, d policy.Decision) failure {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderDecision, "deny")
	h.Set(HeaderReason, string(d.Reason))
	h.Set(HeaderID, id)
	return failure{status: http.StatusForbidden, header: h, body: DenyBody(id, target, d)}
}

// DenyBody is the text of a 403: what was denied, by which rule (or that
// none matched), why, and how to allow it.
func DenyBody(id, target string, d policy.Decision) string {
	var b strings.Builder
	b.WriteString("egress: access to " + target)
	if d.IP.IsValid() && !strings.Contains(target, d.IP.String()) {
		b.WriteString(" (" + d.IP.String() + ")")
	}
	b.WriteString(" denied by policy\n")
	if d.Rule != nil {
		b.WriteString("rule: " + d.Rule.Location())
		if d.Rule.Text != "" {
			b.WriteString(" " + d.Rule.Text)
		}
		b.WriteByte('\n')
	} else {
		b.WriteString("rule: no rule matched\n")
	}
	b.WriteString("reason: " + string(d.Reason) + "\n")
	if d.Source != "" {
		b.WriteString("policy: " + d.Source)
		if d.Policy != "" && d.Policy != "default" {
			b.WriteString(" (client " + d.Policy + ")")
		}
		b.WriteByte('\n')
	}
	switch {
	case strings.HasPrefix(d.Hint, "- "):
		where := "the policy file"
		if d.Source != "" && d.Source != policy.BuiltinSource {
			where = d.Source
		}
		b.WriteString("to allow it, add under allow: in " + where + ":\n  " + d.Hint + "\n")
	case d.Hint != "":
		b.WriteString("hint: " + d.Hint + "\n")
	}
	b.WriteString("id: " + id + "\n")
	return b.String()
}

// write sends f on a ResponseWriter (before any hijack).
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

// response turns f into an *http.Response for goproxy to copy out.
func (f failure) response(req *http.Request) *http.Response {
	return &http.Response{
		Status:        strconv.Itoa(f.status) + " " + http.StatusText(f.status),
		StatusCode:    f.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        f.header,
		Body:          io.NopCloser(strings.NewReader(f.body)),
		ContentLength: int64(len(f.body)),
		Request:       req,
	}
}

// targetString is host:port as the client asked for it, for answers.
func targetString(host string, port uint16) string {
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
		return "[" + host + "]:" + strconv.Itoa(int(port))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// isTimeout reports a timeout that is not a deadline on our own sockets,
// such as the Transport's "timeout awaiting response headers".
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
