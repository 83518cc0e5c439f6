package intercept_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// silentStream opens an intercepted connection, asks for the origin's
// silent stream, reads its first event, and closes the connection: the
// client has gone while the origin says nothing more.
func silentStream(t *testing.T, f *fixture) {
	t.Helper()
	tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	fmt.Fprintf(tc, "GET /v1/status/silent HTTP/1.1\r\nHost: api.vendor.test:%d\r\n\r\n", f.tlsPort)
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	line, err := resp.Body.Read(make([]byte, 64))
	if err != nil || line == 0 {
		t.Fatalf("first event: %d %v", line, err)
	}
	tc.Close() // the client leaves
}

// A client that leaves while the origin streams a response and then falls
// silent gets its tunnel slot back (limits.max_tunnels), and the origin
// its connection closed, after timeouts.tunnel_idle of silence: the
// origin's read is bounded, the client's absence never noticed otherwise.
func TestSilentStreamAfterTheClientLeftEndsAfterTunnelIdle(t *testing.T) {
	f := newFixture(t)
	f.load(t, fmt.Sprintf(policyText, f.tlsPort, f.plainPort, f.badPort)+"timeouts:\n  tunnel_idle: 1s\n")
	silentStream(t, f)
	waitFor(t, "the slot given back", func() bool { return f.tunnels.Open() == 0 })
	waitFor(t, "the origin's connection closed", func() bool { return f.silentEnded.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := f.px.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !strings.Contains(f.logs.String(), "timeouts.tunnel_idle") {
		t.Errorf("the request's line does not say why it ended:\n%s", f.logs.String())
	}
}

// With no idle bound (timeouts.tunnel_idle: 0s), the drain's deadline
// closes the origin connection of a silent stream as well as the
// client's: the slot, the goroutine and both sockets are given back then,
// not when the origin next speaks.
func TestDrainDeadlineClosesASilentStreamsOrigin(t *testing.T) {
	f := newFixture(t)
	silentStream(t, f)
	if n := f.tunnels.Open(); n != 1 {
		t.Fatalf("slots taken by the stream: %d, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := f.px.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the deadline (the stream was open)", err)
	}
	waitFor(t, "the slot given back", func() bool { return f.tunnels.Open() == 0 })
	waitFor(t, "the origin's connection closed", func() bool { return f.silentEnded.Load() == 1 })
}

// Idle intercepted keep-alive connections, waiting for their next request,
// are closed when the drain begins, as net/http's Shutdown closes its
// idle connections: Shutdown does not wait for its deadline.
func TestDrainClosesIdleInterceptedConnections(t *testing.T) {
	f := newFixture(t)
	host := fmt.Sprintf("api.vendor.test:%d", f.tlsPort)
	var conns []*tls.Conn
	for i := 0; i < 3; i++ {
		tc, err := f.tunnel(t, "api.vendor.test", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if i > 0 { // the first has only made its handshake
			io.WriteString(tc, "GET /v1/license HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("GET: %v %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
		}
		conns = append(conns, tc)
	}
	if n := f.tunnels.Open(); n != 3 {
		t.Fatalf("slots taken: %d, want 3", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := f.px.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v after %v", err, time.Since(t0))
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("Shutdown took %v with only idle connections open", d)
	}
	if n := f.tunnels.Open(); n != 0 {
		t.Errorf("slots taken after Shutdown: %d", n)
	}
	for i, tc := range conns {
		tc.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := tc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("connection %d: read %v, want the connection closed (EOF)", i, err)
		}
	}
}
