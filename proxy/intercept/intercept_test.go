package intercept_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/proxy/tunnel"
	"github.com/egress-proxy/egress/reload"
)

// The secret injected upstream: it must appear there and nowhere else.
const secret = "s3cret-VALUE-never-logged"

// policyText is the test policy; %[1]d is the TLS origin's port, %[2]d
// the plain one's, %[3]d the bad origin's.
const policyText = `version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - host: api.vendor.test
    ports: [%[1]d, %[2]d]
    http:
      - methods: [GET, TRACE]
        paths: ["/v1/license", "/v1/status/*"]
      - methods: [POST]
        paths: ["/v1/telemetry"]
        reason: "usage reports only"
    inject:
      - header: Authorization
        from_file: token
        prefix: "Bearer "
  - host: bad.vendor.test
    ports: [%[3]d]
    http:
      - paths: ["/**"]
  - host: tunnel.vendor.test
  - cidr: 127.0.0.1/32
    ports: [%[1]d, %[2]d, %[3]d]
deny:
  - host: api.vendor.test
    http:
      - methods: [GET]
        paths: ["/v1/admin/**"]
`

// seen is what an origin received.
type seen struct {
	mu      sync.Mutex
	reqs    []*http.Request
	discard atomic.Bool // keep nothing (a benchmark's memory figure)
}

func (s *seen) add(r *http.Request) {
	if s.discard.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r)
}

func (s *seen) last(t *testing.T) *http.Request {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		t.Fatal("the origin received nothing")
	}
	return s.reqs[len(s.reqs)-1]
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

type logBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	discard atomic.Bool // drop what is written (a benchmark's memory figure)
}

