package httpproxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/answertest"
	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/internal/tlstest"
	"github.com/egress-proxy/egress/policy"
)

// requestRulesPolicy intercepts origin.test: GET /x only (issue 20);
// plain HTTP to it in a CONNECT tunnel is decided per request.
const requestRulesPolicy = `version: 1
default: allow
allow:
  - cidr: 127.0.0.1/32
  - host: origin.test
    http:
      - methods: [GET]
        paths: ["/x"]
deny:
  - host: denied.test
    reason: "denied.test is off limits"
`

// requestCounter is a plain HTTP origin on 127.0.0.1 that counts the
// requests it served and answers with their Host and path; it returns
// its port.
func requestCounter(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	o := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.WriteString(w, "origin host="+r.Host+" path="+r.URL.Path)
	}))
	t.Cleanup(o.Close)
	return portOf(o.URL), &n
}

// tunnelTo opens a CONNECT tunnel to origin.test:port and returns it
// after the 200.
func (f *fixture) tunnelTo(t *testing.T, port string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := f.dial()
	io.WriteString(c, "CONNECT origin.test:"+port+" HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	return c, br
}

// Every request refused on a kept-alive CONNECT tunnel carrying plain
// HTTP gets egress's 403 with the explanation, the later ones as the
// first: after the answers to the requests before it, never sent up, and
// nothing pipelined behind it either. Before, only a first request
// refused by a request rule was answered; any other refusal closed the
// tunnel ("remote end closed connection without response").
func TestConnectGatedRefusalIsAnswered(t *testing.T) {
	get := func(method, path, host string) string {
		return method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	}
	for _, tc := range []struct {
		name, policy string
		send         string // after the 200, in one write
		allowed      int    // requests served (and answered) before the 403
		method, host string // the refused request's, to /v1/admin
		reason       policy.Reason
	}{
		{"a later request for a refused host", testPolicy,
			get("GET", "/x", "origin.test") + get("GET", "/v1/admin?token=s3cret", "denied.test"), 1,
			"GET", "denied.test", policy.ReasonHostMismatch},
		{"a refused host pipelined between allowed requests", testPolicy,
			get("GET", "/x", "origin.test") + get("GET", "/v1/admin", "denied.test") + get("GET", "/after", "origin.test"), 1,
			"GET", "denied.test", policy.ReasonHostMismatch},
		{"a first request for a refused host, pipelined before an allowed one", testPolicy,
			get("GET", "/v1/admin", "denied.test") + get("GET", "/after", "origin.test"), 0,
			"GET", "denied.test", policy.ReasonHostMismatch},
		{"a later HEAD for a refused host", testPolicy,
			get("GET", "/x", "origin.test") + get("HEAD", "/v1/admin", "denied.test"), 1,
			"HEAD", "denied.test", policy.ReasonHostMismatch},
		{"a later request with a body for a refused host", testPolicy,
			get("GET", "/x", "origin.test") + "POST /v1/admin HTTP/1.1\r\nHost: denied.test\r\nContent-Length: 5\r\n\r\nhello" + get("GET", "/after", "origin.test"), 1,
			"POST", "denied.test", policy.ReasonHostMismatch},
		{"a later request refused by a request rule", requestRulesPolicy,
			get("GET", "/x", "origin.test") + get("POST", "/v1/admin", "origin.test"), 1,
			"POST", "origin.test", policy.ReasonNoRequestRuleMatched},
		{"a request refused by a request rule pipelined between allowed ones", requestRulesPolicy,
			get("GET", "/x", "origin.test") + get("GET", "/v1/admin", "origin.test") + get("GET", "/x", "origin.test"), 1,
			"GET", "origin.test", policy.ReasonNoRequestRuleMatched},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.policy)
			port, served := requestCounter(t)
			c, br := f.tunnelTo(t, port)
			io.WriteString(c, tc.send)
			for i := 0; i < tc.allowed; i++ {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || !strings.Contains(string(b), "origin host=origin.test") {
					t.Fatalf("answer %d: %s %q", i, resp.Status, b)
				}
			}
			url := "http://" + tc.host + ":" + port + "/v1/admin"
			id := answertest.Refusal(t, br, tc.method, tc.method+" "+url, string(tc.reason))
			// The line of the refusal carries the same id, the method
			// and the URL (never the query).
			e := f.logs.waitEntry(t, id)
			if e["reason"] != string(tc.reason) || e["method"] != tc.method || e["url"] != url {
				t.Errorf("log line %v", e)
			}
			// Neither the refused request nor one behind it went up.
			if n := served.Load(); int(n) != tc.allowed {
				t.Errorf("the origin served %d requests, want %d", n, tc.allowed)
			}
		})
	}
}

