package httpproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
)

// testPolicy allows everything but denied.test, and lifts the loopback
// guard for 127.0.0.1 and ::1 only, where the test origins listen: a name
// resolving to 127.0.0.2 stays guarded.
const testPolicy = `version: 1
default: allow
allow:
  - cidr: 127.0.0.1/32
  - cidr: "::1/128"
deny:
  - host: denied.test
  - host: "*.denied.test"
`

// testResolver answers for the test names; "panic.test" panics, to show a
// panic in one connection does not take the proxy down.
type testResolver map[string][]netip.Addr

func (m testResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if host == "panic.test" {
		panic("test resolver: panic.test")
	}
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

var resolver = testResolver{
	"origin.test":   {netip.MustParseAddr("127.0.0.1")},
	"other.test":    {netip.MustParseAddr("127.0.0.1")}, // not in the origin's certificate
	"rebind.test":   {netip.MustParseAddr("127.0.0.2")},
	"mixed.test":    {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")},
	"metadata.test": {netip.MustParseAddr("169.254.169.254")},
	"v6.test":       {netip.MustParseAddr("::1")},
}

// logBuffer collects the JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// entries returns the parsed lines whose id is id ("" for all).
func (l *logBuffer) entries(t *testing.T, id string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if id == "" || m["id"] == id {
			out = append(out, m)
		}
	}
	return out
}

// waitEntry waits for the line with id to be written (tunnels log at close).
func (l *logBuffer) waitEntry(t *testing.T, id string) map[string]any {
	t.Helper()
	var es []map[string]any
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if es = l.entries(t, id); len(es) == 0 {
			return fmt.Errorf("no log line with id %q; log:\n%s", id, l.String())
		}
		return nil
	})
	if len(es) > 1 {
		t.Errorf("%d log lines for id %s, want one", len(es), id)
	}
	return es[0]
}

// waitLine waits for a line that match accepts (what says which) and
// returns the last such line.
func (l *logBuffer) waitLine(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	var line map[string]any
	testwait.UntilNil(t, testwait.Timeout, func() error {
		for _, e := range l.entries(t, "") {
			if match(e) {
				line = e
			}
		}
		if line == nil {
			return fmt.Errorf("no %s line; log:\n%s", what, l.String())
		}
		return nil
	})
	return line
}

type fixture struct {
	t      *testing.T
	proxy  *httpproxy.Proxy
	addr   string // the proxy's host:port
	url    *url.URL
	logs   *logBuffer
	plain  *httptest.Server // HTTP origin on 127.0.0.1
	tls    *httptest.Server // HTTPS origin on 127.0.0.1
	roots  *x509.CertPool   // trusts tls
	caFile string           // tls's certificate as PEM
	self   *dialer.Self
	dialer *dialer.Dialer
}

type option func(*fixture)

func withDialTimeout(d time.Duration) option { return func(f *fixture) { f.dialer.Timeout = d } }
func logAllowed() option {
	return func(f *fixture) { f.proxy.Events.LogAllowed = true }
}

func loadPolicy(t *testing.T, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("load test policy: %v", err)
	}
	return p
}

// newFixture starts origins and a proxy enforcing yaml on loopback.
func newFixture(t *testing.T, yaml string, opts ...option) *fixture {
	t.Helper()
	pol := loadPolicy(t, yaml)
	current := func() *policy.Policy { return pol }
	f := &fixture{t: t, logs: &logBuffer{}, self: &dialer.Self{}}
	origin := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/echo" {
			io.Copy(w, r.Body)
			return
		}
		fmt.Fprintf(w, "origin host=%s path=%s proxy-auth=%q", r.Host, r.URL.Path, r.Header.Get("Proxy-Authorization"))
	})
	f.plain = httptest.NewServer(origin)
	t.Cleanup(f.plain.Close)
	f.tls = httptest.NewUnstartedServer(origin)
	f.tls.TLS = &tls.Config{Certificates: []tls.Certificate{originCert(t)}}
	f.tls.StartTLS()
	t.Cleanup(f.tls.Close)
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.tls.Certificate())
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.tls.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	logger := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), f.logs)).With().Timestamp().Logger()
	f.dialer = &dialer.Dialer{Policy: current, Resolver: resolver, IsSelf: f.self.Contains}
	f.proxy = &httpproxy.Proxy{
		Policy:          current,
		Dialer:          f.dialer,
		Events:          &eventlog.Sink{Logger: logger},
		Logger:          logger,
		TLSClientConfig: &tls.Config{RootCAs: f.roots},
	}
	for _, o := range opts {
		o(f)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.self.Add(l.Addr())
	f.addr = l.Addr().String()
	f.url = &url.URL{Scheme: "http", Host: f.addr}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.proxy.Serve(l); err != nil && err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f.proxy.Shutdown(ctx)
		<-done
	})
	return f
}

func (f *fixture) plainPort() string { return portOf(f.plain.URL) }
func (f *fixture) tlsPort() string   { return portOf(f.tls.URL) }

func portOf(u string) string {
	p, _ := url.Parse(u)
	return p.Port()
}

// client is a net/http client that uses the proxy and trusts the TLS origin.
func (f *fixture) client() *http.Client {
	tr := &http.Transport{Proxy: http.ProxyURL(f.url), TLSClientConfig: &tls.Config{RootCAs: f.roots}}
	f.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// dial opens a raw connection to the proxy.
func (f *fixture) dial() (net.Conn, *bufio.Reader) {
	f.t.Helper()
	c, err := net.DialTimeout("tcp", f.addr, 5*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	f.t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// do sends a raw request on c and reads the response with its body.
func do(t *testing.T, c net.Conn, br *bufio.Reader, raw string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLine(raw), err)
	}
	if method == http.MethodConnect && resp.StatusCode == 200 {
		return resp, ""
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

// raw sends one request on a new connection.
func (f *fixture) raw(raw string) (*http.Response, string, net.Conn, *bufio.Reader) {
	f.t.Helper()
	c, br := f.dial()
	resp, body := do(f.t, c, br, raw)
	return resp, body, c, br
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

// echoServer accepts TCP connections on 127.0.0.1 and echoes; "half"
// mode reads to EOF and then answers with the byte count, to test
// half-close through a tunnel.
func echoServer(t *testing.T, half bool) string {
	t.Helper()
	return testnet.ServeTCP(t, func(c net.Conn) {
		if half {
			n, _ := io.Copy(io.Discard, c)
			fmt.Fprintf(c, "got %d bytes", n)
			return
		}
		io.Copy(c, c)
	}).String()
}

func header(t *testing.T, resp *http.Response, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
}

// originCert is a self-signed certificate for origin.test and 127.0.0.1
// (httptest's names example.com, which Python 2.7 would need: its
// match_hostname ignores IP addresses).
func originCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "origin.test"},
		DNSNames:              []string{"origin.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
