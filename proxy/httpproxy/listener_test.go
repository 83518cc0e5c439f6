package httpproxy_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
)

// writeSlowly sends s a few bytes at a time, so the proxy reads a
// request's first bytes in several pieces.
func writeSlowly(t *testing.T, w io.Writer, s string, n int) {
	t.Helper()
	for len(s) > 0 {
		k := min(n, len(s))
		if _, err := io.WriteString(w, s[:k]); err != nil {
			t.Fatal(err)
		}
		s = s[k:]
		time.Sleep(5 * time.Millisecond) // the pieces are what is under test: no wait for a result

	}
}

// A connection's first CONNECT is answered before net/http's Server
// (listener.go); every other request goes to the Server with the bytes
// read to tell them apart.
func TestFirstRequestOfAConnection(t *testing.T) {
	f := newFixture(t, testPolicy)
	p := f.plainPort()
	echo := echoServer(t, false)

	t.Run("a CONNECT sent a byte at a time is a tunnel", func(t *testing.T) {
		c, br := f.dial()
		writeSlowly(t, c, "CONNECT "+echo+" HTTP/1.1\r\nHost: x\r\n\r\n", 1)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v, want 200", resp, err)
		}
		io.WriteString(c, "ping")
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
			t.Fatalf("through the tunnel: %q %v", b, err)
		}
	})
	t.Run("a GET sent a byte at a time reaches the origin", func(t *testing.T) {
		c, br := f.dial()
		writeSlowly(t, c, "GET http://origin.test:"+p+"/slow HTTP/1.1\r\nHost: origin.test\r\n\r\n", 3)
		resp, body := do(t, c, br, "")
		if resp.StatusCode != 200 || !strings.Contains(body, "path=/slow") {
			t.Fatalf("%d %q; want 200 from the origin", resp.StatusCode, body)
		}
		// The connection stays net/http's: a second request on it.
		resp, body = do(t, c, br, "GET http://origin.test:"+p+"/again HTTP/1.1\r\nHost: origin.test\r\n\r\n")
		if resp.StatusCode != 200 || !strings.Contains(body, "path=/again") {
			t.Fatalf("second request: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("a CONNECT after a GET on a kept-alive connection is a tunnel", func(t *testing.T) {
		c, br := f.dial()
		if resp, _ := do(t, c, br, "GET http://origin.test:"+p+"/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("GET: %d", resp.StatusCode)
		}
		if resp, _ := do(t, c, br, "CONNECT "+echo+" HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		io.WriteString(c, "pong")
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "pong" {
			t.Fatalf("through the tunnel: %q %v", b, err)
		}
	})
	t.Run("a method that starts like CONNECT is not one", func(t *testing.T) {
		resp, body, _, _ := f.raw("CONNECTX / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 400 || !strings.Contains(body, "forward proxy") {
			t.Fatalf("%d %q; want net/http's handler: the 400 info page", resp.StatusCode, body)
		}
	})
	t.Run("a version other than HTTP/1 is a 505", func(t *testing.T) {
		resp, _, _, _ := f.raw("CONNECT " + echo + " HTTP/2.0\r\n\r\n")
		if resp.StatusCode != 505 || !strings.Contains(resp.Status, "egress HTTP version not supported: HTTP/2.0") {
			t.Fatalf("status %q; want a 505 naming HTTP/2.0", resp.Status)
		}
	})
	for _, tc := range []struct{ name, req, want string }{
		{"a malformed header is a 400 that says so", "CONNECT " + echo + " HTTP/1.1\r\nno colon here\r\n\r\n", "egress bad request: malformed MIME header"},

		{"two Host headers are a 400", "CONNECT " + echo + " HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "egress bad request: too many Host headers"},
		{"a target without a port is a 400", "CONNECT origin.test HTTP/1.1\r\n\r\n", "egress bad request: CONNECT target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, _, _ := f.raw(tc.req)
			if resp.StatusCode != 400 || !strings.Contains(resp.Status, tc.want) {
				t.Fatalf("status %q; want 400 with %q", resp.Status, tc.want)
			}
		})
	}
}

// A CONNECT head that does not arrive whole within timeouts.header is
// closed without an answer, as net/http closes a slow request.
func TestConnectHeadTimeout(t *testing.T) {
	f := newFixture(t, testPolicy+"timeouts:\n  header: 300ms\n")
	for _, part := range []string{"CONNEC", "CONNECT origin.test:443 HTTP/1.1\r\nHost: x\r\n"} {
		start := time.Now()
		c, br := f.dial()
		io.WriteString(c, part)
		b, err := io.ReadAll(br)
		if err != nil {
			t.Fatalf("%q: %v after %v; want the connection closed", part, err, time.Since(start))
		}
		if len(b) > 0 {
			t.Errorf("%q: answered %q; want nothing", part, b)
		}
		if el := time.Since(start); el < 290*time.Millisecond {
			t.Errorf("%q: closed after %v, before the header timeout", part, el)
		}
	}
}

// Shutdown closes a connection that has not sent a request yet, as
// net/http's Shutdown closes its idle connections.
func TestShutdownClosesASilentConnection(t *testing.T) {
	f := newFixture(t, testPolicy)
	c, br := f.dial()
	// Accepted, waiting for its first bytes: counted with the next
	// Accept, which is counted from before it returns.
	testwait.Until(t, testwait.Timeout, "the connection accepted, waiting for its first bytes", func() bool { return f.proxy.Pending() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := f.proxy.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Shutdown took %v with only a silent connection open", el)
	}
	if !closedWithin(c, 2*time.Second) {
		t.Fatal("the silent connection is still open after Shutdown")
	}
	_ = br
}

// A CONNECT head over limits.max_header_bytes is a 431 whose status line
// names the limit.
func TestConnectHeadOverTheLimit(t *testing.T) {
	f := newFixture(t, testPolicy+"limits:\n  max_header_bytes: 8192\n")
	resp, body, _, _ := f.raw("CONNECT origin.test:443 HTTP/1.1\r\nX-Big: " + strings.Repeat("a", 9000) + "\r\n\r\n")
	if resp.StatusCode != 431 || !strings.Contains(resp.Status, "limits.max_header_bytes") || !strings.Contains(body, "8192 bytes") {
		t.Fatalf("%q %q; want a 431 naming limits.max_header_bytes", resp.Status, body)
	}
}
