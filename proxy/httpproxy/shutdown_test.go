package httpproxy

import (
	"context"
	"net"
	"net/http"
	"testing"

	"github.com/egress-proxy/egress/internal/testnet"
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
	testnet.ServeReturnsClosed(t, ln, http.ErrServerClosed, func() error { return p.Serve(ln) })
}
