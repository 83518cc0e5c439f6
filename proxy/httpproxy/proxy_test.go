package httpproxy_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func TestForward(t *testing.T) {
	f := newFixture(t, testPolicy)
	p, tp := f.plainPort(), f.tlsPort()
	tests := []struct {
		name   string
		req    string
		status int
		reason string // X-Egress-Reason on a 403
		body   string // substring of the body
	}{
		{"an allowed name is fetched", "GET http://origin.test:" + p + "/a HTTP/1.1\r\nHost: origin.test:" + p + "\r\n\r\n", 200, "", "origin host=origin.test:" + p + " path=/a"},
		{"an allowed IP literal is fetched", "GET http://127.0.0.1:" + p + "/b HTTP/1.1\r\nHost: 127.0.0.1:" + p + "\r\n\r\n", 200, "", "path=/b"},
		{"an HTTP/1.0 request is fetched", "GET http://origin.test:" + p + "/c HTTP/1.0\r\n\r\n", 200, "", "path=/c"},
		{"a name denied by a rule gets a 403", "GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", 403, "denied_by_rule", "rule: test.yaml:7"},
		{"a subdomain denied by a wildcard gets a 403", "GET http://a.b.denied.test/ HTTP/1.1\r\nHost: a.b.denied.test\r\n\r\n", 403, "denied_by_rule", "rule: test.yaml:8"},
		{"a name resolving to a guarded address gets a 403", "GET http://rebind.test:" + p + "/ HTTP/1.1\r\nHost: rebind.test\r\n\r\n", 403, "guard_loopback", "127.0.0.2"},
		{"a name resolving to the metadata service gets a 403", "GET http://metadata.test/latest/meta-data/ HTTP/1.1\r\nHost: metadata.test\r\n\r\n", 403, "guard_metadata", "169.254.169.254"},
		{"a guarded IP literal gets a 403", "GET http://127.0.0.2:" + p + "/ HTTP/1.1\r\nHost: x\r\n\r\n", 403, "guard_loopback", "rule: none names this guarded address"},
		{"a mixed answer is fetched from its allowed address", "GET http://mixed.test:" + p + "/m HTTP/1.1\r\nHost: mixed.test\r\n\r\n", 200, "", "path=/m"},
		{"the proxy itself is a loop", "GET http://" + f.addr + "/ HTTP/1.1\r\nHost: " + f.addr + "\r\n\r\n", 403, "loop", "egress itself"},
		{"an absolute https URI naming the origin is fetched over verified TLS", "GET https://origin.test:" + tp + "/tls2 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", "path=/tls2"},
		{"an absolute https URI in plain text is fetched over verified TLS", "GET https://127.0.0.1:" + tp + "/tls HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200, "", "path=/tls"},
		{"an https origin whose certificate does not match is a 502", "GET https://other.test:" + tp + "/ HTTP/1.1\r\nHost: other.test\r\n\r\n", 502, "", "TLS verification"},
		{"an unknown name is a 502 with the resolver's error", "GET http://nx.test/ HTTP/1.1\r\nHost: nx.test\r\n\r\n", 502, "", "cannot resolve nx.test: lookup nx.test: no such host"},
		{"a refused connection is a 502", "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n\r\n", 502, "", "connection refused"},
		{"an origin-form request is not forwarded", "GET /secret HTTP/1.1\r\nHost: origin.test:" + p + "\r\n\r\n", 400, "", "egress is a forward proxy"},
		{"an unsupported scheme is a 400", "GET ftp://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, "", "scheme"},
		{"a malformed request line is a 400", "GET\r\n\r\n", 400, "", ""},
		{"a proxy user name is not forwarded", "GET http://origin.test:" + p + "/u HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: Basic dmVuZG9yLWE6c2VjcmV0\r\n\r\n", 200, "", `proxy-auth=""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, _, _ := f.raw(tt.req)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d; body:\n%s", resp.StatusCode, tt.status, body)
			}
			if !strings.Contains(body, tt.body) {
				t.Errorf("body %q does not contain %q", body, tt.body)
			}
			if tt.status == 403 {
				header(t, resp, map[string]string{"X-Egress-Decision": "deny", "X-Egress-Reason": tt.reason})
				if id := resp.Header.Get("X-Egress-Id"); !strings.Contains(body, "id: "+id) || id == "" {
					t.Errorf("X-Egress-Id %q not in body", id)
				}
			}
		})
	}
}

func TestConnect(t *testing.T) {
	f := newFixture(t, testPolicy)
	echo := echoServer(t, false)
	_, ep, _ := net.SplitHostPort(echo)
	tests := []struct {
		name   string
		target string
		status int
		reason string
	}{
		{"an allowed IP literal is tunnelled", "127.0.0.1:" + ep, 200, ""},
		{"an allowed name is tunnelled", "origin.test:" + ep, 200, ""},
		{"a name denied by a rule gets a 403", "denied.test:443", 403, "denied_by_rule"},
		{"a name resolving to a guarded address gets a 403", "rebind.test:" + ep, 403, "guard_loopback"},
		{"the proxy itself is a loop", f.addr, 403, "loop"},
		{"a decimal spelling of an allowed address is tunnelled", "2130706433:" + ep, 200, ""},
		{"a hex spelling of an allowed address is tunnelled", "0x7f.0.0.1:" + ep, 200, ""},
		{"a short spelling of a guarded address gets a 403", "127.2:" + ep, 403, "guard_loopback"},
		{"a decimal spelling of a guarded address gets a 403", "2130706434:" + ep, 403, "guard_loopback"},
		{"an octal spelling of a guarded address gets a 403", "0177.0.0.02:" + ep, 403, "guard_loopback"},
		{"a hex spelling of the metadata address gets a 403", "0xa9fea9fe:80", 403, "guard_metadata"},
		{"an IPv4-mapped IPv6 guarded address gets a 403", "[::ffff:127.0.0.2]:" + ep, 403, "guard_loopback"},
		{"a trailing dot does not escape a deny rule", "denied.test.:443", 403, "denied_by_rule"},
		{"upper case does not escape a deny rule", "DENIED.Test:443", 403, "denied_by_rule"},
		{"an unknown name is a 502", "nx.test:443", 502, ""},
		{"a target without a port is a 400", "origin.test", 400, ""},
		{"a target with port 0 is a 400", "origin.test:0", 400, ""},
		{"a target with a port out of range is a 400", "origin.test:70000", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, c, br := f.raw("CONNECT " + tt.target + " HTTP/1.1\r\nHost: " + tt.target + "\r\n\r\n")
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d; body:\n%s", resp.StatusCode, tt.status, body)
			}
			switch tt.status {
			case 200:
				io.WriteString(c, "ping")
				b := make([]byte, 4)
				if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
					t.Fatalf("echo through tunnel: %q, %v", b, err)
				}
			case 403:
				header(t, resp, map[string]string{"X-Egress-Decision": "deny", "X-Egress-Reason": tt.reason})
				// The 403 is written, then the connection closes.
				if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("connection still open after a refused CONNECT")
				}
			}
		})
	}
}

func TestConnectHTTP10(t *testing.T) {
	f := newFixture(t, testPolicy)
	echo := echoServer(t, false)
	c, br := f.dial()
	io.WriteString(c, "CONNECT "+echo+" HTTP/1.0\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.0 200") {
		t.Fatalf("status line %q, %v; want HTTP/1.0 200", line, err)
	}
}

// A client may send its ClientHello right behind the CONNECT, before the
// 200: those bytes must reach the destination.
func TestConnectEarlyData(t *testing.T) {
	f := newFixture(t, testPolicy)
	echo := echoServer(t, false)
	c, br := f.dial()
	io.WriteString(c, "CONNECT "+echo+" HTTP/1.1\r\nHost: x\r\n\r\nearly")
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(br, b); err != nil || string(b) != "early" {
		t.Fatalf("early bytes %q, %v", b, err)
	}
}

func TestConnectHalfClose(t *testing.T) {
	f := newFixture(t, testPolicy, logAllowed())
	echo := echoServer(t, true)
	resp, _, c, br := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	io.WriteString(c, strings.Repeat("x", 1000))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(br)
	if err != nil || string(b) != "got 1000 bytes" {
		t.Fatalf("after half-close got %q, %v", b, err)
	}
	id := resp.Header.Get("X-Egress-Id")
	_ = id // the 200 carries no headers; find the line by proto instead
	line := f.logs.waitLine(t, "tunnel's allow", func(e map[string]any) bool { return e["proto"] == "connect" && e["event"] == "allow" })
	if line["bytes_up"] != float64(1000) || line["bytes_down"] != float64(len("got 1000 bytes")) {
		t.Errorf("bytes_up %v bytes_down %v, want 1000 and 14", line["bytes_up"], line["bytes_down"])
	}
	if line["level"] != "info" {
		t.Errorf("level %v, want info", line["level"])
	}
}

func TestNetHTTPClient(t *testing.T) {
	f := newFixture(t, testPolicy)
	cl := f.client()
	t.Run("https through CONNECT", func(t *testing.T) {
		resp, err := cl.Get(f.tls.URL + "/via-connect")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "path=/via-connect") {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
	})
	t.Run("plain http", func(t *testing.T) {
		resp, err := cl.Get(f.plain.URL + "/plain")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "path=/plain") {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
	})
	t.Run("a POST body reaches the origin", func(t *testing.T) {
		resp, err := cl.Post(f.plain.URL+"/echo", "text/plain", strings.NewReader("body bytes"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "body bytes" {
			t.Fatalf("echo %q", b)
		}
	})
	t.Run("https to a denied name fails with the 403", func(t *testing.T) {
		var status int
		tr := cl.Transport.(*http.Transport).Clone()
		tr.OnProxyConnectResponse = func(_ context.Context, _ *url.URL, _ *http.Request, r *http.Response) error {
			status = r.StatusCode
			return nil
		}
		defer tr.CloseIdleConnections()
		_, err := (&http.Client{Transport: tr}).Get("https://denied.test/")
		if err == nil || status != 403 {
			t.Fatalf("err %v, CONNECT status %d; want an error after a 403", err, status)
		}
	})
	t.Run("plain http to a denied name is a 403", func(t *testing.T) {
		resp, err := cl.Get("http://denied.test/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

// Every request on a kept-alive connection is decided on its own; a
// refusal closes the connection after its answer.
func TestKeepAliveSwitchToDenied(t *testing.T) {
	f := newFixture(t, testPolicy)
	p := f.plainPort()
	c, br := f.dial()
	steps := []struct {
		host   string
		status int
	}{
		{"origin.test:" + p, 200},
		{"denied.test", 403},
		{"origin.test:" + p, 200},
		{"rebind.test:" + p, 403},
		{"127.0.0.1:" + p, 200},
		{"127.0.0.2:" + p, 403},
	}
	// A refusal is written on the hijacked connection, to carry its
	// reason phrase (answer.go), so it ends the connection: the client
	// says so and goes on on a new one.
	for i, s := range steps {
		resp, body := do(t, c, br, "GET http://"+s.host+"/ HTTP/1.1\r\nHost: "+s.host+"\r\n\r\n")
		if resp.StatusCode != s.status {
			t.Fatalf("request %d to %s: status %d, want %d: %s", i, s.host, resp.StatusCode, s.status, body)
		}
		if wantClose := s.status != 200; resp.Close != wantClose {
			t.Fatalf("request %d: Connection: close is %v, want %v", i, resp.Close, wantClose)
		}
		if resp.Close {
			if _, err := br.ReadByte(); err != io.EOF {
				t.Fatalf("request %d: after Connection: close, read %v, want EOF", i, err)
			}
			c, br = f.dial()
		}
	}
}

// The request target decides, not the Host header: net/http drops a Host
// header that disagrees with an absolute URI, and the origin sees the
// URI's host (the header is rewritten, not trusted).
func TestHostHeaderDoesNotDecide(t *testing.T) {
	f := newFixture(t, testPolicy)
	p := f.plainPort()
	resp, body, _, _ := f.raw("GET http://origin.test:" + p + "/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
	if resp.StatusCode != 200 || !strings.Contains(body, "host=origin.test:"+p+" ") {
		t.Fatalf("allowed URI with a denied Host header: %d %q; want 200 and the URI's host upstream", resp.StatusCode, body)
	}
	resp, body, _, _ = f.raw("GET http://denied.test/ HTTP/1.1\r\nHost: origin.test:" + p + "\r\n\r\n")
	if resp.StatusCode != 403 {
		t.Fatalf("denied URI with an allowed Host header: %d %q; want 403", resp.StatusCode, body)
	}
	// CONNECT: the request target decides; its Host header is ignored.
	resp, body, _, _ = f.raw("CONNECT denied.test:443 HTTP/1.1\r\nHost: origin.test:" + p + "\r\n\r\n")
	if resp.StatusCode != 403 {
		t.Fatalf("CONNECT to a denied target with an allowed Host: %d %q", resp.StatusCode, body)
	}
}

func TestHeaderLimits(t *testing.T) {
	t.Run("headers over 64 KiB by default are a 431", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		resp, _, _, _ := f.raw("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: " + strings.Repeat("a", 65<<10) + "\r\n\r\n")
		if resp.StatusCode != 431 {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})
	t.Run("limits.max_header_bytes is the limit", func(t *testing.T) {
		f := newFixture(t, testPolicy+"limits:\n  max_header_bytes: 16384\n")
		p := f.plainPort()
		resp, _, _, _ := f.raw("GET http://origin.test:" + p + "/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: " + strings.Repeat("a", 12000) + "\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("12000-byte header: status %d, want 200", resp.StatusCode)
		}
		resp, _, _, _ = f.raw("CONNECT origin.test:" + p + " HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 17000) + "\r\n\r\n")
		if resp.StatusCode != 431 {
			t.Fatalf("17000-byte header: status %d, want 431", resp.StatusCode)
		}
	})
}

func TestDialTimeoutIs504(t *testing.T) {
	f := newFixture(t, testPolicy, withDialTimeout(300*time.Millisecond))
	ap := testnet.FullBacklog(t)
	for _, req := range []string{
		"CONNECT " + ap.String() + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://" + ap.String() + "/ HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		start := time.Now()
		resp, body, _, _ := f.raw(req)
		if resp.StatusCode != 504 {
			t.Fatalf("%s: status %d, want 504: %s", firstLine(req), resp.StatusCode, body)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("%s: answered after %v", firstLine(req), el)
		}
	}
}

func TestTooManyTunnelsIs503(t *testing.T) {
	f := newFixture(t, testPolicy+"limits:\n  max_tunnels: 1\n")
	echo := echoServer(t, false)
	resp, _, c, _ := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("first tunnel: %d", resp.StatusCode)
	}
	resp, body, _, _ := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 503 {
		t.Fatalf("second tunnel: %d, want 503: %s", resp.StatusCode, body)
	}
	c.Close()
	testwait.Until(t, testwait.Timeout, "the closed tunnel's slot freed", func() bool { return f.proxy.OpenTunnels() == 0 })
	resp, _, _, _ = f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("after the first closed: %d, want 200", resp.StatusCode)
	}
}

func TestSlowloris(t *testing.T) {
	f := newFixture(t, testPolicy+"timeouts:\n  header: 300ms\n")
	start := time.Now() // before the server accepts, so before its header deadline starts
	c, br := f.dial()
	io.WriteString(c, "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n") // and never the blank line
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.ReadAll(br)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after 5s of an unfinished header")
	}
	if el := time.Since(start); el < 290*time.Millisecond {
		t.Errorf("closed after %v, before the header timeout: %v", el, err)
	}
}

func TestTunnelIdleTimeout(t *testing.T) {
	f := newFixture(t, testPolicy+"timeouts:\n  tunnel_idle: 1s\n")
	echo := echoServer(t, false)
	resp, _, c, br := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// Activity keeps it open past the timeout...
	for i := 0; i < 8; i++ {
		io.WriteString(c, "x")
		if _, err := br.ReadByte(); err != nil {
			t.Fatalf("tunnel closed while active (round %d): %v", i, err)
		}
		time.Sleep(200 * time.Millisecond) // activity spread past tunnel_idle: the pacing is the test
	}
	// ...idleness closes it.
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle tunnel: read %v, want EOF", err)
	}
	if el := time.Since(start); el < 700*time.Millisecond {
		t.Errorf("closed %v after the last byte, before tunnel_idle", el)
	}
}

// The idle watcher, started by the first tunnel, reads each later
// tunnel's timeout: -race shows it if the timeout is set after the tunnel
// joins the set. The second tunnel still closes for idleness.
func TestTunnelIdleTimeoutOfALaterTunnel(t *testing.T) {
	f := newFixture(t, testPolicy+"timeouts:\n  tunnel_idle: 300ms\n")
	echo := echoServer(t, false)
	for i := 0; i < 2; i++ {
		resp, _, c, br := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("tunnel %d: status %d", i, resp.StatusCode)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("idle tunnel %d: read %v, want EOF", i, err)
		}
	}
}

func TestIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	l.Close()
	f := newFixture(t, testPolicy)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v6 origin") })}
	l6, _ := net.Listen("tcp", "[::1]:0")
	go srv.Serve(l6)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(l6.Addr().String())
	for _, host := range []string{"[::1]:" + port, "v6.test:" + port} {
		resp, body, _, _ := f.raw("GET http://" + host + "/ HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		if resp.StatusCode != 200 || body != "v6 origin" {
			t.Errorf("GET %s: %d %q", host, resp.StatusCode, body)
		}
		resp, _, _, _ = f.raw("CONNECT " + host + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Errorf("CONNECT %s: %d", host, resp.StatusCode)
		}
	}
}

func TestDenyLogLine(t *testing.T) {
	f := newFixture(t, testPolicy)
	p := f.plainPort()
	tests := []struct {
		name string
		req  string
		want map[string]any
	}{
		{"plain http denied by a rule", "GET http://denied.test/x?q=1 HTTP/1.1\r\nHost: denied.test\r\n\r\n", map[string]any{
			"level": "warn", "event": "deny", "proto": "http", "host": "denied.test", "port": float64(80),
			"method": "GET", "url": "http://denied.test/x?q=1", "rule": "test.yaml:7", "reason": "denied_by_rule", "policy": "test.yaml"}},
		{"CONNECT to a guarded address", "CONNECT rebind.test:" + p + " HTTP/1.1\r\n\r\n", map[string]any{
			"level": "warn", "event": "deny", "proto": "connect", "host": "rebind.test", "ip": "127.0.0.2",
			"rule": "", "reason": "guard_loopback", "policy": "test.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, c, _ := f.raw(tt.req)
			id := resp.Header.Get("X-Egress-Id")
			line := f.logs.waitEntry(t, id)
			for k, v := range tt.want {
				if line[k] != v {
					t.Errorf("%s = %#v, want %#v", k, line[k], v)
				}
			}
			if line["client"] != c.LocalAddr().String() {
				t.Errorf("client = %v, want %v", line["client"], c.LocalAddr())
			}
			if _, err := time.Parse(time.RFC3339, fmt.Sprint(line["time"])); err != nil {
				t.Errorf("time %v: %v", line["time"], err)
			}
			if line["hint"] == nil || line["hint"] == "" {
				t.Errorf("no hint")
			}
		})
	}
}

func TestAuditMode(t *testing.T) {
	// The deny rule, not a guard, refuses the loopback origin: guards are
	// enforced even in audit mode (the policy test says so).
	f := newFixture(t, "version: 1\ndefault: deny\nmode: audit\nallow:\n  - cidr: 127.0.0.0/8\ndeny:\n  - cidr: 127.0.0.1/32\n")
	p := f.plainPort()
	resp, body, _, _ := f.raw("GET http://127.0.0.1:" + p + "/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("audit mode: status %d %q, want 200", resp.StatusCode, body)
	}
	var found bool
	for _, e := range f.logs.entries(t, "") {
		if e["event"] == "audit_deny" && e["level"] == "warn" && e["proto"] == "http" {
			found = true
		}
	}
	if !found {
		t.Fatal("no audit_deny line")
	}
	// A tunnel's audit denial is logged when it opens, not when it closes.
	echo := echoServer(t, false)
	resp, _, _, _ = f.raw("CONNECT " + echo + " HTTP/1.1\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("audit mode CONNECT: %d", resp.StatusCode)
	}
	f.logs.waitLine(t, "open tunnel's audit_deny", func(e map[string]any) bool { return e["event"] == "audit_deny" && e["proto"] == "connect" })
	// A dial that fails after an audit denial logs its error too.
	resp, _, _, _ = f.raw("CONNECT 127.0.0.1:" + closedPort(t) + " HTTP/1.1\r\n\r\n")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("audit mode CONNECT to a closed port: %d, want 502", resp.StatusCode)
	}
	id := resp.Header.Get("X-Egress-Id")
	if e := f.logs.waitEntry(t, id); e["event"] != "audit_deny" || e["error"] == nil {
		t.Fatalf("the failed dial's line %v, want audit_deny with its error", e)
	}
}

// The 403 body is user-visible text: compare it with a golden file.
func TestDenyBodyGolden(t *testing.T) {
	f := newFixture(t, testPolicy)
	for _, tc := range []struct{ name, req string }{
		{"deny_rule_connect", "CONNECT api.denied.test:443 HTTP/1.1\r\n\r\n"},
		{"deny_guard_http", "GET http://rebind.test:8080/ HTTP/1.1\r\nHost: rebind.test\r\n\r\n"},
		{"deny_default", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ff := f
			req := tc.req
			if req == "" {
				ff = newFixture(t, "version: 1\ndefault: deny\n")
				req = "CONNECT db.example.com:5432 HTTP/1.1\r\n\r\n"
			}
			resp, body, _, _ := ff.raw(req)
			body = strings.ReplaceAll(body, resp.Header.Get("X-Egress-Id"), "ID")
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				os.MkdirAll("testdata", 0o755)
				os.WriteFile(golden, []byte(body), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if body != string(want) {
				t.Errorf("403 body:\n%s\nwant:\n%s", body, want)
			}
		})
	}
}

func TestPanicInOneConnection(t *testing.T) {
	f := newFixture(t, testPolicy)
	for _, req := range []string{
		"CONNECT panic.test:443 HTTP/1.1\r\n\r\n",
		"GET http://panic.test/ HTTP/1.1\r\nHost: panic.test\r\n\r\n",
	} {
		// The panicking connection is closed (a 502 would do too).
		c, br := f.dial()
		io.WriteString(c, req)
		if resp, err := http.ReadResponse(br, nil); err == nil && resp.StatusCode != 502 {
			t.Errorf("%s: got %d; want the connection closed or a 502", firstLine(req), resp.StatusCode)
		}
		// The proxy still serves.
		resp, _, _, _ := f.raw("GET http://origin.test:" + f.plainPort() + "/ HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("after a panic: status %d", resp.StatusCode)
		}
	}
	if !regexp.MustCompile(`panic serving request(.|\n)*panic serving request`).MatchString(f.logs.String()) {
		t.Error("the panic was not logged")
	}
}

func TestShutdown(t *testing.T) {
	t.Run("an open tunnel drains, new connections are refused", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		echo := echoServer(t, false)
		resp, _, c, br := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- f.proxy.Shutdown(ctx)
		}()
		testwait.Until(t, testwait.Timeout, "Shutdown to close the listener", func() bool {
			nc, err := net.DialTimeout("tcp", f.addr, time.Second)
			if err == nil {
				nc.Close()
			}
			return err != nil
		})
		// The tunnel still works while draining.
		io.WriteString(c, "still here")
		b := make([]byte, 10)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "still here" {
			t.Fatalf("tunnel during drain: %q %v", b, err)
		}
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned (%v) with a tunnel open", err)
		default:
		}
		c.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return after the tunnel closed")
		}
	})
	t.Run("the drain deadline closes tunnels still open", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		echo := echoServer(t, false)
		resp, _, _, br := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := f.proxy.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("tunnel after the drain deadline: %v, want EOF", err)
		}
	})
}

// A Basic Proxy-Authorization user name selects its clients: entry.
func TestProxyUserSelectsClientPolicy(t *testing.T) {
	f := newFixture(t, testPolicy+`clients:
  - name: vendor-a
    users: [vendor-a]
    default: deny
`)
	p := f.plainPort()
	req := "GET http://origin.test:" + p + "/ HTTP/1.1\r\nHost: x\r\n"
	resp, _, _, _ := f.raw(req + "\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("without a user: %d, want 200", resp.StatusCode)
	}
	// vendor-a:secret
	resp, body, _, _ := f.raw(req + "Proxy-Authorization: Basic dmVuZG9yLWE6c2VjcmV0\r\n\r\n")
	if resp.StatusCode != 403 || !strings.Contains(body, "(client vendor-a)") {
		t.Fatalf("as vendor-a: %d %q, want a 403 from its policy", resp.StatusCode, body)
	}
	resp, _, _, _ = f.raw("CONNECT origin.test:" + p + " HTTP/1.1\r\nProxy-Authorization: Basic dmVuZG9yLWE6c2VjcmV0\r\n\r\n")
	if resp.StatusCode != 403 {
		t.Fatalf("CONNECT as vendor-a: %d, want 403", resp.StatusCode)
	}
}

// Issue 19: a CONNECT whose client has gone while the origin stays
// silent (and open) was kept forever, counted against
// limits.max_tunnels. timeouts.half_close of the policy frees it.
func TestConnectClientGoneOriginSilent(t *testing.T) {
	f := newFixture(t, testPolicy+"timeouts:\n  half_close: 300ms\nlimits:\n  max_tunnels: 1\n")
	end := make(chan struct{})
	t.Cleanup(func() { close(end) })
	// The origin reads the client's half-close, then neither answers nor
	// closes until the test ends.
	silent := testnet.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c); <-end }).String()
	resp, _, c, _ := f.raw("CONNECT " + silent + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.Close()
	testwait.Until(t, testwait.Timeout, "the tunnel's slot freed", func() bool { return f.proxy.OpenTunnels() == 0 })
	resp, _, _, _ = f.raw("CONNECT " + silent + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Errorf("the next CONNECT at max_tunnels 1: status %d, want 200", resp.StatusCode)
	}
}
