package httpproxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// secretServer listens on 127.0.0.2, which testPolicy keeps guarded
// (only 127.0.0.1 and ::1 are lifted), and records every connection it
// accepts: a bypass is any connection reaching it.
func secretServer(t *testing.T) *secret {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	s := &secret{accepted: make(chan string, 1024)}
	_, s.port, _ = net.SplitHostPort(l.Addr().String())
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted <- c.RemoteAddr().String()
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				br := bufio.NewReader(c)
				if r, err := http.ReadRequest(br); err == nil {
					io.Copy(io.Discard, r.Body)
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET")
			}()
		}
	}()
	return s
}

type secret struct {
	port     string
	accepted chan string // remote address of every accepted connection
}

// reached is how many connections reached the secret server so far. It
// waits for no fixed time: it connects once itself and counts what was
// accepted before its own connection, which the listener's FIFO accept
// queue hands out only after every connection made earlier.
func (s *secret) reached(t *testing.T) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.2:"+s.port, 5*time.Second)
	if err != nil {
		t.Fatalf("secret server: %v", err)
	}
	defer c.Close()
	mine, n := c.LocalAddr().String(), 0
	timeout := time.After(5 * time.Second)
	for {
		select {
		case a := <-s.accepted:
			if a == mine {
				return n
			}
			n++
		case <-timeout:
			t.Fatal("secret server did not accept the counting connection")
		}
	}
}

// guardedSpellings are spellings of 127.0.0.2 (guarded) that a client
// could use to get past the guard. Each one is checked to normalise to a
// loopback address before it is sent, so that a spelling egress would
// misread can never make this test dial anything but loopback.
var guardedSpellings = []string{
	"127.0.0.2", "2130706434", "0x7f000002", "0177.0.0.2", "0177.0.0.02", "127.2", "127.0.2",
	"0x7f.0.0.2", "0x7F.0x0.0x0.0x2", "127.000.000.002", "127.0.0.2.", "0x7f.2",
	"[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "[0:0:0:0:0:ffff:7f00:2]", "[::FFFF:127.0.0.2]",
	"[::ffff:127.0.0.2%25lo]", "[::ffff:127.0.0.2%25eth0]",
}

func checkLoopbackSpelling(t *testing.T, host string) {
	t.Helper()
	name, ip, err := policy.NormalizeHost(strings.TrimSuffix(host, "."))
	if err != nil || name != "" || !ip.Unmap().IsLoopback() {
		t.Fatalf("test bug: %q normalises to (%q, %v, %v), not a loopback address; refusing to send it", host, name, ip, err)
	}
}

