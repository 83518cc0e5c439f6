package httpproxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
)

// gateResolver holds every lookup of gate.test until open is closed (or
// the lookup's context ends), so a test can keep CONNECTs in their setup
// while Shutdown runs. Other names resolve as resolver does.
type gateResolver struct {
	entered chan struct{}
	open    chan struct{}
}

func newGate() *gateResolver {
	return &gateResolver{entered: make(chan struct{}, 1000), open: make(chan struct{})}
}

func (g *gateResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if host != "gate.test" {
		return resolver.LookupNetIP(ctx, network, host)
	}
	g.entered <- struct{}{}
	select {
	case <-g.open:
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func withResolver(r *gateResolver) option { return func(f *fixture) { f.dialer.Resolver = r } }

// closedWithin reports whether c reaches EOF or an error other than a
// timeout within d: the tunnel (or the refused CONNECT) is over.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// A CONNECT still being set up when the drain deadline passes must not
// leave a tunnel open after Shutdown returns.
func TestShutdownLeavesNoTunnelSetUpDuringTheDrain(t *testing.T) {
	gate := newGate()
	f := newFixture(t, testPolicy, withResolver(gate))
	_, port, _ := net.SplitHostPort(echoServer(t, false))
	c, _ := f.dial()
	io.WriteString(c, "CONNECT gate.test:"+port+" HTTP/1.1\r\nHost: gate.test\r\n\r\n")
	<-gate.entered

	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	go func() { done <- f.proxy.Shutdown(ctx) }()
	<-ctx.Done() // past the deadline: Shutdown is closing what is open
	close(gate.open)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if !closedWithin(c, 2*time.Second) {
		t.Fatal("a tunnel set up during the drain is still open after Shutdown returned")
	}
}

// Many CONNECTs finish their setup while the drain deadline closes
// tunnels: -race reports any unsynchronised access between closing a
// tunnel and starting its copy, and every client connection ends.
func TestShutdownAlongsideConnects(t *testing.T) {
	for round := 0; round < 5; round++ {
		gate := newGate()
		f := newFixture(t, testPolicy, withResolver(gate))
		_, port, _ := net.SplitHostPort(echoServer(t, false))
		const n = 40
		conns := make([]net.Conn, n)
		for i := range conns {
			c, _ := f.dial()
			io.WriteString(c, "CONNECT gate.test:"+port+" HTTP/1.1\r\nHost: gate.test\r\n\r\n")
			conns[i] = c
		}
		for range n {
			<-gate.entered
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- f.proxy.Shutdown(ctx) }()
		// Shutdown has begun once its listener refuses connections.
		testwait.Until(t, testwait.Timeout, "Shutdown to close the listener", func() bool {
			c, err := net.Dial("tcp", f.addr)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
		// Let the lookups go one by one and pass the drain deadline
		// halfway: tunnels are being set up while the drain closes them.
		for i := range n {
			if i == n/2 {
				cancel()
			}
			select {
			case gate.open <- struct{}{}:
			case <-time.After(20 * time.Millisecond): // the lookup gave up: its request ended
			}
			time.Sleep(100 * time.Microsecond) // spreads the setups over the deadline: the pacing is the test
		}
		<-done
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() {
				if !closedWithin(c, 3*time.Second) {
					t.Errorf("round %d: tunnel %d still open after Shutdown", round, i)
				}
			})
		}
		wg.Wait()
	}
}
