package httpproxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/origin"
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

// denied is the 403 answer: headers a program can act on, and a body a
// person can read, naming the target, the rule, the reason and the fix.
func denied(id, target string, d policy.Decision) failure {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderDecision, "deny")
	h.Set(HeaderReason, string(d.Reason))
	h.Set(HeaderID, id)
	return failure{status: http.StatusForbidden, reason: denyReason(id, target, d), header: h, body: DenyBody(id, target, d)}
}

// denyReason is the 403's reason phrase: "egress denied HOST:PORT: WHY;
// to allow: HINT (id ID)", WHY being the body's rule: line (or the guard
// and the address it refused), HINT only when it is one line of YAML.
func denyReason(id, target string, d policy.Decision) string {
	why := "no rule matched"
	switch {
	case d.Rule != nil:
		why = d.Rule.Location()
		if d.Rule.Text != "" {
			why += " " + d.Rule.Text
		}
	case d.Reason != policy.ReasonNoRuleMatched && d.Reason != "":
		why = string(d.Reason)
		if d.IP.IsValid() && !strings.Contains(target, d.IP.String()) {
			why += " (" + d.IP.String() + ")"
		}
	}
	if d.Rule != nil && d.Rule.Note != "" {
		// The rule's reason: first, where a person looks; the rule after.
		why = d.Rule.Note + " (" + why + ")"
	}
	r := "egress denied " + target + ": " + why
	if strings.HasPrefix(d.Hint, "- ") && !strings.ContainsAny(d.Hint, "\r\n") {
		r += "; to allow: " + d.Hint
		if d.Reason.IsGuard() && d.HintLifts() != "" {
			// The status line is all many clients show: it says the
			// hint lifts a guard too (the body says what that opens).
			r += " (lifts " + string(d.Reason) + ")"
		}
	}
	return reasonPhrase(r, id)
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
		if d.Rule.Note != "" {
			b.WriteString("why: " + d.Rule.Note + "\n")
		}
	} else {
		switch {
		case d.Reason.IsGuard():
			b.WriteString("rule: none names this guarded address\n")
		case d.Reason == policy.ReasonNoRuleMatched:
			b.WriteString("rule: no rule matched\n")
		default:
			b.WriteString("rule: none\n")
		}
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
		if l := d.HintLifts(); l != "" {
			b.WriteString("which " + l + "\n")
		}
	case d.Hint != "":
		b.WriteString("hint: " + d.Hint + "\n")
	}
	b.WriteString("id: " + id + "\n")
	return b.String()
}

// maxReason bounds a reason phrase; what is longer loses its middle, never
// the id.
const maxReason = 300

// lingerTimeout is how long a connection closed after an answer keeps
// reading what the client still sends (net/http's rstAvoidanceDelay).
const lingerTimeout = 500 * time.Millisecond

// reasonPhrase makes text and the id a status line's reason phrase: one
// line of printable ASCII (RFC 9112 §4 allows no CR or LF; anything from
// a client's request, such as a host name, is replaced byte by byte), at
// most maxReason bytes.
func reasonPhrase(text, id string) string {
	tail := ""
	if id != "" {
		tail = " (id " + id + ")"
	}
	b := make([]byte, 0, len(text)+len(tail))
	for _, s := range []string{text, tail} {
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case c == '\t' || c == '\r' || c == '\n':
				c = ' '
			case c < 0x20 || c > 0x7e:
				c = '?'
			}
			b = append(b, c)
		}
	}
	if len(b) > maxReason {
		keep := maxReason - len(tail) - len("...")
		b = slices.Concat(b[:keep], []byte("..."), b[len(b)-len(tail):])
	}
	return string(b)
}

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
	c.SetWriteDeadline(time.Now().Add(DefaultHeaderTimeout))
	c.Write(f.raw(proto, head))
	go closeAfterAnswer(c)
}

// answerProto is the version of egress's answer to r: HTTP/1.0 to an
// HTTP/1.0 request, as net/http answers.
func answerProto(r *http.Request) string {
	if !r.ProtoAtLeast(1, 1) {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// raw is f as bytes on the wire: status line, headers (sorted, as
// net/http writes them, with its Date), body unless head.
func (f failure) raw(proto string, head bool) []byte {
	reason := f.reason
	if reason == "" {
		reason = http.StatusText(f.status)
	}
	h := f.header.Clone()
	h.Set("Connection", "close")
	h.Set("Content-Length", strconv.Itoa(len(f.body)))
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var b bytes.Buffer
	b.WriteString(proto + " " + strconv.Itoa(f.status) + " " + reason + "\r\n")
	h.Write(&b)
	b.WriteString("\r\n")
	if !head {
		b.WriteString(f.body)
	}
	return b.Bytes()
}

// closeAfterAnswer closes a connection whose client may still be sending
// (a request body, pipelined requests). Closing a socket with unread data
// sends a RST, which can destroy the answer before the client reads it;
// like net/http's closeWriteAndWait, half-close, read for a moment, close.
func closeAfterAnswer(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, c, 1<<20)
	}
	c.Close()
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