func (l *logBuffer) Write(p []byte) (int, error) {
	if l.discard.Load() {
		return len(p), nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// entry waits for the log line with id.
func (l *logBuffer) entry(t *testing.T, id string) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, "the log line of "+id, func() bool {
		for _, line := range strings.Split(l.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["id"] == id {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// entryWith waits for a log line with field reason = r.
func (l *logBuffer) entryWith(t *testing.T, reason string) map[string]any {
	t.Helper()
	var found map[string]any
	waitFor(t, "a log line with reason "+reason, func() bool {
		for _, line := range strings.Split(l.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["reason"] == reason {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// waitFor polls cond until it holds or 5 s pass (the one wait helper).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 5*time.Second, what, cond)
}

type resolver map[string]netip.Addr

func (r resolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

type fixture struct {
	dir       string
	caFile    string // egress's interception CA, what clients trust
	caPool    *x509.CertPool
	proxy     string // host:port of the proxy
	tlsPort   int
	plainPort int
	badPort   int
	origin    *seen
	logs      *logBuffer
	pol       atomic.Pointer[policy.Policy]
	ca        *certs.CA      // egress's CA
	roots     *x509.CertPool // tls.upstream_ca
	policy    string         // the policy file
	tunnels   *tunnel.Set    // the proxy's open tunnels
	is        *intercept.Server
	px        *httpproxy.Proxy
	// silentEnded counts the origin's /v1/status/silent streams whose
	// connection egress closed.
	silentEnded atomic.Int32
	release     chan struct{} // closed at the test's end
}

// testCAs are a test's two CAs: egress's interception CA (ca.crt and
// ca.key written in the test's directory, as the policies name them, and
// the pool its clients trust) and the origins' CA (the roots egress
// verifies them against: tls.upstream_ca).
type testCAs struct {
	ca     *certs.CA
	caFile string
	caPool *x509.CertPool
	upCA   *certs.CA
	roots  *x509.CertPool
}

func newTestCAs(t testing.TB, dir string) testCAs {
	t.Helper()
	ca, certPEM, keyPEM, err := certs.Create(certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := testCAs{ca: ca, caFile: filepath.Join(dir, "ca.crt"), caPool: x509.NewCertPool(), roots: x509.NewCertPool()}
	os.WriteFile(c.caFile, certPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "ca.key"), keyPEM, 0o600)
	c.caPool.AppendCertsFromPEM(certPEM)
	upCA, upPEM, _, err := certs.Create(certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.upCA = upCA
	c.roots.AppendCertsFromPEM(upPEM)
	return c
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), origin: &seen{}, logs: &logBuffer{}, release: make(chan struct{})}

	// egress's CA, written where the policy names it; the origins' CA
	// (tls.upstream_ca), and one nobody trusts.
	cas := newTestCAs(t, f.dir)
	f.caFile, f.ca, f.caPool = cas.caFile, cas.ca, cas.caPool
	upCA, roots := cas.upCA, cas.roots
	f.roots = roots
	rogue, _, _, _ := certs.Create(certs.Options{})

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Header.Set("X-Test-Body", string(b)) // what the origin read of the body
		f.origin.add(r)
		if r.Header.Get("Upgrade") != "" {
			upgradeOrigin(w, r) // upgrade_test.go
			return
		}
		if r.URL.Path == "/v1/status/silent" {
			// One event, then silence until egress closes the connection.
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: one\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				f.silentEnded.Add(1)
			case <-f.release: // the test's end
			}
			return
		}
		if r.URL.Path == "/v1/status/redirect" {
			http.Redirect(w, r, "https://elsewhere.test/", http.StatusFound)
			return
		}
		fmt.Fprintf(w, "origin saw %s %s", r.Method, r.RequestURI)
	})
	serveTLS := func(leaf *tls.Certificate) int {
		srv := httptest.NewUnstartedServer(handler)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
		srv.Config.ErrorLog = log.New(io.Discard, "", 0) // CONNECT dials ahead: unused connections close unread
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().(*net.TCPAddr).Port
	}
	leaf, _ := upCA.Leaf("api.vendor.test")
	f.tlsPort = serveTLS(leaf)
	badLeaf, _ := rogue.Leaf("bad.vendor.test")
	f.badPort = serveTLS(badLeaf)
	plain := httptest.NewServer(handler)
	t.Cleanup(plain.Close)
	f.plainPort = plain.Listener.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() { close(f.release) }) // before the servers close

	f.writeToken(t, secret+"\n")
	f.policy = filepath.Join(f.dir, "policy.yaml")
	f.load(t, fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort))

	loopback := netip.MustParseAddr("127.0.0.1")
	res := resolver{"api.vendor.test": loopback, "bad.vendor.test": loopback, "tunnel.vendor.test": loopback, "other.test": loopback}
	current := func() *policy.Policy { return f.pol.Load() }
	d := &dialer.Dialer{Policy: current, Resolver: res}
	events := &eventlog.Sink{Logger: zerolog.New(f.logs), LogAllowed: true}
	is := &intercept.Server{Policy: current, CA: func() *certs.CA { return f.ca }, Roots: func() *x509.CertPool { return roots }, Dialer: d, Events: events}
	f.tunnels, f.is = &tunnel.Set{}, is
	p := &httpproxy.Proxy{Policy: current, Dialer: d, Events: events, Intercept: is, Tunnels: f.tunnels}
	f.px = p
	f.proxy = serveProxy(t, p, nil)
	return f
}

// serveProxy serves p on a loopback listener until the test ends, then
// shuts it down (2 s) and runs after, if not nil; it returns p's address.
func serveProxy(t testing.TB, p *httpproxy.Proxy, after func()) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
		if after != nil {
			after()
		}
	})
	return ln.Addr().String()
}

func (f *fixture) writeToken(t testing.TB, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "token"), []byte(v), 0o600); err != nil {
		t.Fatal(err)
	}
}

