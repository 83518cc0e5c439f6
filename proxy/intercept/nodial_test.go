package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/proxy/eventlog"
)

// connect sends CONNECT host to the proxy on a connection of its own and
// returns it with the answer's status.
func (f *poolFixture) connect(t *testing.T, host string) (net.Conn, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", f.proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %[1]s:%[2]d\r\n\r\n", host, f.port)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", host, err)
	}
	resp.Body.Close()
	return c, resp
}

// tlsGet sends GET path over TLS for host on c (after its 200) and
// returns the answer and its body.
func (f *poolFixture) tlsGet(t *testing.T, c net.Conn, host, path string) (*http.Response, string) {
	t.Helper()
	tc := tls.Client(c, &tls.Config{RootCAs: f.caPool, ServerName: host})
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, f.port)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// entryFor waits for the entry recorded for a request to path (an
// answer may be recorded after the client read it).
func (f *poolFixture) entryFor(t *testing.T, path string) eventlog.Entry {
	t.Helper()
	var e eventlog.Entry
	waitFor(t, "the entry for "+path, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i := len(f.entries) - 1; i >= 0; i-- {
			if strings.HasSuffix(f.entries[i].URL, path) {
				e = f.entries[i]
				return true
			}
		}
		return false
	})
	return e
}

func TestInterceptedConnectsOpenOneOriginConnectionBetweenThem(t *testing.T) {
	const n = 5
	f := newPoolFixture(t)
	for i := range n {
		f.get(t, "a.test", fmt.Sprintf("/%d", i))
	}
	if a, r := f.one.accepted.Load(), f.one.requests.Load(); a != 1 || r != n {
		t.Fatalf("%d intercepted CONNECTs, one after the other: the origin accepted %d TCP connections for %d requests, want 1 for %d (a CONNECT whose origin connection is pooled dials nothing)", n, a, r, n)
	}
	f.mu.Lock()
	lookups := f.lookups
	f.mu.Unlock()
	if lookups != n {
		t.Fatalf("%d CONNECTs looked a.test up %d times, want once each", n, lookups)
	}
}

func TestInterceptedConnectWithAnEmptyPoolToARefusingOriginIsA502(t *testing.T) {
	f := newPoolFixture(t)
	f.resolve("a.test", "127.0.0.3") // nothing listens there on the port
	_, resp := f.connect(t, "a.test")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Status, "refused") {
		t.Fatalf("CONNECT to an intercepted host whose origin refuses: %q, want a 502 at CONNECT time saying refused", resp.Status)
	}
}

func TestInterceptedConnectOnAPooledConnectionTheOriginClosedDialsAtTheRequest(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.one.srv.CloseClientConnections() // the pooled connection, closed by the origin
	if body := f.get(t, "a.test", "/two"); body != fmt.Sprintf("127.0.0.1:%d saw /two", f.port) {
		t.Fatalf("GET after the origin closed the pooled connection: %q", body)
	}
	if a := f.one.accepted.Load(); a != 2 {
		t.Fatalf("the origin accepted %d TCP connections, want 2 (the second dialled for the request)", a)
	}
}

func TestInterceptedConnectOnAPooledConnectionToAnOriginGoneIsA502AtTheRequest(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.one.srv.Close() // the listener and the pooled connection
	c, resp := f.connect(t, "a.test")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT with a pooled origin connection: %s, want 200 (no dial before it)", resp.Status)
	}
	resp, body := f.tlsGet(t, c, "a.test", "/two")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Status, "refused") || !strings.Contains(body, "cannot reach a.test") {
		t.Fatalf("GET once the origin is gone: %s %q, want a 502 saying why", resp.Status, body)
	}
	c.Close()
	if e := f.entryFor(t, "/two"); e.Err == nil || e.Decision.IP != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("logged %v on %v, want the dial error on 127.0.0.1", e.Err, e.Decision.IP)
	}
}

func TestInterceptedRequestDialsTheNextDecidedAddressAndLogsIt(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one") // pooled: 127.0.0.1
	f.resolve("a.test", "127.0.0.1", "127.0.0.2")
	f.one.srv.Close()
	c, resp := f.connect(t, "a.test")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT with a pooled origin connection: %s", resp.Status)
	}
	resp, body := f.tlsGet(t, c, "a.test", "/two")
	if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("127.0.0.2:%d saw /two", f.port) {
		t.Fatalf("GET with 127.0.0.1 gone: %s %q, want the answer of 127.0.0.2, the other address decided", resp.Status, body)
	}
	if e := f.entryFor(t, "/two"); e.Decision.IP != netip.MustParseAddr("127.0.0.2") || !e.Decision.Allowed() {
		t.Fatalf("logged the decision on %v, want the one on 127.0.0.2, the address used", e.Decision.IP)
	}
	f.mu.Lock()
	lookups := f.lookups
	f.mu.Unlock()
	if lookups != 2 {
		t.Fatalf("two CONNECTs looked a.test up %d times, want 2 (none at the request)", lookups)
	}
}

