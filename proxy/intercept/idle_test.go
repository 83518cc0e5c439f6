package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Between requests an intercepted connection waits on its socket, not in
// crypto/tls (exchange.serve); what crypto/tls already holds must be
// served first, or the connection would wait for bytes it has.
func TestRequestsCryptoTLSAlreadyHoldsAreServedBeforeWaiting(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	// One TLS record (no dynamic record sizing) of three requests, the
	// first two exactly filling the request reader's 4 KiB buffer
	// (peek.RequestReader): after the second, the reader holds nothing
	// and gives its buffer back, while crypto/tls holds the third.
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test", DynamicRecordSizingDisabled: true})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	request := func(size int) string {
		head := "GET /v1/license HTTP/1.1\r\nHost: " + host + "\r\nX-Pad: "
		return head + strings.Repeat("p", size-len(head)-4) + "\r\n\r\n"
	}
	flight := request(2048) + request(2048) + request(600)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(tc, flight); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	for i := range 3 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d of 3: %v", i+1, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("answer %d: %s", i+1, resp.Status)
		}
	}
}

// An idle intercepted connection keeps no goroutine of its caller's
// (Server.Start): its tunnel slot (limits.max_tunnels) is held until the
// connection ends, then given back.
func TestAnIdleInterceptedConnectionHoldsItsTunnelSlotUntilItEnds(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	io.WriteString(tc, "GET /v1/license HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if n := f.tunnels.Open(); n != 1 {
		t.Fatalf("tunnel slots taken with one idle intercepted connection: %d, want 1", n)
	}
	tc.Close()
	waitFor(t, "the slot given back", func() bool { return f.tunnels.Open() == 0 })
}
