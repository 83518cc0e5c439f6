package intercept_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/transparent"
)

// wsGUID is RFC 6455's key suffix (§4.2.2).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsKey is the handshake's Sec-WebSocket-Key, and wsAccept its answer.
const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// upgradeOrigin is the fixture origin's answer to a request that asks to
// switch protocols, a WebSocket server's handshake (RFC 6455 §4.2.2):
// 101 for the protocol asked (h2c too: an origin that would switch to
// it if egress let the offer through), "hi", then every byte echoed. On
// /v1/status/declined it declines with an ordinary 200; on
// /v1/status/other it switches to a protocol nobody asked for and
// speaks it.
func upgradeOrigin(w http.ResponseWriter, r *http.Request) {
	proto, greeting := r.Header.Get("Upgrade"), "hi"
	switch r.URL.Path {
	case "/v1/status/declined":
		io.WriteString(w, "declined")
		return
	case "/v1/status/other":
		proto, greeting = "irc/6.9", "PRIVMSG undecided"
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n%s", proto, wsAccept(r.Header.Get("Sec-WebSocket-Key")), greeting)
	io.Copy(c, brw)
}

// wsRequest is a WebSocket handshake for path, then early: bytes the
// client sends right behind it.
func (f *fixture) wsRequest(path, early string) string {
	return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: api.vendor.test:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer from-the-plugin\r\n\r\n%s", path, f.tlsPort, wsKey, early)
}

// intercepted opens an intercepted connection to api.vendor.test and
// writes req on it.
func (f *fixture) intercepted(t *testing.T, req string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, req); err != nil {
		t.Fatal(err)
	}
	return tc, bufio.NewReader(tc)
}

// readN reads exactly n bytes.
func readN(t *testing.T, br *bufio.Reader, n int, what string) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		t.Fatalf("%s: %q %v", what, b, err)
	}
	return string(b)
}

// linesWhere returns the log lines for which match holds.
func (l *logBuffer) linesWhere(match func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && match(m) {
			out = append(out, m)
		}
	}
	return out
}

// A WebSocket to an intercepted host on an allowed path: the upgrade
// request is decided as any request and gets inject:, the origin's 101
// reaches the client, bytes then flow both ways (those sent right behind
// the request first), the origin connection leaves the pool, and one
// line names the request with the tunnel's bytes when it ends.
func TestUpgradeOnAnInterceptedConnectionIsATunnel(t *testing.T) {
	f := newFixture(t)
	tc, br := f.intercepted(t, f.wsRequest("/v1/status/stream", "early"))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("handshake: %s %q, want the origin's 101", resp.Status, body)
	}
	if resp.Header.Get("Upgrade") != "websocket" || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(wsKey) {
		t.Errorf("101's header %v, want Upgrade: websocket and the origin's Sec-WebSocket-Accept", resp.Header)
	}
	up := f.origin.last(t)
	if up.URL.Path != "/v1/status/stream" || up.Header.Get("Upgrade") != "websocket" || up.Header.Get("Sec-WebSocket-Key") != wsKey {
		t.Errorf("the origin saw %s with Upgrade %q, key %q", up.URL.Path, up.Header.Get("Upgrade"), up.Header.Get("Sec-WebSocket-Key"))
	}
	if got := up.Header.Get("Authorization"); got != "Bearer "+secret {
		t.Errorf("the upgrade request reached the origin with Authorization %q, want the injected value", got)
	}
	if got := readN(t, br, 2, "the origin's first bytes"); got != "hi" {
		t.Errorf("got %q from the origin, want hi", got)
	}
	if got := readN(t, br, 5, "the bytes sent behind the request, echoed"); got != "early" {
		t.Errorf("echo %q, want early", got)
	}
	io.WriteString(tc, "ping")
	if got := readN(t, br, 4, "echo"); got != "ping" {
		t.Errorf("echo %q, want ping", got)
	}
	if n := f.is.IdleOrigins(); n != 0 {
		t.Errorf("%d idle origin connections while the switched one is open: it went back to the pool", n)
	}
	tc.Close()
	url := fmt.Sprintf("https://api.vendor.test:%d/v1/status/stream", f.tlsPort)
	var line map[string]any
	waitFor(t, "the upgraded request's line", func() bool {
		ls := f.logs.linesWhere(func(m map[string]any) bool { return m["url"] == url })
		if len(ls) > 0 {
			line = ls[0]
		}
		return line != nil
	})
	if line["method"] != "GET" || line["bytes_up"] != 9.0 || line["bytes_down"] != 11.0 {
		t.Errorf("line %v, want GET with bytes_up 9 and bytes_down 11", line)
	}
	if inj, _ := line["injected"].([]any); len(inj) != 1 || inj[0] != "Authorization" {
		t.Errorf("line names injected %v, want [Authorization]", line["injected"])
	}
	if n := len(f.logs.linesWhere(func(m map[string]any) bool { return m["url"] == url })); n != 1 {
		t.Errorf("%d lines for the upgraded request, want one", n)
	}
	if strings.Contains(f.logs.String(), secret) {
		t.Error("the injected value is in the log")
	}
}