// load loads text as the policy in force, as serve's reload does.
func (f *fixture) load(t testing.TB, text string) {
	t.Helper()
	os.WriteFile(f.policy, []byte(text), 0o644)
	p, err := reload.Load(f.policy, []byte(text), reload.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	f.pol.Store(p)
}

// client is a Go client through the proxy trusting egress's CA.
func (f *fixture) client() *http.Client {
	pu, _ := url.Parse("http://" + f.proxy)
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: f.caPool}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

func (f *fixture) url(path string) string {
	return fmt.Sprintf("https://api.vendor.test:%d%s", f.tlsPort, path)
}

// tunnel opens CONNECT host:port and a TLS session with sni over it.
func (f *fixture) tunnel(t *testing.T, host string, port int, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := net.Dial("tcp", f.proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %[1]s:%[2]d\r\n\r\n", host, port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	return tc, tc.Handshake()
}

// raw sends one request, as written, inside an intercepted connection.
func (f *fixture) raw(t *testing.T, req string) (*http.Response, string) {
	t.Helper()
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	io.WriteString(tc, req)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestRequests(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	for _, tc := range []struct {
		name, method, target string
		status               int
		reason               policy.Reason
		upstream             string // the path the origin saw
	}{
		{"an allowed request goes up", "GET", "/v1/license", 200, policy.ReasonAllowedByRule, "/v1/license"},
		{"the query goes up as sent", "GET", "/v1/license?a=b%20c", 200, policy.ReasonAllowedByRule, "/v1/license?a=b%20c"},
		{"a wildcard segment matches one segment", "GET", "/v1/status/eu", 200, policy.ReasonAllowedByRule, "/v1/status/eu"},
		{"a method the rule does not name is refused", "POST", "/v1/license", 403, policy.ReasonNoRequestRuleMatched, ""},
		{"HEAD is not GET", "HEAD", "/v1/license", 403, policy.ReasonNoRequestRuleMatched, ""},
		{"a path no rule names is refused", "GET", "/v1/other", 403, policy.ReasonNoRequestRuleMatched, ""},
		{"a deny request rule refuses", "GET", "/v1/admin/users", 403, policy.ReasonRequestDenied, ""},
		{"a dot segment is removed before deciding", "GET", "/v1/status/../admin/x", 403, policy.ReasonRequestDenied, ""},
		{"an encoded dot segment too", "GET", "/v1/license/%2e%2e/admin/x", 403, policy.ReasonRequestDenied, ""},
		{"an escape of an unreserved character is decoded and forwarded decoded", "GET", "/v1/%6cicense", 200, policy.ReasonAllowedByRule, "/v1/license"},
		{"repeated slashes are folded and forwarded folded", "GET", "//v1//license", 200, policy.ReasonAllowedByRule, "/v1/license"},
		{"a doubled slash does not dodge a deny", "GET", "//v1/admin//x", 403, policy.ReasonRequestDenied, ""},
		{"an encoded slash is refused", "GET", "/v1%2Flicense", 403, policy.ReasonInvalidPath, ""},
		{"a backslash escape is refused", "GET", "/v1/status/x%5C..%5Cadmin", 403, policy.ReasonInvalidPath, ""},
		{"a dot segment with parameters is refused", "GET", "/v1/status/..;/admin/x", 403, policy.ReasonInvalidPath, ""},
		{"parameters on an ordinary segment are refused", "GET", "/v1/admin;x/users", 403, policy.ReasonInvalidPath, ""},
		{"an encoded colon is decoded and forwarded decoded", "GET", "/v1/status/eu%3Awest%40x", 200, policy.ReasonAllowedByRule, "/v1/status/eu:west@x"},
		{"a lower-case method is refused", "get", "/v1/license", 403, policy.ReasonInvalidMethod, ""},
		{"TRACE is refused where the rule injects, though a rule names it", "TRACE", "/v1/license", 403, policy.ReasonInvalidMethod, ""},
		{"a dot segment that climbs to a allowed path is forwarded normalised", "GET", "/v1/admin/../license", 200, policy.ReasonAllowedByRule, "/v1/license"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.origin.count()
			resp, body := f.raw(t, tc.method+" "+tc.target+" HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s: %d %q %s, want %d", tc.method, tc.target, resp.StatusCode, resp.Status, body, tc.status)
			}
			id := resp.Header.Get("X-Egress-Id")
			if tc.status == 403 {
				if got := resp.Header.Get("X-Egress-Reason"); got != string(tc.reason) {
					t.Errorf("X-Egress-Reason %q, want %q", got, tc.reason)
				}
				if !strings.Contains(resp.Status, "egress denied "+tc.method+" https://") || !strings.Contains(resp.Status, "(id "+id+")") {
					t.Errorf("status line %q does not explain", resp.Status)
				}
				if f.origin.count() != before {
					t.Error("a refused request reached the origin")
				}
				e := f.logs.entry(t, id)
				if e["method"] != tc.method || e["proto"] != "https" || e["reason"] != string(tc.reason) {
					t.Errorf("log line %v", e)
				}
				return
			}
			got := f.origin.last(t)
			if got.RequestURI != tc.upstream {
				t.Errorf("the origin saw %q, want %q", got.RequestURI, tc.upstream)
			}
			if got.Header.Get("Authorization") != "Bearer "+secret {
				t.Errorf("the origin saw Authorization %q, want the injected value", got.Header.Get("Authorization"))
			}
		})
	}
	// Refused with "no request rule matched; to allow: ..." in the
	// status line, as issue 20 shows it.
	resp, body := f.raw(t, "POST /v1/admin HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 2\r\n\r\n{}")
	want := fmt.Sprintf("egress denied POST https://api.vendor.test:%d/v1/admin: no request rule matched; to allow: - {methods: [POST], paths: [\"/v1/admin\"]} (id ", f.tlsPort)
	if !strings.Contains(resp.Status, want) {
		t.Errorf("status %q, want it to hold %q", resp.Status, want)
	}
	if !strings.Contains(body, "reason: no_request_rule_matched") {
		t.Errorf("body %q", body)
	}
	// The secret is in no log line, no answer.
	if strings.Contains(f.logs.String(), secret) {
		t.Error("the injected value is in the log")
	}
	if !strings.Contains(f.logs.String(), `"injected":["Authorization"]`) {
		t.Error("the log does not name the injected header")
	}
}

func TestInjectionReplacesTheClientsValue(t *testing.T) {
	f := newFixture(t)
	req, _ := http.NewRequest("GET", f.url("/v1/license"), nil)
	req.Header.Set("Authorization", "Bearer from-the-client")
	resp, err := f.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(body), secret) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if v := f.origin.last(t).Header.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+secret {
		t.Errorf("the origin saw Authorization %q, want the injected value alone", v)
	}
}

