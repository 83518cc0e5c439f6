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

	"github.com/egress-proxy/egress/internal/tlstest"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/names"
)

// secSplit re-frames one handshake record as two records, the split
// falling inside the server_name extension's neighbourhood.
func secSplit(rec []byte, at int) []byte {
	body := rec[5:]
	out := []byte{22, 3, 1, byte(at >> 8), byte(at)}
	out = append(out, body[:at]...)
	rest := len(body) - at
	out = append(out, 22, 3, 1, byte(rest>>8), byte(rest))
	return append(out, body[at:]...)
}

// secretListener listens on 127.0.0.4 and counts connections.
func secretListener(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.4: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	var hits atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			io.WriteString(c, "SECRET\n")
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String()), &hits
}

// TestSecurityTransparentSpoofing drives the transparent listener with
// OriginalDst fixed to a guarded address (127.0.0.4) that only the exact
// name db.test may lift, and tries to make a name vouch for it.
func TestSecurityTransparentSpoofing(t *testing.T) {
	dst, hits := secretListener(t)
	port := strconv.Itoa(int(dst.Port()))
	pol, err := policy.Load("sec.yaml", []byte(`version: 1
default: allow
allow:
  - host: db.test
    ports: [`+port+`]
deny:
  - host: evil.test
`))
	if err != nil {
		t.Fatal(err)
	}
	current := func() *policy.Policy { return pol }
	table := &names.Table{}
	res := mapResolver{"db.test": {netip.MustParseAddr("127.0.0.1")}, "public.test": {netip.MustParseAddr("127.0.0.4")}}
	srv := &Server{
		Policy:      current,
		Dialer:      &dialer.Dialer{Policy: current, Resolver: res, Timeout: 2 * time.Second},
		Names:       table,
		PeekTimeout: 100 * time.Millisecond,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return dst, nil },
		Logger:      zerolog.New(zerolog.NewTestWriter(t)),
	}
	addr := serveOnLoopback(t, srv)
	// Another client resolved db.test through egress's DNS and got the
	// guarded address: that vouches for it to that client only.
	table.Remember(netip.MustParseAddr("127.0.0.9"), "db.test", dst.Addr(), time.Minute)

	connect := func(t *testing.T, from string, first []byte) string {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if len(first) > 0 {
			c.Write(first)
		}
		b := make([]byte, 7)
		n, _ := io.ReadFull(c, b)
		return string(b[:n])
	}

	hello := tlstest.Hello(t, "db.test")
	for _, tt := range []struct {
		name  string
		from  string
		first []byte
	}{
		{"no name, and egress's DNS answered the address to another client", "127.0.0.5", nil},
		{"an SNI naming the exactly allowed name that does not resolve to the address", "127.0.0.5", hello},
		{"the same SNI split across two TLS records", "127.0.0.5", secSplit(hello, 60)},
		{"an HTTP Host naming the allowed name", "127.0.0.5", []byte("GET / HTTP/1.1\r\nHost: db.test:" + port + "\r\n\r\n")},
		{"an absolute-form HTTP target naming the allowed name", "127.0.0.5", []byte("GET http://db.test:" + port + "/ HTTP/1.1\r\nHost: public.test\r\n\r\n")},
		{"an HTTP Host with upper case and a trailing dot", "127.0.0.5", []byte("GET / HTTP/1.1\r\nHost: DB.TEST.:" + port + "\r\n\r\n")},
		{"an SNI that is the address itself", "127.0.0.5", tlstest.Hello(t, "127.0.0.4")},
		{"an HTTP Host that is the address in hex", "127.0.0.5", []byte("GET / HTTP/1.1\r\nHost: 0x7f.0.0.4\r\n\r\n")},
		{"an SNI of a name resolving to the address but not allowed to lift the guard", "127.0.0.5", tlstest.Hello(t, "public.test")},
		{"a denied SNI from the client that resolved db.test", "127.0.0.9", tlstest.Hello(t, "evil.test")},
		{"a denied SNI split across records from that client", "127.0.0.9", secSplit(tlstest.Hello(t, "evil.test"), 45)},
	} {
		t.Run(tt.name+" does not reach the guarded address", func(t *testing.T) {
			before := hits.Load()
			if got := connect(t, tt.from, tt.first); got == "SECRET\n" || hits.Load() != before {
				t.Fatalf("reached the guarded address (read %q)", got)
			}
		})
	}
	t.Run("the client egress's DNS answered does reach it (control)", func(t *testing.T) {
		if got := connect(t, "127.0.0.9", nil); got != "SECRET\n" {
			t.Fatalf("read %q; the positive control failed, so the denials above prove nothing", got)
		}
	})
}