// A switched connection is a tunnel: timeouts.tunnel_idle closes it.
func TestUpgradedConnectionClosesWhenIdle(t *testing.T) {
	f := newFixture(t)
	f.load(t, fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort)+"timeouts:\n  tunnel_idle: 1s\n")
	_, br := f.intercepted(t, f.wsRequest("/v1/status/stream", ""))
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	readN(t, br, 2, "the origin's first bytes")
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !strings.Contains(fmt.Sprint(err), "reset") {
		t.Fatalf("idle upgraded connection: %v, want it closed by timeouts.tunnel_idle", err)
	}
	url := fmt.Sprintf("https://api.vendor.test:%d/v1/status/stream", f.tlsPort)
	waitFor(t, "the line of the idle upgraded connection", func() bool {
		return len(f.logs.linesWhere(func(m map[string]any) bool {
			return m["url"] == url && strings.Contains(fmt.Sprint(m["error"]), "tunnel_idle")
		})) == 1
	})
}

// A reload that refuses the upgrade request's path closes its tunnel.
func TestReloadRevokesAnUpgradedConnection(t *testing.T) {
	f := newFixture(t)
	_, br := f.intercepted(t, f.wsRequest("/v1/status/stream", ""))
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	readN(t, br, 2, "the origin's first bytes")
	if n := f.tunnels.Revoke(f.pol.Load()); n != 0 {
		t.Fatalf("the same policy revoked %d tunnels", n)
	}
	f.load(t, strings.Replace(fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort), `"/v1/status/*"`, `"/v1/status/eu"`, 1))
	// The 101 and the origin's first bytes reach the client just before
	// the tunnel is registered: revoke until it is.
	testwait.Until(t, 5*time.Second, "the upgraded connection whose path is no longer allowed revoked", func() bool {
		return f.tunnels.Revoke(f.pol.Load()) == 1
	})
	if _, err := br.ReadByte(); err == nil {
		t.Error("the upgraded connection stayed open")
	}
	f.logs.entryWith(t, "revoked")
}

// An upgrade request is refused as any request: a 403, and nothing
// reaches the origin.
func TestUpgradeToARefusedPathIs403(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/v1/admin/stream", "/v1/other"} {
		t.Run(path, func(t *testing.T) {
			_, br := f.intercepted(t, f.wsRequest(path, "early"))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Status, "egress denied GET https://api.vendor.test:") {
				t.Errorf("%s: %s, want egress's 403", path, resp.Status)
			}
			if n := f.origin.count(); n != 0 {
				t.Errorf("the origin received %d requests", n)
			}
		})
	}
}

// A 101 to a protocol the client did not ask for ends the connection:
// a 502, and none of what the origin sent behind its 101 reaches the
// client.
func TestUpgradeSwitchedToAnotherProtocolEndsTheConnection(t *testing.T) {
	f := newFixture(t)
	_, br := f.intercepted(t, f.wsRequest("/v1/status/other", ""))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Status, "protocol the request did not ask for") {
		t.Errorf("%s, want a 502 naming the protocol", resp.Status)
	}
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "PRIVMSG") {
		t.Errorf("the origin's bytes after its 101 reached the client: %q", rest)
	}
	if n := f.origin.count(); n != 1 {
		t.Errorf("the origin received %d requests, want the one upgrade", n)
	}
}

