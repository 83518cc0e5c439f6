package dnsproxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

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
	done := make(chan error, 1)
	go func() { done <- s.Serve(pc, ln) }()
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
		t.Fatal("the TCP listener still accepts connections after Serve returned")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("UDP socket after Serve returned: %v, want it closed", err)
	}
}
