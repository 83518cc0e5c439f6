package intercept_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// plainTunnel opens CONNECT api.vendor.test:PLAIN and returns the
// connection, over which plain HTTP goes.
func (f *fixture) plainTunnel(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", f.proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT api.vendor.test:%d HTTP/1.1\r\nHost: api.vendor.test:%[1]d\r\n\r\n", f.plainPort)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	return c, br
}

// Issue 20: plain HTTP inside a CONNECT tunnel to a host with http:
// rules is decided per request (it used to fail the TLS handshake).
func TestPlainHTTPInsideConnectIsDecidedPerRequest(t *testing.T) {
	f := newFixture(t)
	send := func(t *testing.T, c net.Conn, br *bufio.Reader, method, path string) (*http.Response, string) {
		t.Helper()
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: api.vendor.test:%d\r\nAuthorization: client-sent\r\nContent-Length: 0\r\n\r\n", method, path, f.plainPort)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}

	t.Run("an allowed GET goes through, twice on one tunnel, without inject", func(t *testing.T) {
		c, br := f.plainTunnel(t)
		for _, path := range []string{"/v1/license?x=1", "/v1/status/a/../b"} {
			resp, body := send(t, c, br, "GET", path)
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %s %q", path, resp.Status, body)
			}
			got := f.origin.last(t)
			if got.Header.Get("Authorization") != "client-sent" {
				t.Errorf("GET %s: Authorization upstream %q, want the client's own (no inject: on plain HTTP)", path, got.Header.Get("Authorization"))
			}
			if path == "/v1/status/a/../b" && got.URL.Path != "/v1/status/b" {
				t.Errorf("forwarded path %q, want the normal /v1/status/b", got.URL.Path)
			}
			if path == "/v1/license?x=1" && got.RequestURI != path {
				t.Errorf("forwarded %q, want %q (query as sent)", got.RequestURI, path)
			}
		}
	})

	t.Run("a refused POST gets egress's 403 with the explanation", func(t *testing.T) {
		before := f.origin.count()
		c, br := f.plainTunnel(t)
		resp, body := send(t, c, br, "POST", "/v1/admin")
		if resp.StatusCode != 403 {
			t.Fatalf("POST /v1/admin: %s %q", resp.Status, body)
		}
		if got := resp.Header.Get("X-Egress-Reason"); got != string(policy.ReasonNoRequestRuleMatched) {
			t.Errorf("X-Egress-Reason %q, want %q", got, policy.ReasonNoRequestRuleMatched)
		}
		want := fmt.Sprintf("POST http://api.vendor.test:%d/v1/admin", f.plainPort)
		if !strings.Contains(resp.Status, want) || !strings.Contains(body, want) {
			t.Errorf("403 does not name %q: %q / %q", want, resp.Status, body)
		}
		if f.origin.count() != before {
			t.Errorf("the refused request reached the origin")
		}
		e := f.logs.entryWith(t, string(policy.ReasonNoRequestRuleMatched))
		if e["method"] != "POST" || e["url"] != fmt.Sprintf("http://api.vendor.test:%d/v1/admin", f.plainPort) {
			t.Errorf("log line %v: want method and url", e)
		}
	})

	t.Run("a later refused request gets egress's 403 and ends the tunnel, before it goes up", func(t *testing.T) {
		c, br := f.plainTunnel(t)
		if resp, body := send(t, c, br, "GET", "/v1/license"); resp.StatusCode != 200 {
			t.Fatalf("GET: %s %q", resp.Status, body)
		}
		before := f.origin.count()
		fmt.Fprintf(c, "POST /v1/admin HTTP/1.1\r\nHost: api.vendor.test:%d\r\nContent-Length: 0\r\n\r\n", f.plainPort)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != string(policy.ReasonNoRequestRuleMatched) {
			t.Fatalf("a refused later request: %v %v, want egress's 403", resp, err)
		}
		if f.origin.count() != before {
			t.Errorf("the refused request reached the origin")
		}
	})
}

// Neither TLS nor an HTTP/1 request inside a CONNECT tunnel to a host
// with http: rules goes up: h2c's preface is not decided by method and
// path, and neither is a first line that does not end.
func TestConnectToInterceptedHostRefusesWhatIsNoRequest(t *testing.T) {
	f := newFixture(t)
	before := f.origin.count()
	for _, c := range []struct{ name, send string }{
		{"an h2c preface, in two writes", "PRI * HT|TP/2.0\r\n\r\nSM\r\n\r\n"},
		{"a first line that never ends", "GET /v1/license"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, br := f.plainTunnel(t)
			for _, part := range strings.Split(c.send, "|") {
				io.WriteString(conn, part)
			}
			if b, err := br.ReadByte(); err == nil {
				t.Fatalf("the tunnel answered (%q...): want it closed", b)
			}
			if f.origin.count() != before {
				t.Error("the bytes reached the origin")
			}
		})
	}
	e := f.logs.entryWith(t, string(policy.ReasonRequestsUndecided))
	if e["event"] != "deny" {
		t.Errorf("log line %v: want a deny", e)
	}
}
