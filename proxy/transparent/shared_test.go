package transparent_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// limits.max_tunnels is one limit for the process: with one tunnel open
// through CONNECT and max_tunnels: 1, a transparent connection is reset,
// and the other way round.
func TestMaxTunnelsIsSharedAcrossPaths(t *testing.T) {
	echo := testnet.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) })
	pol, err := policy.Load("test.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\nlimits:\n  max_tunnels: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	current := func() *policy.Policy { return pol }
	logger := zerolog.New(zerolog.NewTestWriter(t))
	set := &tunnel.Set{}

	hp := &httpproxy.Proxy{Policy: current, Logger: logger, Tunnels: set}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hp.Serve(hl)
	ts := &transparent.Server{Policy: current, Logger: logger, Tunnels: set, PeekTimeout: 50 * time.Millisecond,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return echo.AddrPort(), nil }}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve(tl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hp.Shutdown(ctx)
		ts.Shutdown(ctx)
	})

	connect := func() (int, net.Conn) {
		c, err := net.Dial("tcp", hl.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "CONNECT "+echo.String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, c
	}
	// works says whether a transparent connection echoes.
	works := func() (bool, net.Conn) {
		c, err := net.Dial("tcp", tl.Addr().String())
		if err != nil {
			return false, nil
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x")
		_, err = c.Read(make([]byte, 1))
		return err == nil, c
	}
	waitFree := func() {
		testwait.Until(t, testwait.Timeout, "every tunnel's slot freed", func() bool { return set.Open() == 0 })
	}

	code, c := connect()
	if code != 200 {
		t.Fatalf("CONNECT: %d", code)
	}
	if ok, tc := works(); ok {
		tc.Close()
		t.Fatal("a transparent connection got through while a CONNECT tunnel held the only slot")
	}
	c.Close()
	waitFree()
	ok, tc := works()
	if !ok {
		t.Fatal("transparent connection refused with no tunnel open")
	}
	if code, c := connect(); code != 503 {
		c.Close()
		t.Fatalf("CONNECT while a transparent connection holds the only slot: %d, want 503", code)
	}
	tc.Close()
}
