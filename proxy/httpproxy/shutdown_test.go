package httpproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// TestServeAfterShutdownClosesTheListener: a Serve that starts after
// Shutdown (a listener bound while egress was already stopping) returns
// at once and closes its listener, so that clients are refused instead of
// waiting in the backlog of a socket nobody accepts on.
func TestServeAfterShutdownClosesTheListener(t *testing.T) {
	p := &Proxy{Policy: policy.Builtin}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	select {
	case err := <-done:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Fatalf("Serve after Shutdown = %v, want http.ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Shutdown did not return")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second); err == nil {
		c.Close()
		t.Fatal("the listener still accepts connections after Serve returned")
	}
}
