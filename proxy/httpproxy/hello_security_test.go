package httpproxy_test

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/internal/tlstest"
)

// Issue 18 through CONNECT: a ClientHello naming a refused server in a
// tunnel opened for an allowed one, framed the ways a Go or OpenSSL
// server still reads (odd record versions, a warning alert or empty
// record first, padding past 16 KiB, 1-byte records, the rest after the
// inspection time) or carrying ECH, is refused before a byte of it goes
// up: in the tunnel after the 200, and pipelined behind the CONNECT.
func TestSecurityConnectHelloFramings(t *testing.T) {
	var got atomic.Int64 // bytes the upstream received
	upstream := testnet.ServeTCP(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		got.Add(n)
	})
	target := "origin.test:" + itoa(upstream.Port)
	connect := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n"
	// The pause is past the inspection time (2 s), so the old reader
	// passed such a hello on its partial head.
	for _, fr := range tlstest.Smuggling(t, "denied.test", 2500*time.Millisecond) {
		for _, pipelined := range []bool{false, true} {
			name := fr.Name + ", in the tunnel"
			if pipelined {
				name = fr.Name + ", pipelined behind the CONNECT"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				f := newFixture(t, testPolicy)
				c, br := f.dial()
				c.SetDeadline(time.Now().Add(15 * time.Second))
				if pipelined {
					io.WriteString(c, connect+string(fr.Wire))
				} else {
					do(t, c, br, connect)
					c.Write(fr.Wire)
				}
				if fr.Late != nil {
					time.Sleep(fr.Pause) // the slow client under test, not a wait for a result
					c.Write(fr.Late)
				}
				// The proxy closes the connection (after the 200).
				io.Copy(io.Discard, br)
				var line map[string]any
				testwait.Until(t, 5*time.Second, "a deny line", func() bool {
					for _, e := range f.logs.entries(t, "") {
						if e["event"] == "deny" {
							line = e
						}
					}
					return line != nil
				})
				switch line["reason"] {
				case "sni_mismatch", "tls_unreadable", "tls_ech":
				default:
					t.Errorf("reason %v, want sni_mismatch, tls_unreadable or tls_ech: %v", line["reason"], line)
				}
				if n := got.Load(); n != 0 {
					t.Errorf("the upstream received %d bytes", n)
				}
			})
		}
	}
}