func TestSecurityGuardedSpellings(t *testing.T) {
	f := newFixture(t, testPolicy)
	sec := secretServer(t)
	port := sec.port
	for _, h := range guardedSpellings {
		checkLoopbackSpelling(t, h)
		for _, form := range []struct{ name, req string }{
			{"CONNECT", "CONNECT " + h + ":" + port + " HTTP/1.1\r\nHost: " + h + ":" + port + "\r\n\r\n"},
			{"absolute http", "GET http://" + h + ":" + port + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"},
			{"absolute https", "GET https://" + h + ":" + port + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"},
		} {
			t.Run(form.name+" "+h+" is refused", func(t *testing.T) {
				resp, body, _, _ := f.raw(form.req)
				if resp.StatusCode != 403 && resp.StatusCode != 400 {
					t.Errorf("status %d, want 403 (or 400); body:\n%s", resp.StatusCode, body)
				}
			})
		}
	}
	if n := sec.reached(t); n != 0 {
		t.Fatalf("the guarded server was reached %d times", n)
	}
}

func TestSecurityRequestTricks(t *testing.T) {
	f := newFixture(t, testPolicy)
	sec := secretServer(t)
	port := sec.port
	p := f.plainPort()
	secret := "127.0.0.2:" + port
	tests := []struct {
		name   string
		req    string
		status []int // acceptable statuses of the first response
	}{
		{"userinfo naming an allowed host before a guarded one", "GET http://origin.test:" + p + "@" + secret + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", []int{400, 403}},
		{"userinfo in a CONNECT target", "CONNECT origin.test:" + p + "@" + secret + " HTTP/1.1\r\nHost: origin.test\r\n\r\n", []int{400, 403}},
		{"a CONNECT with an absolute URI", "CONNECT http://" + secret + "/ HTTP/1.1\r\nHost: " + secret + "\r\n\r\n", []int{400, 403}},
		{"a CONNECT with a path names the Host header's target", "CONNECT /x HTTP/1.1\r\nHost: " + secret + "\r\n\r\n", []int{400, 403}},
		{"an origin-form request with a guarded Host", "GET / HTTP/1.1\r\nHost: " + secret + "\r\n\r\n", []int{400}},
		{"a guarded URI with an allowed Host header", "GET http://" + secret + "/ HTTP/1.1\r\nHost: origin.test:" + p + "\r\n\r\n", []int{403}},
		{"a percent-encoded host", "GET http://127.0.0.%32:" + port + "/ HTTP/1.1\r\nHost: x\r\n\r\n", []int{400, 403}},
		{"a NUL in the host", "GET http://origin.test%00.127.0.0.2:" + port + "/ HTTP/1.1\r\nHost: x\r\n\r\n", []int{400, 403}},
		{"a raw NUL in a CONNECT target", "CONNECT origin.test\x00:" + port + " HTTP/1.1\r\n\r\n", []int{400, 403}},
		{"a backslash authority", "GET http://origin.test\\@" + secret + "/ HTTP/1.1\r\nHost: x\r\n\r\n", []int{400, 403}},
		{"a WebSocket upgrade to a guarded address", "GET http://" + secret + "/ws HTTP/1.1\r\nHost: " + secret + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", []int{403}},
		{"the metadata name without resolving", "GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\r\nHost: metadata.google.internal\r\n\r\n", []int{403}},
		{"the metadata name with a trailing dot and capitals", "CONNECT METADATA.google.internal.:80 HTTP/1.1\r\n\r\n", []int{403}},
		{"a full-width (IDN) spelling of a denied name", "CONNECT ｄｅｎｉｅｄ.test:443 HTTP/1.1\r\n\r\n", []int{403}},
		{"a double trailing dot", "CONNECT denied.test..:443 HTTP/1.1\r\n\r\n", []int{400, 403}},
		{"the unspecified address on the proxy's port (a loop)", "CONNECT 0.0.0.0:" + portOf("http://"+f.addr) + " HTTP/1.1\r\n\r\n", []int{403}},
		{"the IPv6 unspecified address on the proxy's port", "CONNECT [::]:" + portOf("http://"+f.addr) + " HTTP/1.1\r\n\r\n", []int{403}},
		{"a 6to4 address embedding a guarded one", "CONNECT [2002:7f00:2::]:" + port + " HTTP/1.1\r\n\r\n", []int{403}},
		{"a NAT64 address embedding a guarded one", "CONNECT [64:ff9b::7f00:2]:" + port + " HTTP/1.1\r\n\r\n", []int{403}},
		{"an IPv4-compatible address embedding a guarded one", "CONNECT [::127.0.0.2]:" + port + " HTTP/1.1\r\n\r\n", []int{403}},
		{"a NAT64 address embedding the metadata service", "CONNECT [64:ff9b::a9fe:a9fe]:80 HTTP/1.1\r\n\r\n", []int{403}},
		{"a link-local IPv6 with a zone", "CONNECT [fe80::1%25lo]:80 HTTP/1.1\r\n\r\n", []int{403}},
		{"AWS IMDS over IPv6", "CONNECT [fd00:ec2::254]:80 HTTP/1.1\r\n\r\n", []int{403}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" does not reach the guarded server", func(t *testing.T) {
			c, br := f.dial()
			io.WriteString(c, tt.req)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			ok := false
			for _, s := range tt.status {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Errorf("status %d, want one of %v; body:\n%s", resp.StatusCode, tt.status, body)
			}
		})
	}
	if n := sec.reached(t); n != 0 {
		t.Fatalf("the guarded server was reached %d times", n)
	}
}

// TestSecuritySmugglingAndPipelining sends, on one client connection,
// requests that try to make the proxy forward a second request to a
// guarded address without deciding on it.
func TestSecuritySmugglingAndPipelining(t *testing.T) {
	f := newFixture(t, testPolicy)
	sec := secretServer(t)
	port := sec.port
	p := f.plainPort()
	secret := "127.0.0.2:" + port
	inner := "GET http://" + secret + "/ HTTP/1.1\r\nHost: " + secret + "\r\n\r\n"
	tests := []struct {
		name string
		n    int // responses expected
		raw  string
	}{
		{"two pipelined requests in one write", 2, "GET http://origin.test:" + p + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n" + inner},
		{"HTTP/1.0 keep-alive then a guarded request", 2, "GET http://origin.test:" + p + "/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + inner},
		{"Content-Length and Transfer-Encoding together", 2, "POST http://origin.test:" + p + "/echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner},
		{"two different Content-Lengths", 1, "POST http://origin.test:" + p + "/echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 0\r\nContent-Length: " + itoa(len(inner)) + "\r\n\r\n" + inner},
		{"an obfuscated Transfer-Encoding", 1, "POST http://origin.test:" + p + "/echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n" + inner},
		{"a chunked body carrying a request", 2, "POST http://origin.test:" + p + "/echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n" + hexLen(inner) + "\r\n" + inner + "\r\n0\r\n\r\n" + inner},
		{"a CONNECT to an allowed origin followed by a guarded request in the tunnel's first bytes", 2, "CONNECT origin.test:" + p + " HTTP/1.1\r\n\r\n" + inner},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := f.dial()
			defer c.Close() // so that Shutdown, below, need not wait for its tunnel
			c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, tt.raw)
			var statuses []int
			for i := 0; i < tt.n; i++ {
				resp, err := http.ReadResponse(br, &http.Request{Method: firstWord(tt.raw)})
				if err != nil {
					break
				}
				statuses = append(statuses, resp.StatusCode)
				if resp.StatusCode == 200 && firstWord(tt.raw) == "CONNECT" && i == 0 {
					continue // the tunnel's bytes follow
				}
				io.Copy(io.Discard, resp.Body)
			}
			if len(statuses) != tt.n || statuses[len(statuses)-1] == 200 && firstWord(tt.raw) != "CONNECT" && tt.n > 1 {
				t.Errorf("statuses %v, want %d answers, the guarded request's not a 200", statuses, tt.n)
			}
		})
	}
	// Shutdown waits for every request in flight, a smuggled one
	// included; then nothing more can reach the secret server.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f.proxy.Shutdown(ctx)
	if n := sec.reached(t); n != 0 {
		t.Fatalf("the guarded server was reached %d times", n)
	}
}

// TestSecurityRedirectIsNotFollowed: an allowed origin redirecting to a
// guarded address gets its 3xx passed to the client untouched.
func TestSecurityRedirectIsNotFollowed(t *testing.T) {
	f := newFixture(t, testPolicy)
	sec := secretServer(t)
	port := sec.port
	redirector := newLoopbackServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.2:"+port+"/", http.StatusFound)
	}))
	resp, body, _, _ := f.raw("GET http://" + redirector + "/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), "127.0.0.2") {
		t.Fatalf("status %d location %q body %q; want the 302 passed through", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if n := sec.reached(t); n != 0 {
		t.Fatalf("the proxy followed the redirect: the guarded server was reached %d times", n)
	}
}

// TestSecurityEnvironmentProxyIgnored: HTTP_PROXY/HTTPS_PROXY/NO_PROXY in
// egress's own environment change nothing: the guarded server stays
// guarded (a proxy from the environment would skip the checking dialer).
func TestSecurityEnvironmentProxyIgnored(t *testing.T) {
	sec := secretServer(t)
	port := sec.port
	t.Setenv("HTTP_PROXY", "http://127.0.0.2:"+port)
	t.Setenv("HTTPS_PROXY", "http://127.0.0.2:"+port)
	t.Setenv("ALL_PROXY", "socks5://127.0.0.2:"+port)
	t.Setenv("NO_PROXY", "")
	f := newFixture(t, testPolicy)
	p, tp := f.plainPort(), f.tlsPort()
	for _, req := range []string{
		"GET http://origin.test:" + p + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
		"GET https://origin.test:" + tp + "/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
	} {
		resp, body, _, _ := f.raw(req)
		if resp.StatusCode != 200 || strings.Contains(body, "SECRET") {
			t.Errorf("%s: %d %q", firstLine(req), resp.StatusCode, body)
		}
	}
	resp, _, c, br := f.raw("CONNECT origin.test:" + p + " HTTP/1.1\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	resp, body := do(t, c, br, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
	if strings.Contains(body, "SECRET") {
		t.Errorf("tunnel reached the environment's proxy: %d %q", resp.StatusCode, body)
	}
	if n := sec.reached(t); n != 0 {
		t.Fatalf("the environment's proxy was used %d times", n)
	}
}

func newLoopbackServer(t *testing.T, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func firstWord(s string) string { w, _, _ := strings.Cut(s, " "); return w }

func itoa(n int) string { return strconv.Itoa(n) }

func hexLen(s string) string { return strconv.FormatInt(int64(len(s)), 16) }
