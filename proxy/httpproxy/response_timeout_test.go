package httpproxy_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
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