// h2c is never an upgrade egress makes: the offer is removed, the origin
// (which would switch) answers in HTTP/1.1, and the connection stays
// intercepted.
func TestUpgradeToH2CIsNeverSwitched(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	tc, br := f.intercepted(t, "GET /v1/status/h2c HTTP/1.1\r\nHost: "+host+"\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "origin saw GET /v1/status/h2c" {
		t.Errorf("%s %q, want the origin's ordinary answer", resp.Status, body)
	}
	if up := f.origin.last(t); up.Header.Get("Upgrade") != "" || up.Header.Get("HTTP2-Settings") != "" {
		t.Errorf("the origin saw Upgrade %q, HTTP2-Settings %q", up.Header.Get("Upgrade"), up.Header.Get("HTTP2-Settings"))
	}
	f.stillIntercepted(t, tc, br)
}

// A declined upgrade is an ordinary answer: the connection stays
// intercepted, its next requests decided one by one.
func TestDeclinedUpgradeIsAnOrdinaryAnswer(t *testing.T) {
	f := newFixture(t)
	tc, br := f.intercepted(t, f.wsRequest("/v1/status/declined", ""))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "declined" {
		t.Fatalf("%s %q, want the origin's 200", resp.Status, body)
	}
	f.stillIntercepted(t, tc, br)
}

// stillIntercepted checks that tc (read through br) carries requests
// decided one by one: an allowed one is answered, then a refused one
// gets egress's 403.
func (f *fixture) stillIntercepted(t *testing.T, tc *tls.Conn, br *bufio.Reader) {
	t.Helper()
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	io.WriteString(tc, "GET /v1/license HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the next request on the connection: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "origin saw GET /v1/license" {
		t.Errorf("next request: %s %q", resp.Status, body)
	}
	io.WriteString(tc, "GET /v1/admin/x HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a refused request on the connection: %v %v, want 403", resp, err)
	}
}

// Python 3's ssl over a raw socket through CONNECT: the handshake and an
// echo.
func TestUpgradeFromPython3(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	f := newFixture(t)
	py := `
import base64, hashlib, os, socket, ssl, sys
proxy, host, port, ca = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ph, pp = proxy.rsplit(":", 1)
s = socket.create_connection((ph, int(pp)), timeout=10)
s.sendall(("CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n" % (host, port, host, port)).encode())
def head(sock):
    b = b""
    while not b.endswith(b"\r\n\r\n"):
        c = sock.recv(1)
        if not c:
            sys.exit("closed after %r" % b)
        b += c
    return b.decode()
h = head(s)
if not h.startswith("HTTP/1.1 200"):
    sys.exit("CONNECT: %r" % h)
t = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
t.sendall(("GET /v1/status/py HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, port, key)).encode())
h = head(t)
print(h.split("\r\n")[0])
want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
print("accept ok" if ("Sec-Websocket-Accept: " + want).lower() in h.lower() else "accept wrong: " + h)
t.sendall(b"ping")
got = b""
while len(got) < 6:
    c = t.recv(6 - len(got))
    if not c:
        break
    got += c
print("got " + got.decode())
`
	out, err := exec.Command("python3", "-c", py, f.proxy, "api.vendor.test", fmt.Sprint(f.tlsPort), f.caFile).CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	for _, want := range []string{"HTTP/1.1 101 Switching Protocols", "accept ok", "got hiping"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("python3 printed %q, want %q", out, want)
		}
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "Bearer "+secret {
		t.Errorf("the origin saw Authorization %q, want the injected value", got)
	}
}

