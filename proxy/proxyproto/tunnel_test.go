//go:build linux

package proxyproto_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/proxy/proxyproto"
)

// A CONNECT tunnel through a PROXY protocol listener is a tunnel like
// any other: the bytes sent with the header reach the origin, an idle
// tunnel waits on the poller (no goroutine of its own), and
// timeouts.tunnel_idle closes it. Behind a wrapper that hid the socket,
// TCP_INFO and the poller could not be used: the tunnel stayed open and
// held two goroutines.
func TestTunnelThroughProxyProtocol(t *testing.T) {
	echo := testnet.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) })
	addr, _ := startProxyWith(t, true, clientPolicy+"timeouts:\n  tunnel_idle: 1s\n")
	src := netip.MustParseAddrPort("203.0.113.7:5000")
	dst := netip.MustParseAddrPort("127.0.0.1:3128")

	open := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// Header, CONNECT and the first tunnel bytes in one write.
		b := proxyproto.AppendV2(nil, src, dst)
		// A line ("hello\n", not an HTTP request line): the tunnel is not
		// gated or guarded, and can be spliced and polled.
		b = append(b, "CONNECT "+echo.String()+" HTTP/1.1\r\nHost: x\r\n\r\nhello\n"...)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		got := make([]byte, 6)
		if _, err := io.ReadFull(br, got); err != nil || string(got) != "hello\n" {
			t.Fatalf("echo of the bytes sent with the header: %q %v", got, err)
		}
		return c, br
	}

	_, br := open()
	// Idle tunnels cost no goroutine: 20 more tunnels, each with its
	// echo server's goroutine, add about 20 goroutines, not 60.
	runtime.GC()
	before := runtime.NumGoroutine()
	for range 20 {
		open()
	}
	// Past the poller's burst grace, the copies hand their sockets back.
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if n := runtime.NumGoroutine() - before; n > 30 {
			return fmt.Errorf("20 idle tunnels added %d goroutines: not on the poller", n)
		}
		return nil
	})

	start := time.Now()
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle tunnel: read %v, want EOF (timeouts.tunnel_idle)", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("closed after %v", el)
	}
}
