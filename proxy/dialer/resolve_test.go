package dialer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// countingResolver counts the lookups it answers from m.
type countingResolver struct {
	m mapResolver
	n atomic.Int32
}

func (c *countingResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	c.n.Add(1)
	return c.m.LookupNetIP(ctx, network, host)
}

// firstAccepted dials l itself and reports whether the first connection
// l accepts is that one: nothing connected to l before (the accept queue
// is in order).
func firstAccepted(t *testing.T, l net.Listener) bool {
	t.Helper()
	mark, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer mark.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.RemoteAddr().String() == mark.LocalAddr().String()
}

func TestResolveDecidesEveryAddressAndConnectsToNothing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ap := netip.MustParseAddrPort(l.Addr().String())
	res := &countingResolver{m: mapResolver{"mixed.test": {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}}}
	d := &dialer.Dialer{Policy: load(t, allowLoopback), Resolver: res}
	req := policy.Request{Host: "mixed.test", Port: ap.Port()}

	r, dec, err := d.Resolve(context.Background(), "tcp", req)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if len(r.Allowed) != 1 || r.Allowed[0].IP != ap.Addr() || dec.IP != ap.Addr() || !dec.Allowed() {
		t.Fatalf("Resolve allowed %v (decision on %v), want 127.0.0.1 only (127.0.0.2 is denied)", r.Allowed, dec.IP)
	}
	if !firstAccepted(t, l) {
		t.Fatal("Resolve connected to the origin")
	}

	c, dec, err := d.DialResolved(context.Background(), r)
	if err != nil {
		t.Fatalf("DialResolved: %v", err)
	}
	defer c.Close()
	if got := netip.MustParseAddrPort(c.RemoteAddr().String()); got != ap || dec.IP != ap.Addr() {
		t.Fatalf("DialResolved reached %v, decision on %v; want %v", got, dec.IP, ap)
	}
	if n := res.n.Load(); n != 1 {
		t.Fatalf("Resolve then DialResolved looked the name up %d times, want 1", n)
	}
}

func TestDialLooksANameUpOnce(t *testing.T) {
	ap, _ := listen(t)
	res := &countingResolver{m: mapResolver{"origin.test": {ap.Addr()}}}
	d := &dialer.Dialer{Policy: load(t, allowLoopback), Resolver: res}
	c, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "origin.test", Port: ap.Port()})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := res.n.Load(); n != 1 {
		t.Fatalf("Dial looked the name up %d times, want 1", n)
	}
}

func TestResolveRefusesAsDialDoes(t *testing.T) {
	res := mapResolver{"rebind.test": {netip.MustParseAddr("127.0.0.2")}}
	tests := []struct {
		name   string
		policy string
		req    policy.Request
		reason policy.Reason
	}{
		{"a denied name", "version: 1\ndefault: deny\n", policy.Request{Host: "origin.test", Port: 80}, policy.ReasonNoRuleMatched},
		{"a name resolving to a guarded address", "version: 1\ndefault: allow\n", policy.Request{Host: "rebind.test", Port: 80}, policy.ReasonGuardLoopback},
		{"egress itself", allowLoopback, policy.Request{Host: "127.0.0.1", Port: 80}, policy.ReasonLoop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &dialer.Dialer{Policy: load(t, tt.policy), Resolver: res, IsSelf: func(a netip.AddrPort) bool { return a.Port() == 80 }}
			r, dec, err := d.Resolve(context.Background(), "tcp", tt.req)
			var de *dialer.DeniedError
			if !errors.As(err, &de) || dec.Reason != tt.reason || len(r.Allowed) != 0 {
				t.Fatalf("Resolve = %v, %v, reason %q; want a *DeniedError for %q and no address", r.Allowed, err, dec.Reason, tt.reason)
			}
			_, ddec, derr := d.Dial(context.Background(), "tcp", tt.req)
			if !errors.As(derr, &de) || ddec.Reason != dec.Reason {
				t.Fatalf("Dial = %v, reason %q; Resolve said %q", derr, ddec.Reason, dec.Reason)
			}
		})
	}
}

func TestDialResolvedDialsNothingUndecided(t *testing.T) {
	d := &dialer.Dialer{Policy: load(t, allowLoopback)}
	if c, _, err := d.DialResolved(context.Background(), dialer.Resolved{Request: policy.Request{Host: "origin.test", Port: 80}}); err == nil {
		c.Close()
		t.Fatal("DialResolved with no decided address connected")
	}
}

func TestResolvedPreferPutsAnAddressFirst(t *testing.T) {
	a, b, c := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.3")
	r := dialer.Resolved{Allowed: []policy.Decision{{IP: a}, {IP: b}, {IP: c}}}
	got := r.Prefer(c).Allowed
	if len(got) != 3 || got[0].IP != c || got[1].IP != a || got[2].IP != b {
		t.Fatalf("Prefer(%v) = %v, want %v %v %v", c, got, c, a, b)
	}
	if r.Allowed[0].IP != a {
		t.Fatal("Prefer changed the Resolved it was called on")
	}
	if got := r.Prefer(netip.MustParseAddr("127.0.0.9")).Allowed; len(got) != 3 || got[0].IP != a {
		t.Fatalf("Prefer of an address not decided = %v, want the order unchanged", got)
	}
}