func TestConnectionHeaderCannotStripTheInjection(t *testing.T) {
	f := newFixture(t)
	req, _ := http.NewRequest("GET", f.url("/v1/license"), nil)
	// A client naming the injected header as hop-by-hop would, if the
	// rule were applied after the injection, make egress drop it.
	req.Header.Set("Connection", "Authorization, X-Hop")
	req.Header.Set("X-Hop", "client's")
	resp, err := f.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%d", resp.StatusCode)
	}
	h := f.origin.last(t).Header
	if v := h.Values("Authorization"); len(v) != 1 || v[0] != "Bearer "+secret {
		t.Errorf("the origin saw Authorization %q, want the injected value", v)
	}
	if v := h.Get("X-Hop"); v != "" {
		t.Errorf("the origin saw X-Hop %q, a header the client's Connection named", v)
	}
}

func TestRequestsAreReadAsGosServerReadsThem(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	for _, req := range []string{
		// net/http's server refuses both; a reader that took the first
		// Host would decide on a name an origin might not read.
		"GET /v1/license HTTP/1.1\r\nHost: " + host + "\r\nHost: evil.test\r\n\r\n",
		"GET /v1/license HTTP/1.1\r\nHost: " + host + "\r\nX-Bad: a\x00b\r\n\r\n",
	} {
		resp, _ := f.raw(t, req)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %d %q, want 400", req, resp.StatusCode, resp.Status)
		}
	}
	if f.origin.count() != 0 {
		t.Error("a request net/http's server refuses reached the origin")
	}
}

// A request head over limits.max_header_bytes is answered 431, as the
// forward proxy and a gated plain-HTTP connection answer it
// (answer.BadRequest), and goes nowhere.
func TestOversizeRequestHeadIs431(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	resp, body := f.raw(t, "GET /v1/license HTTP/1.1\r\nHost: "+host+"\r\nX-Pad: "+strings.Repeat("p", 70<<10)+"\r\n\r\n")
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get("X-Egress-Id") == "" || !strings.Contains(body, "limits.max_header_bytes") {
		t.Errorf("%s %q, want 431 naming limits.max_header_bytes, with egress's id", resp.Status, body)
	}
	if f.origin.count() != 0 {
		t.Error("the oversize request reached the origin")
	}
}

