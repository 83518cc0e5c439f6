package intercept

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/peek"
)

// Decide decides one request read from a connection (conn, decided
// connDec) to name, the host egress presented a certificate for (or the
// plain-HTTP connection's host): its Host must name name, on the
// connection's port (else policy.ReasonHostMismatch); then the policy decides
// its method and path (the path as sent, without the query; Decide
// normalises it). The returned Decision's Path is what to forward.
//
// It is the one request decision of every path that reads requests to
// an intercepted destination: this package, the forward proxy's plain
// http:// requests, and the transparent listener's plain-HTTP gate,
// which must ignore Inject (never on plain HTTP).
func Decide(pol *policy.Policy, conn policy.Request, connDec policy.Decision, name string, r *http.Request) policy.Decision {
	p := RequestPath(r)
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		host, port = r.Host, ""
	}
	n, ip, err := policy.NormalizeHost(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	if err == nil && n == "" && ip.IsValid() {
		n = ip.String() // an IP literal names the address (name is then its text)
	}
	if err != nil || n != name || port != "" && port != strconv.Itoa(int(conn.Port)) {
		d := connDec
		d.Verdict, d.Audit, d.Rule, d.RequestRule, d.Inject, d.Reason = policy.Deny, false, nil, nil, nil, policy.ReasonHostMismatch
		d.Method, d.Path = r.Method, p
		d.Hint = fmt.Sprintf("the request names Host %q on a connection to %s; egress forwards requests to %s only", r.Host, name, name)
		return d
	}
	q := conn
	q.IP = connDec.IP
	q.Method, q.Path = r.Method, p
	return pol.Decide(q)
}

// DecidePlain decides r, a plain-HTTP request on a connection (conn,
// decided connDec) to an intercepted destination, with Decide, on its
// Host, method and path; an allowed request's target is rewritten to the
// normal path with the query as sent (inject: never applies to plain
// HTTP, so the Decision's Inject is for no one). It returns the refusal,
// or nil. The plain-HTTP gates of the CONNECT and transparent paths call
// it (issue 20).
func DecidePlain(pol *policy.Policy, conn policy.Request, connDec policy.Decision, r *http.Request) *policy.Decision {
	d := Decide(pol, conn, connDec, PresentedName(connDec), r)
	if !d.Allowed() {
		return &d
	}
	query := ""
	if i := strings.IndexByte(r.RequestURI, '?'); i >= 0 {
		query = r.RequestURI[i:]
	}
	r.RequestURI = d.Path + query
	return nil
}

// RefusedURL is the URL a refused plain-HTTP request r on a connection
// to port allowed by dec (a CONNECT tunnel, a transparent connection)
// names in its 403 and its line: the name its request rules are decided
// on (intercepted destinations, PresentedName) or the host r names, the
// connection's port, the path decided on (d.Path, or as sent), no query.
func RefusedURL(dec policy.Decision, port uint16, r *http.Request, d policy.Decision) string {
	name, path := peek.RequestHost(r), d.Path
	if dec.Intercept || name == "" {
		name = PresentedName(dec)
	}
	if path == "" {
		path = RequestPath(r)
	}
	return URL("http", name, port, path)
}

// RequestPath is the path of r's request target as the client sent it,
// without the query: what Decide normalises.
func RequestPath(r *http.Request) string {
	u := r.RequestURI
	if i := strings.Index(u, "://"); i > 0 && !strings.HasPrefix(u, "/") {
		// absolute-form: scheme://authority/path
		rest := u[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			u = rest[j:]
		} else {
			u = "/"
		}
	}
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	return u
}

// URL is the URL a request decision names in answers and logs: scheme,
// host, port when not the scheme's, path in normal form, no query.
func URL(scheme, host string, port uint16, path string) string {
	h := host
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() {
		h = "[" + host + "]"
	}
	if !(scheme == "https" && port == 443) && !(scheme == "http" && port == 80) && port != 0 {
		h += ":" + strconv.Itoa(int(port))
	}
	return scheme + "://" + h + path
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
