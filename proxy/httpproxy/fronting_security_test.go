package httpproxy_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/internal/tlstest"
)

// Domain fronting through CONNECT: a tunnel opened for an allowed name
// whose TLS ClientHello names a server the policy refuses is closed before
// the ClientHello reaches the upstream (sni_mismatch); another allowed
// name, and protocols that are not TLS, pass; a server that speaks first
// is not held up.
func TestSecurityConnectSNIMismatch(t *testing.T) {
	// A TLS-speaking upstream that counts the handshakes it sees.
	// ended counts the connections whose first read returned: a
	// connection egress closed without sending anything counts there,
	// after hellos would have.
	var hellos, ended atomic.Int64
	upstream := testnet.ServeTCP(t, func(c net.Conn) {
		b := make([]byte, 1)
		if n, _ := c.Read(b); n == 1 && b[0] == 22 {
			hellos.Add(1)
		}
		ended.Add(1)
	})
	// upstreamDone waits until the upstream has seen the end (or the
	// first byte) of the connection egress opened since ended was n.
	upstreamDone := func(t *testing.T, n int64) {
		t.Helper()
		testwait.Until(t, testwait.Timeout, "the upstream to see its connection end", func() bool { return ended.Load() > n })
	}
	port := upstream.Port
	target := "origin.test:" + itoa(port)

	handshake := func(c net.Conn, sni string) error {
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		return tc.Handshake()
	}
	sniLine := func(f *fixture) map[string]any {
		t.Helper()
		return f.logs.waitLine(t, "sni_mismatch", func(e map[string]any) bool { return e["reason"] == "sni_mismatch" })
	}

	t.Run("a ClientHello for a denied name is refused before it goes up", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		before, endedBefore := hellos.Load(), ended.Load()
		_, _, c, _ := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
		if err := handshake(c, "denied.test"); err == nil {
			t.Fatal("the handshake went through")
		}
		e := sniLine(f)
		if e["event"] != "deny" || e["host"] != "denied.test" || !strings.Contains(e["hint"].(string), "origin.test") {
			t.Errorf("line %v", e)
		}
		upstreamDone(t, endedBefore)
		if n := hellos.Load() - before; n != 0 {
			t.Errorf("the upstream saw %d ClientHello, want none", n)
		}
	})

	t.Run("so is one sent right behind the CONNECT", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		hello := string(tlstest.Hello(t, "denied.test")) // a real ClientHello for denied.test
		before, endedBefore := hellos.Load(), ended.Load()
		c, br := f.dial()
		io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"+hello)
		io.Copy(io.Discard, br) // 200, then closed
		sniLine(f)
		upstreamDone(t, endedBefore)
		if n := hellos.Load() - before; n != 0 {
			t.Errorf("the upstream saw %d ClientHello, want none", n)
		}
	})

	t.Run("a ClientHello sent after a long silence is still checked", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		_, _, c, _ := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
		time.Sleep(2500 * time.Millisecond) // the client's silence under test: longer than the inspection's timeout
		if err := handshake(c, "denied.test"); err == nil {
			t.Fatal("the handshake went through")
		}
		sniLine(f)
	})

	t.Run("another allowed name passes", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		before := hellos.Load()
		_, _, c, _ := f.raw("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")
		handshake(c, "other.test") // the upstream is no TLS server: it only counts
		testwait.Until(t, testwait.Timeout, "the ClientHello for an allowed name to reach the upstream", func() bool { return hellos.Load() != before })
	})

	// An address as the server name (RFC 6066 forbids it; openssl
	// s_client -servername IP sends it): a server that routes by name
	// must not be sent to an address the tunnel was not decided on.
	for _, tc := range []struct {
		connect, sni string
		ok           bool
	}{
		{"127.0.0.1", "127.0.0.2", false},
		{"127.0.0.1", "127.0.0.1", true},
		{"origin.test", "127.0.0.2", false},
		{"origin.test", "127.0.0.1", true},
	} {
		t.Run(fmt.Sprintf("CONNECT %s with a ClientHello naming %s (passes: %v)", tc.connect, tc.sni, tc.ok), func(t *testing.T) {
			f := newFixture(t, testPolicy)
			before, endedBefore := hellos.Load(), ended.Load()
			tgt := tc.connect + ":" + itoa(port)
			_, _, c, _ := f.raw("CONNECT " + tgt + " HTTP/1.1\r\nHost: " + tgt + "\r\n\r\n")
			c.Write(tlstest.HelloNaming(t, tc.sni))
			if tc.ok {
				testwait.Until(t, testwait.Timeout, "the ClientHello naming the tunnel's address to reach the upstream", func() bool { return hellos.Load() != before })
				return
			}
			e := sniLine(f)
			if e["event"] != "deny" || !strings.Contains(e["hint"].(string), tc.sni) {
				t.Errorf("line %v", e)
			}
			upstreamDone(t, endedBefore)
			if n := hellos.Load() - before; n != 0 {
				t.Errorf("the upstream saw %d ClientHello, want none", n)
			}
		})
	}

	t.Run("a server that speaks first is not held up", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		greeter := testnet.ServeTCP(t, func(c net.Conn) { io.WriteString(c, "220 ready\r\n"); io.Copy(io.Discard, c) })
		gt := "origin.test:" + itoa(greeter.Port)
		_, _, c, br := f.raw("CONNECT " + gt + " HTTP/1.1\r\nHost: " + gt + "\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(time.Second)) // well under the inspection's timeout
		line, err := br.ReadString('\n')
		if err != nil || line != "220 ready\r\n" {
			t.Fatalf("greeting %q, %v", line, err)
		}
	})
}
