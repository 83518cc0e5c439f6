//go:build linux

package transparent

//lint:file-ignore SA1019 the origin must speak h2c by Upgrade (RFC 7540 §3.2), which only the deprecated x/net h2c handler implements: net/http's Server speaks unencrypted HTTP/2 by prior knowledge only

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/rs/zerolog"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"golang.org/x/net/http2/hpack"
)

// TestSecurityAnH2CUpgradeOnAGatedConnectionGoesUpAsHTTP1AndNeverLeavesTheGate:
// a request asking `Upgrade: h2c` of an h2c-capable origin (Go's
// h2c.NewHandler) is sent up without the upgrade, so the origin answers
// it in HTTP/1.1 and no HTTP/2 frame naming another host (evil.test)
// ever reaches it; the prior-knowledge preface stays refused.
func TestSecurityAnH2CUpgradeOnAGatedConnectionGoesUpAsHTTP1AndNeverLeavesTheGate(t *testing.T) {
	seen := make(chan string, 10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Host
		io.WriteString(w, "hi "+r.Host)
	})
	web := httptest.NewServer(h2c.NewHandler(h, &http2.Server{}))
	t.Cleanup(web.Close)
	o := netip.MustParseAddrPort(web.Listener.Addr().String())
	addr := h2cGatedServer(t, o)
	// Control: the h2c preface itself is refused here.
	pc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(pc, http2.ClientPreface)
	if b, _ := io.ReadAll(pc); len(b) != 0 {
		t.Errorf("prior-knowledge h2c answered %q, want refused", b)
	}
	pc.Close()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// HTTP2-Settings: an empty SETTINGS payload, base64url.
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Errorf("upgrade answer: %s, want the request answered in HTTP/1.1", resp.Status)
		h2cSendEvil(t, c, br, seen)
		return
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "hi web.test" {
		t.Fatalf("h2c-capable origin over HTTP/1.1: %s %q %v, want 200 \"hi web.test\"", resp.Status, body, err)
	}
	if got := <-seen; got != "web.test" {
		t.Errorf("origin served Host %q, want web.test", got)
	}
}

// h2cSendEvil sends, on a connection the origin switched to h2c, an
// HTTP/2 request for evil.test and fails if the origin serves it.
func h2cSendEvil(t *testing.T, c net.Conn, br *bufio.Reader, seen <-chan string) {
	t.Helper()
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, br)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "evil.test"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	deadline := time.After(3 * time.Second)
	for {
		select {
		case h := <-seen:
			t.Logf("origin served Host %q", h)
			if h == "evil.test" {
				t.Errorf("BYPASS: the origin served evil.test through the gate")
				return
			}
		case <-deadline:
			return
		}
	}
}

// h2cGatedServer is a transparent listener sending everything to origin,
// whose address is allowed only as web.test: every request is gated.
func h2cGatedServer(t *testing.T, origin netip.AddrPort) string {
	pol, err := policy.Load("p.yaml", []byte(fmt.Sprintf(`version: 1
default: deny
allow:
  - host: web.test
    ports: [%d]
deny:
  - host: evil.test
`, origin.Port())))
	if err != nil {
		t.Fatal(err)
	}
	current := func() *policy.Policy { return pol }
	res := mapResolver{"web.test": {netip.MustParseAddr("127.0.0.1")}, "evil.test": {netip.MustParseAddr("127.0.0.1")}}
	_, sink := newRecorder(t)
	nt := &names.Table{}
	nt.Remember(netip.MustParseAddr("127.0.0.1"), "web.test", netip.MustParseAddr("127.0.0.1"), time.Hour)
	srv := &Server{
		Policy:      current,
		Dialer:      &dialer.Dialer{Policy: current, Resolver: res, Timeout: 2 * time.Second},
		Names:       nt,
		PeekTimeout: latePeek,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return origin, nil },
		Events:      sink,
		Logger:      zerolog.New(io.Discard),
	}
	addr := serveOnLoopback(t, srv)
	return addr
}