// Plain http:// to an intercepted host, through the forward proxy and
// inside CONNECT, keeps the upgrade behaviour it had: the upgrade request
// is decided by method and path and never gets inject:; allowed, the
// origin's 101 switches the connection (the forward proxy's tunnel, the
// gate left) when it names the protocol asked for; a 101 to another
// protocol ends the exchange there too (fail closed).
func TestPlainHTTPUpgradeToAnInterceptedHost(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.plainPort)
	forward := func(t *testing.T, path string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", f.proxy)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET http://%s%s HTTP/1.1\r\nHost: %[1]s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nAuthorization: client-sent\r\n\r\n", host, path, wsKey)
		return c, bufio.NewReader(c)
	}
	inConnect := func(t *testing.T, path string) (net.Conn, *bufio.Reader) {
		c, br := f.plainTunnel(t)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nAuthorization: client-sent\r\n\r\n", path, host, wsKey)
		return c, br
	}
	for name, open := range map[string]func(*testing.T, string) (net.Conn, *bufio.Reader){"forward proxy": forward, "inside CONNECT": inConnect} {
		t.Run(name, func(t *testing.T) {
			c, br := open(t, "/v1/status/stream")
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("allowed upgrade: %v %v, want 101", resp, err)
			}
			if got := f.origin.last(t).Header.Get("Authorization"); got != "client-sent" {
				t.Errorf("Authorization upstream %q, want the client's own (no inject: on plain HTTP)", got)
			}
			io.WriteString(c, "ping")
			if got := readN(t, br, 6, "echo"); got != "hiping" {
				t.Errorf("got %q, want hiping", got)
			}
			// A 101 to a protocol the request did not offer ends the
			// exchange with egress's 502: none of what the origin says
			// after it arrives.
			_, br = open(t, "/v1/status/other")
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Status, "protocol the request did not ask for") {
				t.Errorf("a switch to another protocol: %v %v, want egress's 502 naming it", resp, err)
			}
			if rest, _ := io.ReadAll(br); strings.Contains(string(rest), "PRIVMSG") {
				t.Errorf("the origin's bytes after its 101 reached the client: %q", rest)
			}
			before := f.origin.count()
			_, br = open(t, "/v1/admin/stream")
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusForbidden {
				t.Errorf("refused upgrade: %v %v, want 403", resp, err)
			}
			if f.origin.count() != before {
				t.Error("a refused upgrade reached the origin")
			}
		})
	}
}

// The transparent listener's intercepted TLS connections switch as
// CONNECT's do: the connection's slot becomes the tunnel.
func TestUpgradeOnTheTransparentListener(t *testing.T) {
	f := newFixture(t)
	current := func() *policy.Policy { return f.pol.Load() }
	loopback := netip.MustParseAddr("127.0.0.1")
	res := resolver{"api.vendor.test": loopback}
	d := &dialer.Dialer{Policy: current, Resolver: res}
	ca := f.ca
	is := &intercept.Server{Policy: current, CA: func() *certs.CA { return ca }, Roots: func() *x509.CertPool { return f.roots }, Dialer: d, Events: &eventlog.Sink{Logger: zerolog.New(f.logs), LogAllowed: true}}
	ts := &transparent.Server{Policy: current, Dialer: d, Resolver: res, Intercept: is, Events: is.Events,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) {
			return netip.AddrPortFrom(loopback, uint16(f.tlsPort)), nil
		}}
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
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(tc, f.wsRequest("/v1/status/stream", ""))
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v, want 101", resp, err)
	}
	if got := f.origin.last(t).Header.Get("Authorization"); got != "Bearer "+secret {
		t.Errorf("the origin saw Authorization %q, want the injected value", got)
	}
	io.WriteString(tc, "ping")
	if got := readN(t, br, 6, "echo"); got != "hiping" {
		t.Errorf("got %q, want hiping", got)
	}
	if n := ts.Open(); n != 1 {
		t.Errorf("Open() = %d with the upgraded connection open, want 1", n)
	}
	tc.Close()
	url := fmt.Sprintf("https://api.vendor.test:%d/v1/status/stream", f.tlsPort)
	waitFor(t, "the upgraded request's line, with its bytes", func() bool {
		return len(f.logs.linesWhere(func(m map[string]any) bool {
			return m["url"] == url && m["bytes_up"] == 4.0 && m["bytes_down"] == 6.0
		})) == 1
	})
}
