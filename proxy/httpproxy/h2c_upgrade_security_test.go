package httpproxy_test

//lint:file-ignore SA1019 the origin must speak h2c by Upgrade (RFC 7540 §3.2), which only the deprecated x/net h2c handler implements: net/http's Server speaks unencrypted HTTP/2 by prior knowledge only

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"golang.org/x/net/http2/hpack"
)

// TestSecurityAnH2CUpgradeThroughTheForwardProxyGoesUpAsHTTP1: a forward-
// proxy client asking `Upgrade: h2c` of an allowed h2c-capable origin
// gets its answer in HTTP/1.1, never a 101 after which HTTP/2 frames
// could name a host the policy refuses (denied.test) on the same origin.
// Two origins: Go's h2c.NewHandler, and a lenient one that switches on
// `Upgrade: h2c` alone (it needs no HTTP2-Settings, which the forward
// proxy drops as a header Connection names).
func TestSecurityAnH2CUpgradeThroughTheForwardProxyGoesUpAsHTTP1(t *testing.T) {
	for _, lenient := range []bool{false, true} {
		t.Run(fmt.Sprintf("lenient=%v", lenient), func(t *testing.T) { forwardH2C(t, lenient) })
	}
}

func forwardH2C(t *testing.T, lenient bool) {
	type seenReq struct{ host, proto, upgrade, settings string }
	seen := make(chan seenReq, 10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- seenReq{r.Host, r.Proto, r.Header.Get("Upgrade"), r.Header.Get("HTTP2-Settings")}
		io.WriteString(w, "hi "+r.Host)
	})
	var web *httptest.Server
	if lenient {
		web = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Upgrade") != "h2c" {
				h.ServeHTTP(w, r)
				return
			}
			c, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			(&http2.Server{}).ServeConn(c, &http2.ServeConnOpts{Handler: h})
		}))
	} else {
		web = httptest.NewServer(h2c.NewHandler(h, &http2.Server{}))
	}
	t.Cleanup(web.Close)
	addr := web.Listener.Addr().String()
	f := newFixture(t, testPolicy)
	c, br := f.dial()
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n", addr, addr)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Errorf("upgrade answer: %s, want the request answered in HTTP/1.1", resp.Status)
		io.WriteString(c, http2.ClientPreface)
		fr := http2.NewFramer(c, br)
		fr.WriteSettings()
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "denied.test"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		deadline := time.After(3 * time.Second)
		for {
			select {
			case s := <-seen:
				if s.host == "denied.test" {
					t.Errorf("BYPASS: the origin served denied.test through the forward proxy")
					return
				}
			case <-deadline:
				return
			}
		}
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "hi "+addr {
		t.Fatalf("h2c-capable origin over HTTP/1.1: %s %q %v, want 200 %q", resp.Status, body, err, "hi "+addr)
	}
	if s := <-seen; s.proto != "HTTP/1.1" || s.upgrade != "" || s.settings != "" {
		t.Errorf("origin saw %+v, want HTTP/1.1 with neither Upgrade nor HTTP2-Settings", s)
	}
}
