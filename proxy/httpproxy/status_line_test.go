package httpproxy_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/miekg/dns"
)

// idRe finds the decision id at the end of a reason phrase.
var idRe = regexp.MustCompile(`\(id ([0-9a-f]{16})\)$`)

// dnsResolver is a Go resolver whose only server is a miekg/dns server on
// loopback: names starting with "fail." get SERVFAIL, every other name
// NXDOMAIN.
func dnsResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		if len(q.Question) > 0 && strings.HasPrefix(q.Question[0].Name, "fail.") {
			m.SetRcode(q, dns.RcodeServerFailure)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// closedPort is a loopback port nothing listens on: connecting is refused.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

// silentServer accepts and never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// statusLine sends raw on a new connection and returns the status line as
// sent (without CRLF) and the parsed response with its body.
func statusLine(t *testing.T, f *fixture, raw string) (string, *http.Response, string) {
	t.Helper()
	c, br := f.dial()
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: read status line: %v", firstLine(raw), err)
	}
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(line+readRest(br))), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s: parse answer: %v", firstLine(raw), err)
	}
	var body strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&body)
	return strings.TrimSuffix(line, "\r\n"), resp, body.String()
}

func readRest(br *bufio.Reader) string {
	var b strings.Builder
	br.WriteTo(&b) // the proxy closes the connection after a refusal
	return b.String()
}