func TestHostOtherThanTheCertificatesIsRefused(t *testing.T) {
	f := newFixture(t)
	for _, h := range []string{"other.test", "tunnel.vendor.test", fmt.Sprintf("api.vendor.test:%d", f.tlsPort+1)} {
		resp, _ := f.raw(t, "GET /v1/license HTTP/1.1\r\nHost: "+h+"\r\n\r\n")
		if resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != string(policy.ReasonHostMismatch) {
			t.Errorf("Host %s: %d %q", h, resp.StatusCode, resp.Status)
		}
	}
	if f.origin.count() != 0 {
		t.Error("a request naming another host reached the origin")
	}
}

func TestSNIOtherThanTheConnectIsRefused(t *testing.T) {
	f := newFixture(t)
	_, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "tunnel.vendor.test"})
	if err == nil {
		t.Fatal("a ClientHello for another name was served")
	}
	f.logs.entryWith(t, string(policy.ReasonSNIMismatch))
}

func TestHTTP2OnlyClientFailsWithItsOwnReason(t *testing.T) {
	f := newFixture(t)
	_, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test", NextProtos: []string{"h2"}})
	if err == nil {
		t.Fatal("an h2-only client was served")
	}
	f.logs.entryWith(t, string(policy.ReasonHTTP2Only))
}

// crypto/tls's client offers ed25519 in TLS 1.2 and 1.3: egress presents
// it an Ed25519 leaf for the name, chained to its CA (cheaper to sign
// with than P-256), and the request goes through.
func TestInterceptedGoClientGetsAnEd25519Leaf(t *testing.T) {
	f := newFixture(t)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test", MaxVersion: v})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			cs := tc.ConnectionState()
			leaf := cs.PeerCertificates[0]
			if _, ok := leaf.PublicKey.(ed25519.PublicKey); !ok || cs.Version != v {
				t.Fatalf("%s: presented a %T leaf; want ed25519.PublicKey", tls.VersionName(cs.Version), leaf.PublicKey)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: f.caPool, DNSName: "api.vendor.test"}); err != nil {
				t.Fatalf("the Ed25519 leaf does not chain to egress's CA: %v", err)
			}
			if !bytes.Equal(cs.PeerCertificates[len(cs.PeerCertificates)-1].Raw, f.ca.Cert.Raw) {
				t.Error("the chain does not end with egress's CA")
			}
			io.WriteString(tc, "GET /v1/license HTTP/1.1\r\nHost: api.vendor.test\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("request: %v %v", resp, err)
			}
		})
	}
}

func TestClientThatDoesNotTrustTheCA(t *testing.T) {
	f := newFixture(t)
	_, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{ServerName: "api.vendor.test"})
	if err == nil {
		t.Fatal("a client without egress's CA accepted its certificate")
	}
	e := f.logs.entryWith(t, string(policy.ReasonClientRejectedCA))
	if hint, _ := e["hint"].(string); !strings.Contains(hint, "SSL_CERT_FILE") {
		t.Errorf("hint %q does not say how to trust the CA", hint)
	}
}

