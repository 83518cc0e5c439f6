//go:build linux

package transparent

import (
	"bufio"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/answertest"
	"github.com/egress-proxy/egress/policy"
)

// Issue 18's reproductions and the differential test of the HTTP/1 gate:
// for each request shape, sent on a raw connection to an address that
// web.test owns, every r.Host the origin's net/http server served is a
// name egress decided to allow there (web.test, or the address itself);
// a refused name never reaches it. Each shape ends with a request that
// closes the connection, so a connection the gate kept open ends too.
func TestHTTPGateDecidesWhatTheServerSees(t *testing.T) {
	f := newFixture(t)
	port := portOf(f.web.URL)
	web := "web.test:" + port
	// The address is egress's DNS answer for web.test to this client: a
	// connection to it that names nothing is allowed.
	f.names.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	end := "GET /end HTTP/1.1\r\nHost: " + web + "\r\nConnection: close\r\n\r\n"
	for _, tc := range []struct {
		name   string
		raw    string
		served bool // the first request is served (not everything refused)
	}{
		{"a bare LF before Host", "GET / HTTP/1.1\r\nX: a\nHost: evil.test\r\n\r\n", false},
		{"a bare LF request line", "GET / HTTP/1.1\nHost: evil.test\n\n", false},
		{"an obs-fold Host value", "GET / HTTP/1.1\r\nHost:\r\n evil.test\r\n\r\n", false},
		{"an obs-fold line after Host", "GET / HTTP/1.1\r\nHost: " + web + "\r\nX: a\r\n Host: evil.test\r\n\r\n", true},
		{"two Host headers", "GET / HTTP/1.1\r\nHost: " + web + "\r\nHost: evil.test\r\n\r\n", false},
		{"an absolute-form target naming a refused host", "GET http://evil.test/ HTTP/1.1\r\nHost: " + web + "\r\n\r\n", false},
		{"an absolute-form target naming the allowed host", "GET http://" + web + "/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", true},
		// A refused request is answered after the answers to the
		// pipelined requests before it, and ends the connection.
		{"HTTP/1.0 without Host, then a refused host", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", false},
		{"HTTP/1.0 without Host, then an unlisted host", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: other.test\r\n\r\n", false},
		{"an ignored Upgrade, then a refused host", "GET / HTTP/1.1\r\nHost: " + web + "\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", true},
		{"an ignored Upgrade, then the allowed host", "GET / HTTP/1.1\r\nHost: " + web + "\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET / HTTP/1.1\r\nHost: " + web + "\r\n\r\n", true},
		{"a CONNECT naming a refused host", "CONNECT evil.test:" + port + " HTTP/1.1\r\nHost: evil.test:" + port + "\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", false},
		{"a CONNECT answered but not switched, then a refused host", "CONNECT " + web + " HTTP/1.1\r\nHost: " + web + "\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", true},
		{"the h2c preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false},
		{"a request line cut short", "GET / HTTP/1.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for len(f.seen) > 0 {
				<-f.seen
			}
			c := f.ns.Dial(t, "127.0.0.1:"+port)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			raw := tc.raw
			if !strings.HasSuffix(raw, "HTTP/1.1") {
				raw += end
			}
			io.WriteString(c, raw)
			if raw == tc.raw {
				c.(interface{ CloseWrite() error }).CloseWrite()
			}
			io.ReadAll(c) // until the gate or the origin ends it
			c.Close()
			served := 0
			for len(f.seen) > 0 {
				h := <-f.seen
				if h != web && h != "127.0.0.1:"+port && h != "" {
					t.Errorf("the origin served Host %q, which egress did not allow", h)
				}
				served++
			}
			if tc.served && served == 0 {
				t.Errorf("nothing served: the first request was allowed")
			}
		})
	}
}

// An HTTP/1.0 request without Host is gated like any other: it is served
// on the address, and a later request on the kept-alive connection that
// names a refused host is answered with egress's 403 and ends it, before
// it goes up.
func TestHTTPGateHTTP10WithoutHostThenRefused(t *testing.T) {
	f := newFixture(t)
	port := portOf(f.web.URL)
	f.names.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	c := f.ns.Dial(t, "127.0.0.1:"+port)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("first request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.Proto != "HTTP/1.0" {
		t.Errorf("answer %s, want the origin's HTTP/1.0", resp.Proto)
	}
	select {
	case h := <-f.seen:
		if h != "" {
			t.Fatalf("origin saw Host %q, want none", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the origin served nothing; the client got %s %q", resp.Status, body)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: evil.test:"+port+"\r\n\r\n")
	answertest.Refusal(t, br, "GET", "GET http://evil.test:"+port+"/", string(policy.ReasonDeniedByRule))
	e := f.rec.next(t)
	if !e.Decision.Denied() || e.Decision.Host != "evil.test" {
		t.Fatalf("entry = %+v, want a denial of evil.test", e.Decision)
	}
}

// The first bytes decide how a connection is read: the HTTP/2 preface is
// refused where the address is not allowed by itself (h2c names its host
// in frames egress does not read), and an HTTP/1 start that net/http
// cannot read is refused as unreadable, never passed on the address.
func TestHTTPGateRefusesWhatItCannotRead(t *testing.T) {
	f := newFixture(t)
	port := portOf(f.web.URL)
	f.names.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	for _, tc := range []struct {
		name, raw string
		want      string
	}{
		{"the h2c preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", string(policy.ReasonHTTP2Preface)},
		{"a malformed header line", "GET / HTTP/1.1\r\nHost web.test\r\n\r\n", string(policy.ReasonHTTPUnreadable)},
		{"two Host headers", "GET / HTTP/1.1\r\nHost: web.test\r\nHost: evil.test\r\n\r\n", string(policy.ReasonHTTPUnreadable)},
		{"an HTTP version net/http does not read", "GET / HTTP/1.1x\r\nHost: web.test\r\n\r\n", string(policy.ReasonHTTPUnreadable)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.ns.Dial(t, "127.0.0.1:"+port)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tc.raw)
			c.(interface{ CloseWrite() error }).CloseWrite()
			if b, _ := io.ReadAll(c); len(b) > 0 {
				t.Errorf("got an answer %q", b)
			}
			e := f.rec.next(t)
			if !e.Decision.Denied() || string(e.Decision.Reason) != tc.want {
				t.Errorf("entry = %+v, want a refusal with reason %s", e.Decision, tc.want)
			}
		})
	}
}

// A later request on a kept-alive gated connection that net/http's
// reader cannot read is answered as egress answers unreadable input
// elsewhere: a 400 (431 for a head over limits.max_header_bytes) with the
// connection's id, after the answer to the request before it (the two
// are sent pipelined), and logged once as http_unreadable; nothing of it
// reaches the origin.
func TestHTTPGateAnswersALaterUnreadableRequest(t *testing.T) {
	f := newFixture(t)
	port := portOf(f.web.URL)
	web := "web.test:" + port
	f.names.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	for _, tc := range answertest.LaterUnreadable(web) {
		t.Run(tc.Name, func(t *testing.T) {
			for len(f.seen) > 0 {
				<-f.seen
			}
			c := f.ns.Dial(t, "127.0.0.1:"+port)
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: "+web+"\r\n\r\n"+tc.Raw)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("the first request: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || string(body) != "hello "+web {
				t.Fatalf("the first request: %s %q %v", resp.Status, body, err)
			}
			id := answertest.Unreadable(t, br, tc.Status)
			e := f.rec.next(t)
			if e.ID != id || !e.Decision.Denied() || e.Decision.Reason != policy.ReasonHTTPUnreadable {
				t.Errorf("entry %s = %+v, want the refusal of connection %s with reason http_unreadable", e.ID, e.Decision, id)
			}
			select {
			case e := <-f.rec.ch:
				t.Errorf("a second line for the connection: %+v", e)
			default:
			}
			if n := len(f.seen); n != 1 {
				t.Errorf("the origin served %d requests, want only the first", n)
			}
		})
	}
}

// A later request the client cuts short by ending its side inside the
// head is answered as net/http's server answers it, with egress's 400
// after the answer to the request before it, which the half-closed
// client still reads; nothing of it goes up, and the line is its refusal.
func TestHTTPGateLaterRequestCutShortByTheClient(t *testing.T) {
	f := newFixture(t)
	port := portOf(f.web.URL)
	web := "web.test:" + port
	f.names.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	c := f.ns.Dial(t, "127.0.0.1:"+port)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: "+web+"\r\n\r\nGET /2 HTTP/1.1\r\nHost: "+web+"\r\n")
	c.(interface{ CloseWrite() error }).CloseWrite()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the first request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	id := answertest.Unreadable(t, br, http.StatusBadRequest)
	e := f.rec.next(t)
	if e.ID != id || e.Decision.Reason != policy.ReasonHTTPUnreadable || !strings.Contains(e.Decision.Hint, "unexpected EOF") {
		t.Errorf("entry = %+v, want the refusal of connection %s saying the head was cut short", e, id)
	}
	if n := len(f.seen); n != 1 {
		t.Errorf("the origin served %d requests, want only the first", n)
	}
}
