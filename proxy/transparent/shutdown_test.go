package transparent

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// TestServeAfterShutdownClosesTheListener: a Serve that starts after
// Shutdown returns ErrServerClosed at once and closes its listener, so
// that redirected clients are refused instead of hanging in its backlog.
func TestServeAfterShutdownClosesTheListener(t *testing.T) {
	s := &Server{Policy: policy.Builtin}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Shutdown did not return")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second); err == nil {
		c.Close()
		t.Fatal("the listener still accepts connections after Serve returned")
	}
}