// A later request in a kept-alive CONNECT tunnel carrying plain HTTP that
// net/http's reader cannot read is answered as on the transparent path: a
// 400 (431 for a head over limits.max_header_bytes) with the tunnel's id,
// after the answer to the request before it (the two sent pipelined),
// logged once as http_unreadable; the origin sees only the first. Before,
// the tunnel was closed without an answer, the first one's included.
func TestConnectGatedUnreadableRequestIsAnswered(t *testing.T) {
	f := newFixture(t, testPolicy)
	port, served := requestCounter(t)
	for _, tc := range answertest.LaterUnreadable("origin.test:" + port) {
		t.Run(tc.Name, func(t *testing.T) {
			served.Store(0)
			c, br := f.tunnelTo(t, port)
			io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n"+tc.Raw)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("the first request: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "origin host=origin.test:"+port+" path=/1" {
				t.Fatalf("the first request: %s %q", resp.Status, b)
			}
			id := answertest.Unreadable(t, br, tc.Status)
			if e := f.logs.waitEntry(t, id); e["reason"] != string(policy.ReasonHTTPUnreadable) || e["event"] != "deny" {
				t.Errorf("log line %v, want a deny with reason http_unreadable", e)
			}
			if n := served.Load(); n != 1 {
				t.Errorf("the origin served %d requests, want only the first", n)
			}
		})
	}
}

// Python's http.client (3) and httplib (2.7) through a CONNECT tunnel
// (set_tunnel), keeping the connection: a second request refused by a
// request rule gives the program egress's status and reason, as a first
// one would. Before, the program got "connection reset by peer".
func TestConnectGatedRefusalPython(t *testing.T) {
	f := newFixture(t, requestRulesPolicy)
	originPort, _ := requestCounter(t)
	host, port, _ := net.SplitHostPort(f.addr)
	const script = `
import sys
try:
    import http.client as client
except ImportError:
    import httplib as client
c = client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
c.set_tunnel("origin.test", int(sys.argv[3]))
c.request("GET", "/x")
r = c.getresponse()
print("%d %s" % (r.status, r.read().decode()))
c.request("POST", "/v1/admin", body="{}")
r = c.getresponse()
print("%d %s" % (r.status, r.reason))
print(r.getheader("X-Egress-Reason"))
`
	for _, py := range []struct{ name, bin string }{{"python3", "python3"}, {"python2.7", "python2.7"}} {
		t.Run(py.name, func(t *testing.T) {
			var env []string
			if py.bin == "python2.7" {
				env = append(env, "PYENV_VERSION=2.7.18")
			}
			need(t, py.bin, env...)
			out, err := run(t, env, py.bin, "-c", script, host, port, originPort)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			t.Logf("%s prints:\n%s", py.name, out)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			want := "403 egress denied POST http://origin.test:" + originPort + "/v1/admin: no request rule matched; to allow: "
			if len(lines) != 3 || !strings.HasPrefix(lines[0], "200 origin host=origin.test") || !strings.HasPrefix(lines[1], want) || lines[2] != string(policy.ReasonNoRequestRuleMatched) {
				t.Fatalf("%s printed:\n%s\nwant the first answered, then %q...", py.name, out, want)
			}
		})
	}
}

