package httpproxy_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
)

// securityOrigin records every byte each connection sends it; greet, if set, is
// sent first.
func securityOrigin(t *testing.T, greet string) (int, chan []byte) {
	got := make(chan []byte, 10)
	s := testnet.ServeTCP(t, func(c net.Conn) {
		if greet != "" {
			io.WriteString(c, greet)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	})
	return s.Port, got
}

// a request line nginx accepts (several spaces) is not classified
// as HTTP: the tunnel's plaintext Host check never sees it.
func TestSecurityConnectRefusesARequestLineWithOddSpacing(t *testing.T) {
	for _, raw := range []string{
		"GET  /  HTTP/1.1\r\nHost: denied.test\r\n\r\n",
		"GET /a b HTTP/1.1\r\nHost: denied.test\r\n\r\n",
		"GET\t/\tHTTP/1.1\r\nHost: denied.test\r\n\r\n",
		" GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
	} {
		port, got := securityOrigin(t, "")
		f := newFixture(t, testPolicy)
		target := "origin.test:" + itoa(port)
		_, _, c, _ := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
		io.WriteString(c, raw)
		c.(interface{ CloseWrite() error }).CloseWrite()
		b := <-got
		if bytes.Contains(b, []byte("denied.test")) {
			t.Errorf("BYPASS: the origin received %q", b)
		}
		c.Close()
	}
}

// an origin that speaks first: the client's ClientHello that
// follows is not inspected on the CONNECT path (t.Inspect no longer set).
func TestSecurityConnectChecksAHelloAfterTheOriginSpokeFirst(t *testing.T) {
	port, got := securityOrigin(t, "220 hello\r\n")
	f := newFixture(t, testPolicy)
	target := "origin.test:" + itoa(port)
	_, _, c, br := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := br.ReadString('\n')
	if !strings.HasPrefix(line, "220") {
		t.Fatalf("greeting %q", line)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "denied.test", InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(time.Second))
	tc.Handshake()
	c.Close()
	b := <-got
	if bytes.Contains(b, []byte("denied.test")) {
		t.Errorf("BYPASS: the origin received a ClientHello for denied.test (%d bytes)", len(b))
	}
}

// An origin that speaks first, then a client whose first line comes in
// pieces and is no request line (SMTP's EHLO typed slowly): it flows,
// every byte, both ways, while the late check watches it.
func TestSecurityConnectLateWordInPiecesStillFlows(t *testing.T) {
	echo := testnet.ServeTCP(t, func(c net.Conn) {
		io.WriteString(c, "220 hello\r\n")
		io.Copy(c, c)
	})
	f := newFixture(t, testPolicy)
	target := "origin.test:" + itoa(echo.Port)
	_, _, c, br := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || line != "220 hello\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	for _, piece := range []string{"EH", "LO", " client.test", "\r\n", "QUIT\r\n"} {
		io.WriteString(c, piece)
		b := make([]byte, len(piece))
		if _, err := io.ReadFull(br, b); err != nil || string(b) != piece {
			t.Fatalf("echo of %q: %q, %v", piece, b, err)
		}
	}
}
