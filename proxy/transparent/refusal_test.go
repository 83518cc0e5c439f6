//go:build linux

package transparent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/answertest"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

// countingOrigin is a plain HTTP origin on 127.0.0.1 that counts the
// connections it accepted and the requests it served.
type countingOrigin struct {
	addr           netip.AddrPort
	opened, served atomic.Int32
}

func newCountingOrigin(t *testing.T) *countingOrigin {
	t.Helper()
	o := &countingOrigin{}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.served.Add(1)
		io.WriteString(w, "hello "+r.Host+" "+r.URL.Path)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			o.opened.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	o.addr = netip.MustParseAddrPort(s.Listener.Addr().String())
	return o
}

// Every request refused on a gated plain-HTTP connection of the
// transparent listener is answered with egress's 403 and its explanation
// once the answers to the requests before it are out, and nothing of it,
// nor of any request pipelined behind it, goes up. Before, a refused
// later request closed the connection without a word (the client saw
// "connection reset" or "remote end closed connection").
func TestTransparentGatedRefusalIsAnswered(t *testing.T) {
	req := func(method, path, host string) string {
		return method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	}
	rules := func(port uint16) string {
		return fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1\n    ports: [%d]\n    http:\n      - methods: [GET]\n        paths: [\"/\"]\n", port)
	}
	for _, tc := range []struct {
		name         string
		rules        bool   // the address's rule has request rules (issue 20)
		send         string // one write; "web" stands for web.test:PORT
		allowed      int    // requests served and answered before the 403
		method, host string // the refused request's, to /v1/admin
		proto        string // of the 403
		reason       policy.Reason
	}{
		{"a later request for a refused host", false,
			req("GET", "/", "web") + req("GET", "/v1/admin?token=s3cret", "evil.test"), 1,
			"GET", "evil.test", "HTTP/1.1", policy.ReasonDeniedByRule},
		{"a refused host pipelined between allowed requests", false,
			req("GET", "/", "web") + req("GET", "/v1/admin", "evil.test") + req("GET", "/after", "web"), 1,
			"GET", "evil.test", "HTTP/1.1", policy.ReasonDeniedByRule},
		{"a later request for an unlisted host, with a body, pipelined", false,
			req("GET", "/", "web") + "POST /v1/admin HTTP/1.1\r\nHost: other.test\r\nContent-Length: 5\r\n\r\nhello" + req("GET", "/after", "web"), 1,
			"POST", "other.test", "HTTP/1.1", policy.ReasonNameMismatch},
		{"a later HEAD for a refused host", false,
			req("GET", "/", "web") + req("HEAD", "/v1/admin", "evil.test"), 1,
			"HEAD", "evil.test", "HTTP/1.1", policy.ReasonDeniedByRule},
		{"a later HTTP/1.0 request for a refused host", false,
			"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\nGET /v1/admin HTTP/1.0\r\nHost: evil.test\r\n\r\n", 1,
			"GET", "evil.test", "HTTP/1.0", policy.ReasonDeniedByRule},
		{"a later request refused by a request rule", true,
			req("GET", "/", "web") + req("POST", "/v1/admin", "web") + req("GET", "/", "web"), 1,
			"POST", "web.test", "HTTP/1.1", policy.ReasonNoRequestRuleMatched},
		{"a first request refused by a request rule", true,
			req("POST", "/v1/admin", "web") + req("GET", "/", "web"), 0,
			"POST", "web.test", "HTTP/1.1", policy.ReasonNoRequestRuleMatched},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newCountingOrigin(t)
			port := strconv.Itoa(int(o.addr.Port()))
			f := newLateFixture(t, o.addr, nil)
			if tc.rules {
				f = newOriginFixture(t, o.addr, nil, rules(o.addr.Port()))
			}
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			io.WriteString(c, strings.ReplaceAll(tc.send, "Host: web\r", "Host: web.test:"+port+"\r"))
			for i := 0; i < tc.allowed; i++ {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "hello web.test:"+port) {
					t.Fatalf("answer %d: %s %q", i, resp.Status, b)
				}
			}
			url := "http://" + tc.host + ":" + port + "/v1/admin"
			if p, err := br.Peek(len(tc.proto)); err != nil || string(p) != tc.proto {
				t.Errorf("the 403 is in %q (%v), want %s", p, err, tc.proto)
			}
			id := answertest.Refusal(t, br, tc.method, tc.method+" "+url, string(tc.reason))
			e := f.rec.next(t)
			for e.ID != id && e.Decision.Allowed() {
				e = f.rec.next(t) // the line of an allowed first request
			}
			if e.ID != id || !e.Decision.Denied() || e.Decision.Reason != tc.reason || e.Method != tc.method || e.URL != url {
				t.Errorf("entry = %+v, want the refusal of %s %s, id %s", e, tc.method, url, id)
			}
			if n := o.served.Load(); int(n) != tc.allowed {
				t.Errorf("the origin served %d requests, want %d", n, tc.allowed)
			}
		})
	}
}

