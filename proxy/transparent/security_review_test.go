//go:build linux

package transparent

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
)

func securityOrigin(t *testing.T, greet string) (netip.AddrPort, chan []byte) {
	got := make(chan []byte, 10)
	s := testnet.ServeTCP(t, func(c net.Conn) {
		if greet != "" {
			io.WriteString(c, greet)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	})
	return netip.MustParseAddrPort(s.String()), got
}

func TestSecurityTransparentRefusesARequestLineWithOddSpacing(t *testing.T) {
	for _, raw := range []string{
		"GET  /  HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"GET /a b HTTP/1.1\r\nHost: evil.test\r\n\r\n",
	} {
		o, got := securityOrigin(t, "")
		f := newLateFixture(t, o, nil)
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		c.(*net.TCPConn).CloseWrite()
		select {
		case b := <-got:
			if bytes.Contains(b, []byte("evil.test")) {
				t.Errorf("BYPASS: origin got %q", b)
			}
		case <-time.After(5 * time.Second):
		}
		c.Close()
	}
}

func TestSecurityTransparentRefusesARequestLineSplitAfterTheOriginSpoke(t *testing.T) {
	o, got := securityOrigin(t, "220 hi\r\n")
	f := newLateFixture(t, o, nil)
	c := f.dialLate(t)
	b := make([]byte, 100)
	c.Read(b)
	io.WriteString(c, "G")
	time.Sleep(300 * time.Millisecond)
	io.WriteString(c, "ET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if bytes.Contains(b, []byte("evil.test")) {
			t.Errorf("BYPASS: origin got %q", b)
		}
	case <-time.After(5 * time.Second):
	}
}