// Every answer egress writes itself says in its status line what it
// refused or could not reach, why, and the id of the log line: Python's
// http.client keeps only that line of a refused CONNECT.
func TestStatusLine(t *testing.T) {
	deny := newFixture(t, "version: 1\ndefault: deny\ndeny:\n  - {host: db.internal, ports: [5432]}\n")
	f := newFixture(t, testPolicy+"timeouts:\n  response: 300ms\n", withDialTimeout(300*time.Millisecond),
		func(f *fixture) { f.dialer.Resolver = mixedResolver{resolver, dnsResolver(t)} })
	tunnels := newFixture(t, testPolicy+"limits:\n  max_tunnels: 1\n")
	echo := echoServer(t, false)
	if resp, _, _, _ := tunnels.raw("CONNECT " + echo + " HTTP/1.1\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatalf("first tunnel: %d", resp.StatusCode)
	}
	p, refused, silent, full := f.plainPort(), closedPort(t), silentServer(t), testnet.FullBacklog(t).String()

	tests := []struct {
		name string
		f    *fixture
		raw  string
		want string // the status line; ID stands for the id in X-Egress-Id
	}{
		{"a CONNECT no rule allows names the fix", deny, "CONNECT api.example.com:443 HTTP/1.1\r\n\r\n",
			"HTTP/1.1 403 egress denied api.example.com:443: no rule matched; to allow: - {host: api.example.com, ports: [443]} (id ID)"},
		{"a plain request no rule allows names the fix", deny, "GET http://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
			"HTTP/1.1 403 egress denied api.example.com:80: no rule matched; to allow: - {host: api.example.com, ports: [80]} (id ID)"},
		{"a CONNECT denied by a rule names the rule", f, "CONNECT api.denied.test:443 HTTP/1.1\r\n\r\n",
			`HTTP/1.1 403 egress denied api.denied.test:443: test.yaml:8 {host: "*.denied.test"}; to allow: - {host: api.denied.test, ports: [443]} (id ID)`},
		{"an HTTP/1.0 CONNECT gets an HTTP/1.0 answer", f, "CONNECT denied.test:443 HTTP/1.0\r\n\r\n",
			"HTTP/1.0 403 egress denied denied.test:443: test.yaml:7 {host: denied.test}; to allow: - {host: denied.test, ports: [443]} (id ID)"},
		{"an exact deny rule has no one-line fix", deny, "CONNECT db.internal:5432 HTTP/1.1\r\n\r\n",
			"HTTP/1.1 403 egress denied db.internal:5432: test.yaml:4 {host: db.internal, ports: [5432]} (id ID)"},
		{"a guarded address names the guard and the address", f, "GET http://rebind.test:" + p + "/ HTTP/1.1\r\nHost: rebind.test\r\n\r\n",
			"HTTP/1.1 403 egress denied rebind.test:" + p + ": guard_loopback (127.0.0.2); to allow: - {cidr: 127.0.0.2/32, ports: [" + p + "]} (lifts guard_loopback) (id ID)"},
		{"a refused CONNECT says connection refused", f, "CONNECT 127.0.0.1:" + refused + " HTTP/1.1\r\n\r\n",
			"HTTP/1.1 502 egress could not reach 127.0.0.1:" + refused + ": connection refused (id ID)"},
		{"a refused plain request says connection refused", f, "GET http://127.0.0.1:" + refused + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 502 egress could not reach 127.0.0.1:" + refused + ": connection refused (id ID)"},
		{"a name that does not exist says no such host", f, "CONNECT nx.example:443 HTTP/1.1\r\n\r\n",
			"HTTP/1.1 502 egress could not resolve nx.example: no such host (id ID)"},
		{"a failing DNS server is not a missing name", f, "GET http://fail.example/ HTTP/1.1\r\nHost: fail.example\r\n\r\n",
			"HTTP/1.1 502 egress could not resolve fail.example: DNS server failure (id ID)"},
		{"a dial timeout is a 504", f, "CONNECT " + full + " HTTP/1.1\r\n\r\n",
			"HTTP/1.1 504 egress timed out reaching " + full + ": connect timed out (timeouts.dial) (id ID)"},
		{"a silent origin is a 504", f, "GET http://127.0.0.1:" + silent + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 504 egress timed out reaching 127.0.0.1:" + silent + ": timeout awaiting response headers (id ID)"},
		{"an origin with the wrong certificate fails TLS verification", f, "GET https://other.test:" + f.tlsPort() + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
			"HTTP/1.1 502 egress could not reach other.test:" + f.tlsPort() + ": TLS verification failed: certificate is valid for origin.test, not other.test (id ID)"},
		{"too many tunnels is a 503", tunnels, "CONNECT " + echo + " HTTP/1.1\r\n\r\n",
			"HTTP/1.1 503 egress too many open tunnels (limits.max_tunnels) (id ID)"},
		{"a CONNECT without a port is a 400", f, "CONNECT origin.test HTTP/1.1\r\n\r\n",
			`HTTP/1.1 400 egress bad request: CONNECT target "origin.test": address origin.test: missing port in address (id ID)`},
		{"an unsupported scheme is a 400", f, "GET ftp://origin.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
			`HTTP/1.1 400 egress bad request: scheme "ftp" not supported (use CONNECT for other protocols) (id ID)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line, resp, body := statusLine(t, tt.f, tt.raw)
			id := resp.Header.Get("X-Egress-Id")
			if want := strings.Replace(tt.want, "(id ID)", "(id "+id+")", 1); id == "" || line != want {
				t.Fatalf("status line\n got %q\nwant %q", line, want)
			}
			if !strings.HasSuffix(body, "id: "+id+"\n") {
				t.Errorf("body does not end with the id:\n%s", body)
			}
			if !resp.Close {
				t.Errorf("no Connection: close")
			}
		})
	}
}

// mixedResolver answers the test names from a map and asks a DNS server
// for the rest.
type mixedResolver struct {
	m   testResolver
	dns *net.Resolver
}

func (r mixedResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if _, ok := r.m[host]; ok {
		return r.m.LookupNetIP(ctx, network, host)
	}
	return r.dns.LookupNetIP(ctx, network, host)
}

// A reason phrase carries the client's host name: whatever it holds, the
// status line stays one line of printable ASCII, bounded, with the id.
func TestStatusLineHostileHost(t *testing.T) {
	f := newFixture(t, "version: 1\ndefault: deny\n")
	long := strings.Repeat(strings.Repeat("a", 60)+".", 4) + "test"
	for _, host := range []string{
		"caf\xc3\xa9.test",
		"a\x01b\x7f.test",
		"x\tinjected: 1.test",
		long,
	} {
		t.Run(strconv.Quote(host), func(t *testing.T) {
			line, resp, _ := statusLine(t, f, "CONNECT "+host+":443 HTTP/1.1\r\n\r\n")
			if resp.StatusCode != 403 && resp.StatusCode != 400 {
				t.Fatalf("status %d: %q", resp.StatusCode, line)
			}
			reason := strings.TrimPrefix(line, resp.Proto+" "+resp.Status[:3]+" ")
			t.Logf("%s", line)
			for _, c := range []byte(reason) {
				if c < 0x20 || c > 0x7e {
					t.Fatalf("byte %#x in %q", c, line)
				}
			}
			if len(reason) > 300 {
				t.Errorf("reason is %d bytes, want at most 300: %q", len(reason), reason)
			}
			if resp.Header.Get("X-Egress-Id") == "" && line == "HTTP/1.1 400 Bad Request" {
				return // net/http refused the request line itself; egress never saw it
			}
			if m := idRe.FindStringSubmatch(reason); m == nil || m[1] != resp.Header.Get("X-Egress-Id") {
				t.Errorf("reason does not end with the id %s: %q", resp.Header.Get("X-Egress-Id"), reason)
			}
			if len(resp.Header.Values("Injected")) > 0 {
				t.Errorf("a header was injected: %v", resp.Header)
			}
		})
	}
}

// pythonError prints the exception a plugin would show: http.client /
// httplib through a tunnel, or urllib / urllib2 through a proxy.
const pythonError = `
import sys, ssl
try:
    import http.client as httplib
    import urllib.request as ur
except ImportError:
    import httplib
    import urllib2 as ur
how, proxy_host, proxy_port, url, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
try:
    if how == "tunnel":
        c = httplib.HTTPSConnection(proxy_host, proxy_port, timeout=10)
        c.set_tunnel(host, port)
        c.request("GET", "/")
        c.getresponse()
    else:
        ur.urlopen(url, timeout=10)
    print("no error")
except Exception as e:
    print("error: %s" % e)
`

// What real clients show of a refusal: the target, the reason and the id
// of the log line, from the status line alone.
func TestStatusLineClients(t *testing.T) {
	t.Parallel() // waits on curl and python processes
	f := newFixture(t, testPolicy)
	proxyHost, proxyPort, _ := net.SplitHostPort(f.addr)
	refused := closedPort(t)
	type want struct{ target, why string }
	denied := want{"egress denied denied.test:443", "test.yaml:7 {host: denied.test}; to allow: - {host: denied.test, ports: [443]}"}
	deniedHTTP := want{"egress denied denied.test:80", "test.yaml:7 {host: denied.test}; to allow: - {host: denied.test, ports: [80]}"}
	unreachable := want{"egress could not reach 127.0.0.1:" + refused, "connection refused"}

	check := func(t *testing.T, out string, w want) {
		t.Helper()
		if !strings.Contains(out, w.target) || !strings.Contains(out, w.why) {
			t.Fatalf("output does not name %q and %q:\n%s", w.target, w.why, out)
		}
		m := regexp.MustCompile(`\(id ([0-9a-f]{16})\)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no id in the output:\n%s", out)
		}
		f.logs.waitEntry(t, m[1])
	}

	t.Run("curl -v", func(t *testing.T) {
		need(t, "curl")
		for _, tc := range []struct {
			url  string
			want want
		}{
			{"https://denied.test/", denied},
			{"http://denied.test/", deniedHTTP},
			{"https://127.0.0.1:" + refused + "/", unreachable},
		} {
			out, _ := run(t, nil, "curl", "-sS", "-v", "-x", "http://"+f.addr, tc.url)
			check(t, out, tc.want)
		}
	})

	t.Run("Go net/http", func(t *testing.T) {
		for _, tc := range []struct {
			url  string
			want want
		}{
			{"https://denied.test/", denied},
			{"https://127.0.0.1:" + refused + "/", unreachable},
		} {
			_, err := f.client().Get(tc.url)
			if err == nil {
				t.Fatalf("%s: no error", tc.url)
			}
			check(t, err.Error(), tc.want)
		}
		resp, err := f.client().Get("http://denied.test/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		check(t, resp.Status, deniedHTTP)
	})

	for _, py := range []struct{ name, bin string }{{"python3", "python3"}, {"python2.7", "python2.7"}} {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel()
			var env []string
			if py.bin == "python2.7" {
				env = append(env, "PYENV_VERSION=2.7.18")
			}
			need(t, py.bin, env...)
			proxyEnv := append(env, "https_proxy=http://"+f.addr, "http_proxy=http://"+f.addr)
			for _, tc := range []struct {
				name, how, url, host, port string
				want                       want
			}{
				{"http.client tunnel to a denied host", "tunnel", "", "denied.test", "443", denied},
				{"http.client tunnel to a closed port", "tunnel", "", "127.0.0.1", refused, unreachable},
				{"urllib https to a denied host", "urllib", "https://denied.test/", "", "0", denied},
				{"urllib http to a denied host", "urllib", "http://denied.test/", "", "0", deniedHTTP},
			} {
				t.Run(tc.name, func(t *testing.T) {
					out, err := run(t, proxyEnv, py.bin, "-c", pythonError, tc.how, proxyHost, proxyPort, tc.url, tc.host, tc.port)
					if err != nil {
						t.Fatalf("%v\n%s", err, out)
					}
					t.Logf("%s prints: %s", py.name, strings.TrimSpace(out))
					check(t, out, tc.want)
				})
			}
		})
	}
}