func TestPlainHTTPAfterADialFreeConnectIsDialledThen(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	c, resp := f.connect(t, "a.test")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	// Plain HTTP to a TLS origin: its own 400 says it was reached.
	fmt.Fprintf(c, "GET /two HTTP/1.1\r\nHost: a.test:%d\r\n\r\n", f.port)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS server") {
		t.Fatalf("plain GET inside the tunnel: %s %q, want the TLS origin's own 400", resp.Status, body)
	}
	if a := f.one.accepted.Load(); a != 2 {
		t.Fatalf("the origin accepted %d connections, want 2 (the pooled one, and the plain request's)", a)
	}
}

// addressPolicy intercepts 127.0.0.1 on the origins' port by a cidr rule
// with http:, and allows b.test there as a name a ClientHello may carry.
const addressPolicy = `version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - cidr: 127.0.0.1/32
    ports: [%[1]d]
    http:
      - paths: ["/**"]
  - host: b.test
    ports: [%[1]d]
`

func TestInterceptedConnectsToAnAddressOpenOneOriginConnectionBetweenThem(t *testing.T) {
	const n = 5
	f := newPoolFixture(t)
	f.loadText(t, fmt.Sprintf(addressPolicy, f.port))
	for i := range n {
		f.get(t, "127.0.0.1", fmt.Sprintf("/%d", i)) // no server name in the ClientHello
	}
	if a, r := f.one.accepted.Load(), f.one.requests.Load(); a != 1 || r != n {
		t.Fatalf("%d intercepted CONNECTs to 127.0.0.1, one after the other: the origin accepted %d TCP connections for %d requests, want 1 for %d", n, a, r, n)
	}
}

func TestInterceptedConnectToAnAddressWhoseClientHelloNamesAnotherServerDialsAtTheRequest(t *testing.T) {
	f := newPoolFixture(t)
	f.loadText(t, fmt.Sprintf(addressPolicy, f.port))
	f.get(t, "127.0.0.1", "/one") // pooled for the name 127.0.0.1
	c, resp := f.connect(t, "127.0.0.1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	resp, body := f.tlsGet(t, c, "b.test", "/two") // SNI b.test, allowed on the address
	if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("127.0.0.1:%d saw /two", f.port) {
		t.Fatalf("GET for b.test on the address: %s %q", resp.Status, body)
	}
	if a := f.one.accepted.Load(); a != 2 {
		t.Fatalf("the origin accepted %d TCP connections, want 2 (one verified for b.test, dialled for the request)", a)
	}
}

func TestPlainHTTPRefusedAfterADialFreeConnectDialsNothing(t *testing.T) {
	for _, gone := range []bool{false, true} {
		name := "the origin listening"
		if gone {
			name = "the origin no longer accepting"
		}
		t.Run(name, func(t *testing.T) {
			f := newPoolFixture(t)
			f.loadText(t, fmt.Sprintf(`version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - host: a.test
    ports: [%[1]d]
    http:
      - paths: ["/ok/**"]
`, f.port))
			f.get(t, "a.test", "/ok/1") // an idle origin connection in the pool
			if gone {
				f.one.srv.Listener.Close() // the pooled connection stays
			}
			c, resp := f.connect(t, "a.test")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT with a pooled origin connection: %s", resp.Status)
			}
			fmt.Fprintf(c, "GET /admin HTTP/1.1\r\nHost: a.test:%d\r\n\r\n", f.port)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("plain GET refused by a request rule after a dial-free CONNECT: %s, want 403", resp.Status)
			}
			if e := f.entryFor(t, "/admin"); e.Decision.Allowed() || e.Err != nil {
				t.Fatalf("logged %s, err %v, want the denial and no error", e.Decision.Reason, e.Err)
			}
			if a := f.one.accepted.Load(); a != 1 {
				t.Fatalf("the origin accepted %d connections, want 1 (the pooled one: a refused request dials nothing)", a)
			}
		})
	}
}
