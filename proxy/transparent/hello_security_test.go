//go:build linux

package transparent

import (
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/tlstest"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/names"
)

// Issue 18 on the transparent path (serve's transparent listener and
// egress run): a connection to an allowed address whose ClientHello
// names a refused server, framed the ways a Go or OpenSSL server still
// reads, or sent only after the peek time (a late first byte), or
// carrying ECH, is refused before a byte of it goes up. A server that
// speaks first still greets a silent client at once.
func TestSecurityTransparentHelloFramings(t *testing.T) {
	var got atomic.Int64 // client bytes the upstream received
	upstream := testnet.ServeTCP(t, func(c net.Conn) {
		io.WriteString(c, "220 ready\r\n")
		n, _ := io.Copy(io.Discard, c)
		got.Add(n)
	})
	dst := netip.MustParseAddrPort(upstream.String())
	pol, err := policy.Load("p.yaml", []byte(`version: 1
default: deny
allow:
  - cidr: 127.0.0.1
    ports: [`+strconv.Itoa(upstream.Port)+`]
deny:
  - host: denied.test
`))
	if err != nil {
		t.Fatal(err)
	}
	current := func() *policy.Policy { return pol }
	rec, sink := newRecorder(t)
	srv := &Server{
		Policy:      current,
		Dialer:      &dialer.Dialer{Policy: current, Resolver: mapResolver{}, Timeout: 2 * time.Second},
		Names:       &names.Table{},
		PeekTimeout: 100 * time.Millisecond,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return dst, nil },
		Events:      sink,
		Logger:      zerolog.New(zerolog.NewTestWriter(t)),
	}
	addr := serveOnLoopback(t, srv)

	framings := tlstest.Smuggling(t, "denied.test", 2500*time.Millisecond)
	one := tlstest.Records(tlstest.Msg(t, "denied.test"), 0x0301, 1<<14)
	framings = append(framings, tlstest.Framing{Name: "a whole hello sent after the peek time", Late: one, Pause: 500 * time.Millisecond})
	for _, fr := range framings {
		t.Run(fr.Name+" is refused before it goes up", func(t *testing.T) {
			before := got.Load()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(fr.Wire)
			if fr.Late != nil {
				time.Sleep(fr.Pause) // the slow client under test, not a wait for a result
				c.Write(fr.Late)
			}
			io.Copy(io.Discard, c) // the greeting, if it was let through, then the reset
			e := rec.next(t)
			switch e.Decision.Reason {
			case policy.ReasonTLSUnreadable, policy.ReasonTLSECH, policy.ReasonDeniedByRule:
			default:
				t.Fatalf("decision %+v, want a refusal on the hello", e.Decision)
			}
			if !e.Decision.Denied() {
				t.Fatalf("decision %+v is no denial", e.Decision)
			}
			if n := got.Load() - before; n != 0 {
				t.Errorf("the upstream received %d bytes", n)
			}
		})
	}

	t.Run("a silent client is greeted by a server that speaks first, at once", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 11)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "220 ready\r\n" {
			t.Fatalf("greeting %q, %v", b, err)
		}
		c.Close()
		if e := rec.next(t); !e.Decision.Allowed() {
			t.Fatalf("decision %+v", e.Decision)
		}
	})
}
