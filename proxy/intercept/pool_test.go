package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/reload"
)

// poolPolicy intercepts a.test and c.test on one port; %[1]d is the port,
// %[2]s a comment a reload changes.
const poolPolicy = `version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - host: a.test
    ports: [%[1]d]
    http:
      - paths: ["/**"]
  - host: c.test
    ports: [%[1]d]
    http:
      - paths: ["/**"]
    reason: "%[2]s"
  - cidr: 127.0.0.0/8
    ports: [%[1]d]
`

// countingOrigin is a TLS origin on one loopback address that counts the
// TCP connections it accepted, those that carried requests, and the
// requests it answered.
type countingOrigin struct {
	srv      *httptest.Server
	accepted atomic.Int32
	requests atomic.Int32
	mu       sync.Mutex
	used     map[string]bool // client addresses of connections that carried a request
}

func (o *countingOrigin) conns() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.used)
}

func startOrigin(t *testing.T, addr string, ca *certs.CA) *countingOrigin {
	t.Helper()
	o := &countingOrigin{used: map[string]bool{}}
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.requests.Add(1)
		o.mu.Lock()
		o.used[r.RemoteAddr] = true
		o.mu.Unlock()
		fmt.Fprintf(w, "%s saw %s", o.srv.Listener.Addr(), r.URL.Path)
	}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	o.srv.Listener = ln
	leaf := func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if h.ServerName == "" { // asked for by address
			ap, _ := netip.ParseAddrPort(h.Conn.LocalAddr().String())
			return ca.Leaf(ap.Addr().String())
		}
		return ca.Leaf(h.ServerName)
	}
	// GetCertificate alone is not asked without a server name once
	// httptest has put its own certificate in Certificates.
	o.srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{GetCertificate: leaf, NextProtos: []string{"http/1.1"}}, nil
	}}
	o.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	o.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew { // set on accept, before the TLS handshake
			o.accepted.Add(1)
		}
	}
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	return o
}

type poolFixture struct {
	proxy   string
	port    int
	caPool  *x509.CertPool
	is      *intercept.Server
	pol     atomic.Pointer[policy.Policy]
	dir     string
	one     *countingOrigin // on 127.0.0.1
	two     *countingOrigin // on 127.0.0.2, same port
	mu      sync.Mutex
	names   map[string][]netip.Addr
	lookups int              // names looked up
	entries []eventlog.Entry // every entry recorded
}

func (f *poolFixture) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if a, ok := f.names[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// resolve makes host resolve to ips, in that order.
func (f *poolFixture) resolve(host string, ips ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.names[host] = nil
	for _, ip := range ips {
		f.names[host] = append(f.names[host], netip.MustParseAddr(ip))
	}
}

func (f *poolFixture) load(t *testing.T, comment string) {
	t.Helper()
	f.loadText(t, fmt.Sprintf(poolPolicy, f.port, comment))
}

// loadText makes text, a policy naming ca.crt and ca.key, the policy.
func (f *poolFixture) loadText(t *testing.T, text string) {
	t.Helper()
	file := filepath.Join(f.dir, "policy.yaml")
	os.WriteFile(file, []byte(text), 0o644)
	p, err := reload.Load(file, []byte(text), reload.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	f.pol.Store(p)
}

func newPoolFixture(t *testing.T) *poolFixture {
	t.Helper()
	f := &poolFixture{dir: t.TempDir(), names: map[string][]netip.Addr{}}
	cas := newTestCAs(t, f.dir)
	ca, upCA, roots := cas.ca, cas.upCA, cas.roots
	f.caPool = cas.caPool

	f.one = startOrigin(t, "127.0.0.1:0", upCA)
	f.port = f.one.srv.Listener.Addr().(*net.TCPAddr).Port
	f.two = startOrigin(t, fmt.Sprintf("127.0.0.2:%d", f.port), upCA)
	f.resolve("a.test", "127.0.0.1")
	f.resolve("c.test", "127.0.0.1")
	f.load(t, "first")

	current := func() *policy.Policy { return f.pol.Load() }
	d := &dialer.Dialer{Policy: current, Resolver: f}
	events := &eventlog.Sink{Logger: zerolog.New(io.Discard), Observe: func(e eventlog.Entry) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.entries = append(f.entries, e)
	}}
	f.is = &intercept.Server{Policy: current, CA: func() *certs.CA { return ca }, Roots: func() *x509.CertPool { return roots }, Dialer: d, Events: events}
	p := &httpproxy.Proxy{Policy: current, Dialer: d, Events: events, Intercept: f.is}
	f.proxy = serveProxy(t, p, f.is.CloseIdleConnections)
	return f
}

// get sends GET path to host on a client connection of its own, then
// closes it, and waits until the origin connection is back in its pool.
func (f *poolFixture) get(t *testing.T, host, path string) string {
	t.Helper()
	c, err := net.Dial("tcp", f.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %[1]s:%[2]d\r\n\r\n", host, f.port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", host, resp, err)
	}
	tc := tls.Client(c, &tls.Config{RootCAs: f.caPool, ServerName: host})
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, host, f.port)
	resp, err = http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s%s: %s %s", host, path, resp.Status, body)
	}
	waitFor(t, "the origin connection back in its pool", func() bool { return f.is.IdleOrigins() > 0 })
	return string(body)
}

func TestPoolReusesAnOriginConnectionAcrossClientConnections(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.get(t, "a.test", "/two")
	if n, r := f.one.conns(), f.one.requests.Load(); n != 1 || r != 2 {
		t.Fatalf("two client connections of one decision: the origin accepted %d connections for %d requests, want 1 for 2", n, r)
	}
}

func TestPoolIsNotReusedAcrossAReloadThatChangesThePolicy(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.load(t, "second")
	f.get(t, "a.test", "/two")
	if n := f.one.conns(); n != 2 {
		t.Fatalf("after a reload the origin accepted %d connections, want 2 (a new one for the new policy)", n)
	}
}

func TestPoolIsNotReusedForAnotherServerName(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.get(t, "c.test", "/two") // same address and port, another name
	if n := f.one.conns(); n != 2 {
		t.Fatalf("a.test then c.test on one address: the origin accepted %d connections, want 2", n)
	}
}

func TestPoolIsNotReusedForAnotherDecidedIP(t *testing.T) {
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.resolve("a.test", "127.0.0.2")
	if body := f.get(t, "a.test", "/two"); body != fmt.Sprintf("127.0.0.2:%d saw /two", f.port) {
		t.Fatalf("a.test now decided on 127.0.0.2, the answer came from elsewhere: %q", body)
	}
	if n := f.two.conns(); n != 1 {
		t.Fatalf("127.0.0.2 accepted %d connections, want 1", n)
	}
}

func TestPoolRetriesAGetOnAConnectionTheOriginClosed(t *testing.T) {
	// Taken without a look, so that the request meets the close.
	old := origin.FreshIdle
	origin.FreshIdle = time.Hour
	t.Cleanup(func() { origin.FreshIdle = old })
	f := newPoolFixture(t)
	f.get(t, "a.test", "/one")
	f.one.srv.CloseClientConnections() // the origin closes its idle connection
	if body := f.get(t, "a.test", "/two"); body != fmt.Sprintf("127.0.0.1:%d saw /two", f.port) {
		t.Fatalf("GET after the origin closed its idle connection: %q", body)
	}
	if n := f.one.conns(); n != 2 {
		t.Fatalf("the origin accepted %d connections, want 2 (the retry's new one)", n)
	}
}
