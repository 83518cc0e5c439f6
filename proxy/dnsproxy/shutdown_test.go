package dnsproxy

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
)

// TestServeAfterShutdownClosesTheSockets: a Serve that starts after
// Shutdown returns ErrServerClosed at once and closes both sockets, so
// that TCP clients are refused instead of hanging in the backlog.
func TestServeAfterShutdownClosesTheSockets(t *testing.T) {
	s := &Server{Policy: policy.Builtin}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	testnet.ServeReturnsClosed(t, ln, ErrServerClosed, func() error { return s.Serve(pc, ln) })
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("UDP socket after Serve returned: %v, want it closed", err)
	}
}
