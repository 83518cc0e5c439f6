// Package answer builds the answers egress itself writes to HTTP clients:
// the 403 of a refusal (status line, X-Egress-* headers, a body a person
// can read) and the raw bytes of any answer on a connection that is no
// longer net/http's. Every data path that refuses over HTTP (the forward
// proxy, CONNECT, interception) writes its refusals with it, so that a
// refusal reads the same wherever it happens.
//
// It decides nothing and maps no errors but one: a request egress read
// itself and could not read (BadRequest) is answered alike on every path
// that reads requests (interception, a gated plain-HTTP connection); each
// data path has its own function from other errors to answers.
package answer

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/peek"
)

// Headers on every answer egress itself writes.
const (
	HeaderDecision = "X-Egress-Decision" // "deny" on a 403
	HeaderReason   = "X-Egress-Reason"   // the policy.Reason code
	HeaderID       = "X-Egress-Id"       // the decision id, also in the log line
)

// Answer is an answer to a request egress could not or would not serve.
// Reason is the status line's reason phrase: clients that drop the body
// of a refused CONNECT (Python's http.client and httplib raise "Tunnel
// connection failed: 403 <reason>") still show what happened, to what,
// and the id to look for in the log.
type Answer struct {
	Status int
	Reason string
	Header http.Header
	Body   string
}

// New is an answer with status, reason phrase text (the id is appended)
// and body (the id line is appended), and egress's headers.
func New(status int, id, text, body string) Answer {
	h := baseHeader(id)
	return Answer{Status: status, Reason: ReasonPhrase(text, id), Header: h, Body: body + "id: " + id + "\n"}
}

func baseHeader(id string) http.Header {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderID, id)
	return h
}

// BadRequest is the answer to a request egress read itself with
// peek.RequestReader and could not read (err, Read's: a malformed head,
// one net/http's server refuses): 400 saying why, or, for a head over
// limits.max_header_bytes, the 431 the forward proxy answers a CONNECT's
// with. Written as HTTP/1.1: the request's version could not be read.
func BadRequest(id string, err error) Answer {
	if errors.Is(err, peek.ErrHeadTooLarge) {
		return New(http.StatusRequestHeaderFieldsTooLarge, id, "egress request header fields too large (limits.max_header_bytes)",
			"egress: the request header is over limits.max_header_bytes\n")
	}
	return New(http.StatusBadRequest, id, "egress bad request: "+err.Error(), "egress: bad request: "+err.Error()+"\n")
}

// Denied is the 403 answer: headers a program can act on, and a body a
// person can read, naming the target, the rule, the reason and the fix.
// target is HOST:PORT for a connection, "METHOD URL" for a request.
func Denied(id, target string, d policy.Decision) Answer {
	h := baseHeader(id)
	h.Set(HeaderDecision, "deny")
	h.Set(HeaderReason, string(d.Reason))
	return Answer{Status: http.StatusForbidden, Reason: denyReason(id, target, d), Header: h, Body: DenyBody(id, target, d)}
}

