package proxyproto_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/proxyproto"
)

// The policy serves clients from 203.0.113.0/24 only and lets them reach
// the test origin on 127.0.0.1.
const clientPolicy = `version: 1
default: deny
allow_from: [203.0.113.0/24]
allow:
  - cidr: 127.0.0.1/32
`

// startProxy serves egress's HTTP proxy on a loopback listener, wrapped
// in PROXY protocol when pp is set, and returns its address and the
// entries its sink recorded.
func startProxy(t *testing.T, pp bool) (string, func() []eventlog.Entry) {
	t.Helper()
	return startProxyWith(t, pp, clientPolicy)
}

// startProxyWith is startProxy enforcing the policy text yaml.
func startProxyWith(t *testing.T, pp bool, yaml string) (string, func() []eventlog.Entry) {
	t.Helper()
	pol, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("policy.Load: %v", err)
	}
	logger := zerolog.New(zerolog.NewTestWriter(t))
	var mu sync.Mutex
	var seen []eventlog.Entry
	p := &httpproxy.Proxy{
		Policy: func() *policy.Policy { return pol },
		Events: &eventlog.Sink{Logger: logger, Observe: func(e eventlog.Entry) {
			mu.Lock()
			seen = append(seen, e)
			mu.Unlock()
		}},
		Logger: logger,
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener = raw
	if pp {
		l = &proxyproto.Listener{Listener: raw, Logger: logger}
	}
	go p.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return raw.Addr().String(), func() []eventlog.Entry {
		mu.Lock()
		defer mu.Unlock()
		return append([]eventlog.Entry(nil), seen...)
	}
}

// send writes prefix and a proxy request for target in one write and
// returns the response status and body.
func send(t *testing.T, addr string, prefix []byte, target string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, strings.TrimSuffix(strings.TrimPrefix(target, "http://"), "/"))
	if _, err := c.Write(append(append([]byte{}, prefix...), req...)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no HTTP response: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func origin(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin ok")
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

func TestPROXYHeaderWithoutProxyProtocolIs400(t *testing.T) {
	addr, seen := startProxy(t, false)
	target := origin(t)
	src := netip.MustParseAddrPort("203.0.113.7:5000")
	dst := netip.MustParseAddrPort("127.0.0.1:3128")
	for _, tt := range []struct {
		name   string
		header []byte
	}{
		{"a v1 header is a bad request", proxyproto.AppendV1(nil, src, dst)},
		{"a v2 header is a bad request", proxyproto.AppendV2(nil, src, dst)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if code, body := send(t, addr, tt.header, target); code != http.StatusBadRequest {
				t.Errorf("status %d (%q), want 400", code, body)
			}
		})
	}
	if n := len(seen()); n != 0 {
		t.Errorf("%d requests reached a decision, want none", n)
	}
}

func TestProxyProtocolClientAddressSelectsThePolicy(t *testing.T) {
	addr, seen := startProxy(t, true)
	target := origin(t)
	dst := netip.MustParseAddrPort("127.0.0.1:3128")

	// The real peer, 127.0.0.1, is outside allow_from; the header's
	// address is what counts.
	inside := netip.MustParseAddrPort("203.0.113.7:5000")
	code, body := send(t, addr, proxyproto.AppendV2(nil, inside, dst), target)
	if code != http.StatusOK || body != "origin ok" {
		t.Fatalf("client inside allow_from: %d %q, want 200 from the origin", code, body)
	}
	outside := netip.MustParseAddrPort("198.51.100.9:5000")
	if code, body := send(t, addr, proxyproto.AppendV1(nil, outside, dst), target); code != http.StatusForbidden {
		t.Errorf("client outside allow_from: %d %q, want 403", code, body)
	}
	es := seen()
	if len(es) != 2 {
		t.Fatalf("%d entries recorded, want 2", len(es))
	}
	if es[0].Client != inside || !es[0].Decision.Allowed() {
		t.Errorf("first entry: client %v allowed %v, want %v allowed", es[0].Client, es[0].Decision.Allowed(), inside)
	}
	if es[1].Client != outside || es[1].Decision.Reason != policy.ReasonClientRefused {
		t.Errorf("second entry: client %v reason %s, want %v client_refused", es[1].Client, es[1].Decision.Reason, outside)
	}

	// Without a header, the connection is closed before any HTTP.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target)
	if b, err := io.ReadAll(c); len(b) != 0 {
		t.Errorf("a connection without a header got %q (%v), want it closed", b, err)
	}
}