func TestOriginWithABadCertificateIs502(t *testing.T) {
	f := newFixture(t)
	resp, err := f.client().Get(fmt.Sprintf("https://bad.vendor.test:%d/x", f.badPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(resp.Status, "TLS verification failed: certificate signed by unknown authority") {
		t.Errorf("%d %q", resp.StatusCode, resp.Status)
	}
	if f.origin.count() != 0 {
		t.Error("the request reached an origin egress could not verify")
	}
}

func TestRedirectIsPassedNotFollowed(t *testing.T) {
	f := newFixture(t)
	resp, err := f.client().Get(f.url("/v1/status/redirect"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 302 || resp.Header.Get("Location") != "https://elsewhere.test/" || f.origin.count() != 1 {
		t.Errorf("%d %q, %d requests upstream", resp.StatusCode, resp.Header.Get("Location"), f.origin.count())
	}
}

func TestKeepAliveAndReload(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	get := func(path string) int {
		resp, err := c.Get(f.url(path))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if get("/v1/license") != 200 || get("/v1/status/a") != 200 {
		t.Fatal("allowed requests on one connection")
	}
	if get("/v1/other") != 403 {
		t.Fatal("/v1/other allowed before the reload")
	}
	// The reload allows /v1/other and changes the secret.
	f.writeToken(t, "rotated-secret")
	f.load(t, strings.Replace(fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort), `"/v1/status/*"]`, `"/v1/status/*", "/v1/other"]`, 1))
	if get("/v1/other") != 200 {
		t.Fatal("/v1/other refused after the reload allowed it")
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "Bearer rotated-secret" {
		t.Errorf("after the reload the origin saw %q", got)
	}
	if get("/v1/license") != 200 {
		t.Fatal("refused after the reload")
	}
}

func TestPlainHTTPIsDecidedPerRequestWithoutInject(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	resp, err := c.Get(fmt.Sprintf("http://api.vendor.test:%d/v1/license", f.plainPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("allowed plain request: %d %s", resp.StatusCode, resp.Status)
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "" {
		t.Errorf("inject: applied on plain HTTP: %q", got)
	}
	resp, err = c.Get(fmt.Sprintf("http://api.vendor.test:%d/v1/status/../admin/x", f.plainPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != string(policy.ReasonRequestDenied) {
		t.Errorf("denied plain request: %d %s", resp.StatusCode, resp.Status)
	}
}

func TestHostWithoutRequestRulesStaysATunnel(t *testing.T) {
	f := newFixture(t)
	// tunnel.vendor.test has no http: it is a tunnel, and egress's CA
	// is not involved: the origin's own certificate (for api.vendor.test)
	// reaches the client.
	_, err := f.tunnel(t, "tunnel.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "tunnel.vendor.test"})
	if err == nil {
		t.Fatal("egress terminated TLS for a host without http:")
	}
}

// Real clients: curl, python3, python2.7 (urllib2, httplib).
func TestRealClients(t *testing.T) {
	f := newFixture(t)
	proxy := "http://" + f.proxy
	run := func(t *testing.T, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "PYENV_VERSION=2.7.18")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	check := func(t *testing.T, out, want string) {
		t.Helper()
		if !strings.Contains(out, want) {
			t.Errorf("output %q, want %q", out, want)
		}
		if strings.Contains(out, secret) {
			t.Error("the secret reached the client")
		}
	}
	t.Run("curl", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("curl not installed")
		}
		curl := func(args ...string) string {
			return run(t, "curl", append([]string{"-sS", "--path-as-is", "--proxy", proxy, "--cacert", f.caFile, "-o", "/dev/null", "-w", "%{http_code}\n"}, args...)...)
		}
		check(t, curl(f.url("/v1/license")), "200")
		check(t, curl("-X", "POST", f.url("/v1/license")), "403")
		check(t, curl(f.url("/v1/status/../admin/x")), "403")
		check(t, curl(f.url("/v1/%2e%2e/v1/license")), "200")
		if got := f.origin.last(t).RequestURI; got != "/v1/license" {
			t.Errorf("the origin saw %q", got)
		}
		// Without the CA, curl refuses egress's certificate.
		out, err := exec.Command("curl", "-sS", "--proxy", proxy, "--capath", t.TempDir(), "--cacert", "/dev/null", f.url("/v1/license")).CombinedOutput()
		if err == nil {
			t.Errorf("curl trusted egress without its CA: %s", out)
		}
	})
	py := `
import sys
url, proxy, ca = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    import urllib.request as ul, urllib.error as ue, http.client as hc
except ImportError:
    import urllib2 as ul, urllib2 as ue, httplib as hc
import ssl
ctx = ssl.create_default_context(cafile=ca)
op = ul.build_opener(ul.ProxyHandler({"https": proxy}), ul.HTTPSHandler(context=ctx))
for method, path in [("GET", "/v1/license"), ("POST", "/v1/license"), ("GET", "/v1/admin/x")]:
    data = b"{}" if method == "POST" else None
    try:
        r = op.open(ul.Request(url + path, data=data))
        print("urllib %d %s" % (r.getcode(), r.read().decode()))
    except ue.HTTPError as e:
        print("urllib %d %s" % (e.code, e.reason if hasattr(e, "reason") else e.msg))
# httplib / http.client through the tunnel
ph, pp = proxy[len("http://"):].rsplit(":", 1)
u = url[len("https://"):]
h, p = u.rsplit(":", 1)
c = hc.HTTPSConnection(ph, int(pp), context=ctx)
c.set_tunnel(h, int(p))
c.request("DELETE", "/v1/license")
r = c.getresponse()
print("httplib %d %s" % (r.status, r.reason))
`
	for _, interp := range []string{"python3", "python2.7"} {
		t.Run(interp, func(t *testing.T) {
			if _, err := exec.LookPath(interp); err != nil {
				t.Skip(interp + " not installed")
			}
			probe := exec.Command(interp, "-c", "import ssl")
			probe.Env = append(os.Environ(), "PYENV_VERSION=2.7.18")
			if err := probe.Run(); err != nil {
				t.Skip(interp + " does not run here (PYENV_VERSION=2.7.18)")
			}
			out := run(t, interp, "-c", py, fmt.Sprintf("https://api.vendor.test:%d", f.tlsPort), proxy, f.caFile)
			check(t, out, "urllib 200 origin saw GET /v1/license")
			check(t, out, fmt.Sprintf("urllib 403 egress denied POST https://api.vendor.test:%d/v1/license: no request rule matched; to allow: - {methods: [POST], paths: [\"/v1/license\"]} (id ", f.tlsPort))
			check(t, out, "urllib 403 egress denied GET https://api.vendor.test:")
			check(t, out, "httplib 403 egress denied DELETE https://api.vendor.test:")
		})
	}
}

// The transparent listener hands a redirected TLS connection to an
// intercepted host to the same path.
func TestTransparentTLSIsIntercepted(t *testing.T) {
	f := newFixture(t)
	current := func() *policy.Policy { return f.pol.Load() }
	loopback := netip.MustParseAddr("127.0.0.1")
	res := resolver{"api.vendor.test": loopback}
	d := &dialer.Dialer{Policy: current, Resolver: res}
	ca := f.ca
	is := &intercept.Server{Policy: current, CA: func() *certs.CA { return ca }, Roots: func() *x509.CertPool { return f.roots }, Dialer: d, Events: &eventlog.Sink{Logger: zerolog.New(f.logs), LogAllowed: true}}
	var dst atomic.Value
	dst.Store(netip.AddrPortFrom(loopback, uint16(f.tlsPort)))
	ts := &transparent.Server{Policy: current, Dialer: d, Resolver: res, Intercept: is, Events: is.Events,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return dst.Load().(netip.AddrPort), nil }}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ts.Shutdown(ctx)
	})
	get := func(path string) *http.Response {
		c := &http.Client{Transport: &http.Transport{
			DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) },
			TLSClientConfig: &tls.Config{RootCAs: f.caPool},
		}}
		resp, err := c.Get(f.url(path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get("/v1/license"); resp.StatusCode != 200 {
		t.Fatalf("allowed: %d %s", resp.StatusCode, resp.Status)
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "Bearer "+secret {
		t.Errorf("the origin saw %q", got)
	}
	if resp := get("/v1/admin/x"); resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != string(policy.ReasonRequestDenied) {
		t.Errorf("denied: %d %s", resp.StatusCode, resp.Status)
	}
	// Plain HTTP to a destination with request rules: the gate decides
	// each request on method and path too, and never injects.
	dst.Store(netip.AddrPortFrom(loopback, uint16(f.plainPort)))
	plain := func(path string) (*http.Response, error) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.vendor.test:%d\r\n\r\n", path, f.plainPort)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return http.ReadResponse(bufio.NewReader(c), nil)
	}
	before := f.origin.count()
	if resp, err := plain("/v1/status/../admin/x"); err != nil || resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != string(policy.ReasonRequestDenied) {
		t.Errorf("a plain request refused by a request rule: %v %v, want egress's 403", resp, err)
	}
	f.logs.entryWith(t, string(policy.ReasonRequestDenied))
	if f.origin.count() != before {
		t.Error("a refused plain request reached the origin")
	}
	resp, err := plain("/v1/status/../license")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("an allowed plain request: %v %v", resp, err)
	}
	got := f.origin.last(t)
	if got.RequestURI != "/v1/license" || got.Header.Get("Authorization") != "" {
		t.Errorf("the origin saw %q with Authorization %q; want the normal path and no inject", got.RequestURI, got.Header.Get("Authorization"))
	}
}

func TestRequestBodyGoesUp(t *testing.T) {
	f := newFixture(t)
	var body []byte
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	// Expect: 100-continue: egress says Continue itself, then the body
	// goes up with the request.
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	io.WriteString(tc, "POST /v1/telemetry HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
	cont, err := http.ReadResponse(br, nil)
	if err != nil || cont.StatusCode != 100 {
		t.Fatalf("want 100 Continue first: %v %v", cont, err)
	}
	io.WriteString(tc, "hello world")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "origin saw POST /v1/telemetry" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got := f.origin.last(t).Header.Get("X-Test-Body"); got != "hello world" {
		t.Errorf("the origin read %q", got)
	}
	// Chunked, on the same connection.
	io.WriteString(tc, "POST /v1/telemetry HTTP/1.1\r\nHost: "+host+"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("chunked: %v %v", resp, err)
	}
	if got := f.origin.last(t).Header.Get("X-Test-Body"); got != "hello" {
		t.Errorf("the origin read %q of a chunked body", got)
	}
	if n := f.origin.count(); n != 2 {
		t.Errorf("%d requests upstream, want 2", n)
	}
}

func TestAuditModeLetsThroughWithoutInject(t *testing.T) {
	f := newFixture(t)
	f.load(t, strings.Replace(fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort), "default: deny\n", "default: deny\nmode: audit\n", 1))
	resp, err := f.client().Get(f.url("/v1/other"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("audit mode refused: %d %s", resp.StatusCode, resp.Status)
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "" {
		t.Errorf("a request let through by audit mode got inject: %q", got)
	}
	f.logs.entryWith(t, string(policy.ReasonNoRequestRuleMatched))
	if !strings.Contains(f.logs.String(), `"event":"audit_deny"`) {
		t.Error("no audit_deny line")
	}
}

// A tunnel opened for a host without http: must not carry a ClientHello
// for one with http: (the same address): its requests would go
// undecided.
func TestTunnelCannotCarryAnInterceptedName(t *testing.T) {
	f := newFixture(t)
	_, err := f.tunnel(t, "tunnel.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.roots, ServerName: "api.vendor.test"})
	if err == nil {
		t.Fatal("a tunnel for tunnel.vendor.test carried TLS for api.vendor.test, whose requests egress decides")
	}
	e := f.logs.entryWith(t, "sni_mismatch")
	if hint, _ := e["hint"].(string); !strings.Contains(hint, "CONNECT to api.vendor.test itself") {
		t.Errorf("hint %q", hint)
	}
	if f.origin.count() != 0 {
		t.Error("the origin was reached")
	}
}

// A reload that gives a tunnelled host http: rules closes its open
// tunnels: the requests they carry would go undecided.
func TestReloadClosesTunnelsToANewlyInterceptedHost(t *testing.T) {
	f := newFixture(t)
	c, err := net.Dial("tcp", f.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT tunnel.vendor.test:%d HTTP/1.1\r\nHost: tunnel.vendor.test\r\n\r\n", f.plainPort)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	// One request through the tunnel: it is open and copying.
	fmt.Fprintf(c, "GET /public/x HTTP/1.1\r\nHost: tunnel.vendor.test:%d\r\n\r\n", f.plainPort)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a request in the tunnel: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	text := fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort)
	if n := f.tunnels.Revoke(f.pol.Load()); n != 0 {
		t.Fatalf("the same policy revoked %d tunnels", n)
	}
	f.load(t, strings.Replace(text, "  - host: tunnel.vendor.test\n", "  - host: tunnel.vendor.test\n    http:\n      - paths: [\"/public/**\"]\n", 1))
	if n := f.tunnels.Revoke(f.pol.Load()); n != 1 {
		t.Fatalf("revoked %d tunnels, want the one to the newly intercepted host", n)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel stayed open")
	}
}
