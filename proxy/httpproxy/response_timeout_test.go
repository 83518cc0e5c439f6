package httpproxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
)

// An upstream that accepts, reads the request and never answers costs the
// client timeouts.response, then a 504: never a hang.
func TestSilentUpstreamIsA504(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }() // hold it open, say nothing
		}
	}()

	f := newFixture(t, testPolicy+"timeouts:\n  response: 300ms\n")
	_, port, _ := net.SplitHostPort(silent.Addr().String())
	start := time.Now()
	resp, body, _, _ := f.raw("GET http://origin.test:" + port + "/ HTTP/1.1\r\nHost: origin.test:" + port + "\r\n\r\n")
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504; body:\n%s", resp.StatusCode, body)
	}
	if !strings.Contains(body, "did not answer in time") {
		t.Errorf("body does not say what happened:\n%s", body)
	}
	if took > 5*time.Second {
		t.Errorf("took %v for a 300ms response timeout", took)
	}
}

// silentBody is an origin on 127.0.0.1 that answers a request with head
// (a status line, headers and the first piece of a body), then says
// nothing more until egress closes the connection; ended counts the
// connections closed so. It returns the port.
func silentBody(t *testing.T, head string) (string, *atomic.Int32) {
	t.Helper()
	var ended atomic.Int32
	a := testnet.ServeTCP(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, head)
		io.Copy(io.Discard, br) // silent until egress closes it
		ended.Add(1)
	})
	return fmt.Sprint(a.Port), &ended
}

// A plain-HTTP response body the origin stops sending is cut after
// timeouts.tunnel_idle of silence, as an intercepted one's is: the
// client's connection ends (a truncated response, never a complete one),
// the origin's is closed, and the request's line says why. Before, both
// were held, with the client's slot, until the origin spoke again.
func TestSilentResponseBodyEndsAfterTunnelIdle(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		streamed   bool // the head and first piece reach the client at once
	}{
		{"a chunked body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n", true},
		{"a body of known length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, ended := silentBody(t, tc.head)
			f := newFixture(t, testPolicy+"timeouts:\n  tunnel_idle: 300ms\n")
			c, br := f.dial()
			url := "http://origin.test:" + port + "/silent"
			io.WriteString(c, "GET "+url+" HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n")
			if tc.streamed {
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("GET: %v %v", resp, err)
				}
				b := make([]byte, 4)
				if _, err := io.ReadFull(resp.Body, b); err != nil || string(b) != "part" {
					t.Fatalf("the first piece of the body: %q, %v", b, err)
				}
			}
			start := time.Now()
			if !closedWithin(c, 5*time.Second) {
				t.Fatalf("the client's connection is still open 5s into a body silent for longer than tunnel_idle (300ms)")
			}
			t.Logf("the client's connection ended %v after the silence began", time.Since(start))
			line := f.logs.waitLine(t, "the request's", func(m map[string]any) bool { return m["url"] == url })
			if !strings.Contains(fmt.Sprint(line["error"]), "timeouts.tunnel_idle") {
				t.Errorf("the request's line does not say why it ended: %v", line)
			}
			testwait.Until(t, testwait.Timeout, "the origin's connection closed", func() bool { return ended.Load() == 1 })
		})
	}
}

// With timeouts.tunnel_idle 0s (the default) a silent body is not cut:
// the connection is still open a while into the silence.
func TestSilentResponseBodyWithoutTunnelIdle(t *testing.T) {
	port, ended := silentBody(t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n")
	f := newFixture(t, testPolicy)
	c, br := f.dial()
	io.WriteString(c, "GET http://origin.test:"+port+"/silent HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	if closedWithin(c, time.Second) {
		t.Fatal("the connection of a silent body ended with no tunnel_idle set")
	}
	if n := ended.Load(); n != 0 {
		t.Fatalf("the origin's connection was closed (%d)", n)
	}
}
