package testnet

import (
	"errors"
	"net"
	"testing"
	"time"
)

// ServeReturnsClosed runs serve, a server's Serve started after its
// Shutdown, and checks that it returns want at once and leaves ln closed:
// a client is refused rather than left in the backlog of a socket nobody
// accepts on.
func ServeReturnsClosed(tb testing.TB, ln net.Listener, want error, serve func() error) {
	tb.Helper()
	done := make(chan error, 1)
	go func() { done <- serve() }()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			tb.Fatalf("Serve after Shutdown = %v, want %v", err, want)
		}
	case <-time.After(5 * time.Second):
		tb.Fatal("Serve after Shutdown did not return")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second); err == nil {
		c.Close()
		tb.Fatal("the listener still accepts connections after Serve returned")
	}
}
