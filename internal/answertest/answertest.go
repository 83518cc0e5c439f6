// Package answertest reads, in tests, the answers egress writes itself
// (proxy/answer) off a client's connection, and checks them the way a
// person reading them would. It is for tests only.
package answertest

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Refusal reads egress's answer to a refused request (method, target
// "METHOD URL") from br, and checks it: a 403 whose status line
// ("403 egress denied TARGET: ... (id ID)") and body ("egress: access to
// TARGET ...", "reason: REASON", "id: ID") explain it, X-Egress-Decision
// and X-Egress-Reason, Connection: close, then the end of the
// connection. It returns the decision id, which the log line carries.
func Refusal(tb testing.TB, br *bufio.Reader, method, target, reason string) string {
	tb.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		tb.Fatalf("the refused %s got no answer: %v", target, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("the body of the 403 to %s: %v", target, err)
	}
	id := resp.Header.Get("X-Egress-Id")
	if resp.StatusCode != http.StatusForbidden || id == "" ||
		!strings.HasPrefix(resp.Status, "403 egress denied "+target+": ") || !strings.HasSuffix(resp.Status, "(id "+id+")") {
		tb.Errorf("status line %q, want 403 egress denied %s: ... (id %s)", resp.Status, target, id)
	}
	if got := resp.Header.Get("X-Egress-Decision"); got != "deny" {
		tb.Errorf("X-Egress-Decision = %q, want deny", got)
	}
	if got := resp.Header.Get("X-Egress-Reason"); got != reason {
		tb.Errorf("X-Egress-Reason = %q, want %q", got, reason)
	}
	if !resp.Close {
		tb.Errorf("the 403 to %s does not say Connection: close: %v", target, resp.Header)
	}
	b := string(body)
	switch {
	case method == http.MethodHead && b != "":
		tb.Errorf("the 403 to a HEAD has a body: %q", b)
	case method != http.MethodHead && (!strings.HasPrefix(b, "egress: access to "+target+" ") ||
		!strings.Contains(b, "\nreason: "+reason+"\n") || !strings.HasSuffix(b, "id: "+id+"\n")):
		tb.Errorf("the body %q does not explain the refusal of %s", b, target)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		tb.Errorf("after the 403: %q, %v; want the end of the connection", rest, err)
	}
	return id
}

// Unreadable reads egress's answer to a request it could not read from
// br, and checks it: status (400, or 431 for a head over
// limits.max_header_bytes) with the explanation and the id in the status
// line ("400 egress bad request: ... (id ID)", "431 egress request header
// fields too large (limits.max_header_bytes) (id ID)") and the body
// ("egress: bad request: ...", "id: ID"), X-Egress-Id, Connection: close,
// then the end of the connection. It returns the id, which the log line
// carries.
func Unreadable(tb testing.TB, br *bufio.Reader, status int) string {
	tb.Helper()
	phrase, text := "egress bad request: ", "egress: bad request: "
	if status == http.StatusRequestHeaderFieldsTooLarge {
		phrase, text = "egress request header fields too large (limits.max_header_bytes) ", "egress: the request header is over limits.max_header_bytes\n"
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		tb.Fatalf("the unreadable request got no answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("the body of the %d: %v", status, err)
	}
	id := resp.Header.Get("X-Egress-Id")
	if resp.StatusCode != status || id == "" || !strings.HasPrefix(resp.Status, fmt.Sprintf("%d %s", status, phrase)) ||
		!strings.HasSuffix(resp.Status, "(id "+id+")") {
		tb.Errorf("status line %q (X-Egress-Id %q), want %d %s... (id ID)", resp.Status, id, status, phrase)
	}
	if !resp.Close {
		tb.Errorf("the %d does not say Connection: close: %v", status, resp.Header)
	}
	if b := string(body); !strings.HasPrefix(b, text) || !strings.HasSuffix(b, "id: "+id+"\n") {
		tb.Errorf("the body %q does not explain the refusal", b)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		tb.Errorf("after the %d: %q, %v; want the end of the connection", status, rest, err)
	}
	return id
}

// LaterUnreadable are requests net/http's reader refuses (each for
// another reason), sent on a connection after an allowed request to
// host: each gets the status egress answers it with.
func LaterUnreadable(host string) []struct {
	Name, Raw string
	Status    int
} {
	return []struct {
		Name, Raw string
		Status    int
	}{
		{"a header line without a colon", "GET /2 HTTP/1.1\r\nHost " + host + "\r\n\r\n", http.StatusBadRequest},
		{"a bare CR in a header value", "GET /2 HTTP/1.1\r\nHost: " + host + "\r\nX-A: a\rb\r\n\r\n", http.StatusBadRequest},
		{"two Host headers", "GET /2 HTTP/1.1\r\nHost: " + host + "\r\nHost: " + host + "\r\n\r\n", http.StatusBadRequest},
		{"a head over limits.max_header_bytes", "GET /2 HTTP/1.1\r\nHost: " + host + "\r\nX-Pad: " + strings.Repeat("p", 70<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	}
}
