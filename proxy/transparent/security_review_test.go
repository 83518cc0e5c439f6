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

// securityOrigin records every byte each connection sends it; greet,
// if set, is sent first.
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

// A request line nginx reads (several spaces, a space in the target) is
// HTTP, read by net/http's reader and refused: the origin never sees the
// Host egress did not decide on.
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

// After the origin's greeting, a request line sent in two pieces ("G",
// then the rest) is refused before its end goes up. The pause between
// the pieces is the slow client under test.
func TestSecurityTransparentRefusesARequestLineSplitAfterTheOriginSpoke(t *testing.T) {
	o, got := securityOrigin(t, "220 hi\r\n")
	f := newLateFixture(t, o, nil)
	c := f.dialLate(t)
	b := make([]byte, 100)
	c.Read(b)
	io.WriteString(c, "G")
	time.Sleep(300 * time.Millisecond) // the split line under test: its rest comes later
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

// An origin that speaks first, then a client whose first line comes in
// pieces and is no request line: it flows, every byte, both ways.
func TestSecurityTransparentLateWordInPiecesStillFlows(t *testing.T) {
	echo := testnet.ServeTCP(t, func(c net.Conn) {
		io.WriteString(c, "220 hi\r\n")
		io.Copy(c, c)
	})
	f := newLateFixture(t, netip.MustParseAddrPort(echo.String()), nil)
	c := f.dialLate(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	greet := make([]byte, len("220 hi\r\n"))
	if _, err := io.ReadFull(c, greet); err != nil || string(greet) != "220 hi\r\n" {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	for _, piece := range []string{"pi", "ng", " x", "\n", "GET / HTTP/1.1\r\n"} {
		io.WriteString(c, piece)
		b := make([]byte, len(piece))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != piece {
			t.Fatalf("echo of %q: %q, %v", piece, b, err)
		}
	}
}