// A reload while a late client's connection waits for its first bytes
// (decided on its address and dialled already, tunnel.FirstMove) applies
// to them: they are read and decided on the policy in force when they
// come, the connection's address and name included. Before, the policy
// of the accept decided them, and the bytes went up.
func TestTransparentReloadBeforeLateBytes(t *testing.T) {
	for _, tc := range []struct {
		name, first string
		reason      policy.Reason
		rule        string // the reloaded policy's rule on the line; "" none
	}{
		{"a request for a host the reload denied", "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", policy.ReasonDeniedByRule, "reloaded.yaml:6"},
		{"bytes naming nothing, to an address the reload no longer allows", "hello\r\n", policy.ReasonGuardLoopback, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newCountingOrigin(t)
			f := newLateFixture(t, o.addr, nil)
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// Silent past the peek: decided on the address and dialled.
			testwait.Until(t, testwait.Timeout, "the origin's connection", func() bool { return o.opened.Load() == 1 })
			p, err := policy.Load("reloaded.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - host: db.test\ndeny:\n  - host: web.test\n    reason: \"web.test was just closed\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			f.pol.Store(p)
			io.WriteString(c, tc.first)
			if b, _ := io.ReadAll(c); len(b) > 0 {
				t.Errorf("the client got %q after the reload", b)
			}
			e := f.rec.next(t)
			if !e.Decision.Denied() || e.Decision.Reason != tc.reason || e.Decision.Source != "reloaded.yaml" {
				t.Fatalf("entry = %+v, want a refusal (%s) by reloaded.yaml", e.Decision, tc.reason)
			}
			if tc.rule != "" && (e.Decision.Rule == nil || e.Decision.Rule.Location() != tc.rule) {
				t.Errorf("rule = %v, want %s", e.Decision.Rule, tc.rule)
			}
			if n := o.served.Load(); n != 0 {
				t.Errorf("the origin served %d requests", n)
			}
		})
	}
}

// A reload that gives the address request rules (http:) while a late
// client's connection waits applies to its first request: decided on
// its method and path, refused with egress's 403.
func TestTransparentReloadBeforeLateRequestRules(t *testing.T) {
	o := newCountingOrigin(t)
	port := strconv.Itoa(int(o.addr.Port()))
	f := newLateFixture(t, o.addr, nil)
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	testwait.Until(t, testwait.Timeout, "the origin's connection", func() bool { return o.opened.Load() == 1 })
	p, err := policy.Load("reloaded.yaml", []byte(fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1\n    ports: [%s]\n    http:\n      - methods: [GET]\n        paths: [\"/\"]\n", port)))
	if err != nil {
		t.Fatal(err)
	}
	f.pol.Store(p)
	io.WriteString(c, "POST /v1/admin HTTP/1.1\r\nHost: 127.0.0.1:"+port+"\r\n\r\n")
	id := answertest.Refusal(t, bufio.NewReader(c), "POST", "POST http://127.0.0.1:"+port+"/v1/admin", string(policy.ReasonNoRequestRuleMatched))
	if e := f.rec.next(t); e.ID != id || e.Decision.Source != "reloaded.yaml" {
		t.Errorf("entry = %+v, want the refusal %s by reloaded.yaml", e, id)
	}
	if n := o.served.Load(); n != 0 {
		t.Errorf("the origin served %d requests", n)
	}
}