// denyReason is the 403's reason phrase: "egress denied TARGET: WHY;
// to allow: HINT (id ID)", WHY being the body's rule: line (or the guard
// and the address it refused), HINT only when it is one line of YAML.
func denyReason(id, target string, d policy.Decision) string {
	why := "no rule matched"
	hint := d.Hint
	switch {
	case d.Reason == policy.ReasonNoRequestRuleMatched:
		why = "no request rule matched"
		hint = policy.RequestHint(d.Method, d.Path)
	case d.RequestRule != nil:
		why = d.RequestRule.Location() + " " + d.RequestRule.Text()
		if d.RequestRule.Note != "" {
			why = d.RuleReason() + " (" + why + ")"
		}
	case d.Reason == policy.ReasonInvalidPath || d.Reason == policy.ReasonInvalidMethod:
		why = string(d.Reason)
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
	if r := d.RuleReason(); d.RequestRule == nil && r != "" {
		// The rule's reason: first, where a person looks; the rule after.
		why = r + " (" + why + ")"
	}
	r := "egress denied " + target + ": " + why
	if strings.HasPrefix(hint, "- ") && !strings.ContainsAny(hint, "\r\n") {
		r += "; to allow: " + hint
		if d.Reason.IsGuard() && d.HintLifts() != "" {
			// The status line is all many clients show: it says the
			// hint lifts a guard too (the body says what that opens).
			r += " (lifts " + string(d.Reason) + ")"
		}
	}
	return ReasonPhrase(r, id)
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
		if d.RequestRule != nil {
			b.WriteString("request rule: " + d.RequestRule.Location() + " " + d.RequestRule.Text() + "\n")
			if d.RequestRule.Note != "" {
				b.WriteString("why: " + d.RuleReason() + "\n")
			}
		} else if r := d.RuleReason(); r != "" {
			b.WriteString("why: " + r + "\n")
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

// LingerTimeout is how long a connection closed after an answer keeps
// reading what the client still sends (net/http's rstAvoidanceDelay).
const LingerTimeout = 500 * time.Millisecond

// ReasonPhrase makes text and the id a status line's reason phrase: one
// line of printable ASCII (RFC 9112 §4 allows no CR or LF; anything from
// a client's request, such as a host name, is replaced byte by byte), at
// most maxReason bytes.
func ReasonPhrase(text, id string) string {
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

// Raw is a as bytes on the wire: status line, headers (sorted, as
// net/http writes them, with its Date, and Connection: close), body
// unless head.
func (a Answer) Raw(proto string, head bool) []byte {
	reason := a.Reason
	if reason == "" {
		reason = http.StatusText(a.Status)
	}
	h := a.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("Connection", "close")
	h.Set("Content-Length", strconv.Itoa(len(a.Body)))
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var b bytes.Buffer
	b.WriteString(proto + " " + strconv.Itoa(a.Status) + " " + reason + "\r\n")
	h.Write(&b)
	b.WriteString("\r\n")
	if !head {
		b.WriteString(a.Body)
	}
	return b.Bytes()
}

// WriteTimeout bounds the write of an answer egress writes itself on a
// connection no longer net/http's (Send).
const WriteTimeout = 10 * time.Second

// Send writes b, an answer, on c, a connection no longer net/http's,
// within WriteTimeout, and closes c once the client has had the time to
// read it (CloseAfter, on a goroutine of its own: the caller goes on).
func Send(c net.Conn, b []byte) {
	c.SetWriteDeadline(time.Now().Add(WriteTimeout))
	c.Write(b)
	go CloseAfter(c)
}

// CloseAfter closes a connection whose client may still be sending
// (a request body, pipelined requests). Closing a socket with unread data
// sends a RST, which can destroy the answer before the client reads it;
// like net/http's closeWriteAndWait, half-close, read for a moment, close.
func CloseAfter(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		Linger(c)
	}
	c.Close()
}

// Linger reads and drops what the client still sends on c, whose answer
// is out and whose sending side is (or is about to be) half-closed, for
// LingerTimeout or until the client closes, so that the close that
// follows does not reset the answer away.
func Linger(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(LingerTimeout))
	io.CopyN(io.Discard, c, 1<<20)
}

// RefusedRequest is the 403 to r, a request egress read itself and
// refused on a gated plain-HTTP connection (inside a CONNECT tunnel, on
// the transparent listener), as bytes on the wire: target "METHOD URL",
// url naming what egress decided on (no query string), in r's HTTP
// version, without a body to a HEAD, with Connection: close.
func RefusedRequest(id, url string, r *http.Request, d policy.Decision) []byte {
	proto := "HTTP/1.1"
	if !r.ProtoAtLeast(1, 1) {
		proto = "HTTP/1.0"
	}
	return Denied(id, r.Method+" "+url, d).Raw(proto, r.Method == http.MethodHead)
}