// A reload between the CONNECT and the client's first bytes applies to
// them: the tunnel, not yet an open one that reload.revoke_open sees, is
// decided again on the policy in force when they come, and refused with
// the new policy's reason and rule. Before, the policy of the CONNECT
// decided them, and the bytes went up.
func TestConnectReloadBeforeFirstBytes(t *testing.T) {
	const reloaded = "version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1/32\ndeny:\n  - host: origin.test\n    reason: \"origin.test was just closed\"\n"
	for _, tc := range []struct {
		name  string
		first string
	}{
		{"plain HTTP", "GET /x HTTP/1.1\r\nHost: origin.test\r\n\r\n"},
		{"a protocol egress does not read", "hello\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cur atomic.Pointer[policy.Policy]
			f := newFixture(t, testPolicy, swappablePolicy(&cur))
			port, seen := requestCounter(t)
			c, br := f.tunnelTo(t, port)
			p, err := policy.Load("reloaded.yaml", []byte(reloaded))
			if err != nil {
				t.Fatal(err)
			}
			cur.Store(p)
			io.WriteString(c, tc.first)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, _ := io.ReadAll(br); strings.Contains(string(b), "200 OK") {
				t.Errorf("the origin answered after the reload: %q", b)
			}
			line := f.logs.waitLine(t, "the refusal of the tunnel", func(e map[string]any) bool { return e["event"] == "deny" })
			if line["reason"] != string(policy.ReasonDeniedByRule) || line["rule"] != "reloaded.yaml:6" || line["rule_reason"] != "origin.test was just closed" {
				t.Errorf("log line %v, want the reloaded policy's refusal", line)
			}
			if n := seen.Load(); n != 0 {
				t.Errorf("the origin served %d requests", n)
			}
		})
	}
}

// A tunnel whose origin spoke first checks its client's later ClientHello
// on the policy in force when it comes.
func TestConnectReloadBeforeLateHello(t *testing.T) {
	var cur atomic.Pointer[policy.Policy]
	f := newFixture(t, testPolicy, swappablePolicy(&cur))
	greeter := portOf("http://" + testnet.ServeTCP(t, func(c net.Conn) { io.WriteString(c, "220 ready\r\n"); io.Copy(c, c) }).String())
	c, br := f.dial()
	io.WriteString(c, "CONNECT origin.test:"+greeter+" HTTP/1.1\r\nHost: origin.test:"+greeter+"\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if l, err := br.ReadString('\n'); err != nil || l != "220 ready\r\n" {
		t.Fatalf("greeting %q, %v", l, err)
	}
	p, err := policy.Load("reloaded.yaml", []byte("version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1/32\n  - host: origin.test\ndeny:\n  - host: other.test\n"))
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(p)
	c.Write(tlstest.Hello(t, "other.test"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(br)
	line := f.logs.waitLine(t, "the refusal of the late hello", func(e map[string]any) bool { return e["event"] == "deny" })
	if line["reason"] != string(policy.ReasonSNIMismatch) || !strings.Contains(line["hint"].(string), "other.test") {
		t.Errorf("log line %v, want the hello for other.test refused on the reloaded policy", line)
	}
	testwait.Until(t, 5*time.Second, "the tunnel's slot given back", func() bool { return f.proxy.OpenTunnels() == 0 })
}

// The forward proxy answers every refused request on a kept-alive
// connection the same way (net/http reads each request; the refusal is
// written on the hijacked connection with Connection: close), and a
// request pipelined behind a refused one is never sent.
func TestForwardKeepAliveRefusalIsAnswered(t *testing.T) {
	f := newFixture(t, testPolicy)
	port, served := requestCounter(t)
	c, br := f.dial()
	io.WriteString(c, "GET http://origin.test:"+port+"/x HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n"+
		"GET http://denied.test:"+port+"/v1/admin?token=s3cret HTTP/1.1\r\nHost: denied.test:"+port+"\r\n\r\n"+
		"GET http://origin.test:"+port+"/after HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first answer: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	answertest.Refusal(t, br, "GET", "denied.test:"+port, string(policy.ReasonDeniedByRule))
	if n := served.Load(); n != 1 {
		t.Errorf("the origin served %d requests, want the first only", n)
	}
}
