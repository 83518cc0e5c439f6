package transparent

import (
	"context"
	"net"
	"testing"

	"github.com/egress-proxy/egress/internal/testnet"
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
	testnet.ServeReturnsClosed(t, ln, ErrServerClosed, func() error { return s.Serve(ln) })
}
