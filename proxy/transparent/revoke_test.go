package transparent_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// A transparent connection is a tunnel like a CONNECT: a reload whose
// policy refuses its destination closes it (serve calls Revoke on the
// set every path shares), with one line saying revoked; one to a
// destination still allowed stays open.
func TestReloadRevokesTransparentConnections(t *testing.T) {
	echo := func() netip.AddrPort {
		return testnet.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) }).AddrPort()
	}
	kept, gone := echo(), echo()
	load := func(text string) *policy.Policy {
		p, err := policy.Load("test.yaml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	both := load("version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1/32\n")
	refused := load("version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1/32\ndeny:\n  - cidr: 127.0.0.1/32\n    ports: [" + strconv.Itoa(int(gone.Port())) + "]\n")
	var cur atomic.Pointer[policy.Policy]
	cur.Store(both)

	lines := make(chan eventlog.Entry, 10)
	set := &tunnel.Set{}
	var next atomic.Pointer[netip.AddrPort] // the original destination of the next connection
	s := &transparent.Server{
		Policy:      cur.Load,
		Tunnels:     set,
		PeekTimeout: 50 * time.Millisecond,
		Events:      &eventlog.Sink{Logger: zerolog.New(zerolog.NewTestWriter(t)), Observe: func(e eventlog.Entry) { lines <- e }},
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return *next.Load(), nil },
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Shutdown(t.Context()) })
	open := func(dst netip.AddrPort) net.Conn {
		next.Store(&dst)
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "x")
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatalf("connection to %v: %v", dst, err)
		}
		return c
	}
	keep, lose := open(kept), open(gone)

	cur.Store(refused)
	if n := set.Revoke(refused); n != 1 {
		t.Fatalf("Revoke closed %d, want 1", n)
	}
	lose.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := lose.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the refused connection is still open: %v", err)
	}
	select {
	case e := <-lines:
		if e.Proto != eventlog.ProtoTCP || e.Decision.Reason != policy.ReasonRevoked || e.Decision.RuleLocation() != "test.yaml:6" || e.Decision.Port != gone.Port() {
			t.Errorf("line: %s %s rule %q port %d", e.Proto, e.Decision.Reason, e.Decision.RuleLocation(), e.Decision.Port)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no line for the revoked connection")
	}
	io.WriteString(keep, "y")
	if _, err := keep.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the allowed connection: %v", err)
	}
}
