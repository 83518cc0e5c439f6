package httpproxy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// wsOrigin answers a WebSocket-style handshake with 101 and then echoes
// on the raw connection; any other request gets 426.
func wsOrigin(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("Proxy-Authorization") != "" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi")
		io.Copy(c, brw)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// upgrade sends a WebSocket handshake for origin through the proxy.
func upgrade(t *testing.T, f *fixture, origin string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := f.dial()
	fmt.Fprintf(c, "GET http://%s/ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nProxy-Authorization: Basic dTpw\r\n\r\n", origin, origin)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return resp, c, br
}

// An upgraded connection (WebSocket) is a tunnel: it carries bytes both
// ways, counts toward limits.max_tunnels with CONNECT tunnels, closes on
// timeouts.tunnel_idle and logs one line with its bytes.
func TestUpgradeIsATunnel(t *testing.T) {
	origin := wsOrigin(t)
	f := newFixture(t, testPolicy+"timeouts:\n  tunnel_idle: 1s\nlimits:\n  max_tunnels: 1\n", logAllowed())
	resp, c, br := upgrade(t, f, origin)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	hi := make([]byte, 2)
	if _, err := io.ReadFull(br, hi); err != nil || string(hi) != "hi" {
		t.Fatalf("bytes the origin sent with its 101: %q %v", hi, err)
	}
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if n := f.proxy.OpenTunnels(); n != 1 {
		t.Errorf("OpenTunnels = %d with an upgraded connection open, want 1", n)
	}
	echo := echoServer(t, false)
	if resp, _, _, _ := f.raw("CONNECT " + echo + " HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("CONNECT beside an upgraded connection with max_tunnels 1: %d, want 503", resp.StatusCode)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle upgraded connection: %v, want EOF (timeouts.tunnel_idle)", err)
	}
	line := f.logs.waitLine(t, "upgraded connection's", func(e map[string]any) bool { return e["url"] == "http://"+origin+"/ws" })
	if line["bytes_up"] != 4.0 || line["bytes_down"] != 6.0 || !strings.Contains(fmt.Sprint(line["error"]), "tunnel_idle") {
		t.Errorf("line: up %v down %v error %v; want 4, 6, idle", line["bytes_up"], line["bytes_down"], line["error"])
	}
}

// An origin that declines the upgrade answers as for any request.
func TestUpgradeDeclined(t *testing.T) {
	f := newFixture(t, testPolicy)
	resp, _, _ := upgrade(t, f, strings.TrimPrefix(f.plain.URL, "http://"))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %s, want the origin's 200", resp.Status)
	}
	resp.Body.Close()
}

// An upgrade to an https:// origin goes over TLS verified for the URI's
// name; an origin that does not switch answers as for any request.
func TestUpgradeOverTLS(t *testing.T) {
	f := newFixture(t, testPolicy)
	c, br := f.dial()
	origin := "origin.test:" + f.tlsPort()
	fmt.Fprintf(c, "GET https://%s/ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", origin, origin)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "path=/ws") {
		t.Fatalf("%s %q, want the origin's 200 over TLS", resp.Status, body)
	}
}
