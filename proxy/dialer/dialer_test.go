package dialer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// mapResolver answers from a map; a missing name is "no such host".
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func load(t *testing.T, yaml string) func() *policy.Policy {
	t.Helper()
	p, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("load policy: %v", err)
	}
	return func() *policy.Policy { return p }
}

func listen(t *testing.T) (netip.AddrPort, net.Listener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go acceptAndClose(l)
	return netip.MustParseAddrPort(l.Addr().String()), l
}

// acceptAndClose closes every connection l accepts, until l is closed.
func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

const allowLoopback = `
version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
`

func TestDial(t *testing.T) {
	ap, _ := listen(t)
	res := mapResolver{
		"origin.test":   {netip.MustParseAddr("127.0.0.1")},
		"rebind.test":   {netip.MustParseAddr("127.0.0.2")},
		"mixed.test":    {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")},
		"metadata.test": {netip.MustParseAddr("169.254.169.254")},
		"empty.test":    {},
	}
	tests := []struct {
		name   string
		policy string
		req    policy.Request
		reason policy.Reason
		ok     bool
	}{
		{"a name resolving to an allowed address is dialled", allowLoopback, policy.Request{Host: "origin.test"}, policy.ReasonAllowedByRule, true},
		{"an allowed IP literal is dialled without a lookup", allowLoopback, policy.Request{Host: "127.0.0.1"}, policy.ReasonAllowedByRule, true},
		{"a request with IP set is decided on that IP", allowLoopback, policy.Request{Host: "origin.test", IP: netip.MustParseAddr("127.0.0.1")}, policy.ReasonAllowedByRule, true},
		{"a name resolving to a guarded address is denied", "version: 1\ndefault: allow\n", policy.Request{Host: "rebind.test"}, policy.ReasonGuardLoopback, false},
		{"a name resolving to the metadata service is denied", "version: 1\ndefault: allow\n", policy.Request{Host: "metadata.test"}, policy.ReasonGuardMetadata, false},
		{"a mixed answer is dialled on its allowed address only", allowLoopback, policy.Request{Host: "mixed.test"}, policy.ReasonAllowedByRule, true},
		{"a loopback literal is guarded by default", "version: 1\ndefault: allow\n", policy.Request{Host: "127.0.0.1"}, policy.ReasonGuardLoopback, false},
		{"a denied name is not resolved", "version: 1\ndefault: deny\n", policy.Request{Host: "origin.test"}, policy.ReasonNoRuleMatched, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &dialer.Dialer{Policy: load(t, tt.policy), Resolver: res}
			tt.req.Port = ap.Port()
			c, dec, err := d.Dial(context.Background(), "tcp", tt.req)
			if tt.ok {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				c.Close()
				if got := netip.MustParseAddrPort(c.RemoteAddr().String()); got != ap {
					t.Errorf("dialled %v, want %v", got, ap)
				}
				if dec.IP != ap.Addr() {
					t.Errorf("decision IP %v, want %v", dec.IP, ap.Addr())
				}
			} else {
				var de *dialer.DeniedError
				if !errors.As(err, &de) {
					t.Fatalf("Dial error %v, want *DeniedError", err)
				}
			}
			if dec.Reason != tt.reason {
				t.Errorf("reason %q, want %q", dec.Reason, tt.reason)
			}
		})
	}
}

func TestDialLoopIsDenied(t *testing.T) {
	ap, _ := listen(t)
	d := &dialer.Dialer{
		Policy: load(t, allowLoopback),
		IsSelf: func(a netip.AddrPort) bool { return a == ap },
	}
	_, dec, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "127.0.0.1", Port: ap.Port()})
	var de *dialer.DeniedError
	if !errors.As(err, &de) || dec.Reason != policy.ReasonLoop {
		t.Fatalf("Dial = %v, reason %q; want a loop denial", err, dec.Reason)
	}
}

func TestDialErrors(t *testing.T) {
	t.Run("an unknown name is a ResolveError", func(t *testing.T) {
		d := &dialer.Dialer{Policy: policy.Builtin, Resolver: mapResolver{}}
		_, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "nx.test", Port: 80})
		var re *dialer.ResolveError
		if !errors.As(err, &re) {
			t.Fatalf("err = %v, want *ResolveError", err)
		}
	})
	t.Run("an empty answer is a ResolveError", func(t *testing.T) {
		d := &dialer.Dialer{Policy: policy.Builtin, Resolver: mapResolver{"empty.test": nil}}
		_, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "empty.test", Port: 80})
		var re *dialer.ResolveError
		if !errors.As(err, &re) {
			t.Fatalf("err = %v, want *ResolveError", err)
		}
	})
	t.Run("a refused connection is neither denied nor a timeout", func(t *testing.T) {
		ap, l := listen(t)
		l.Close()
		d := &dialer.Dialer{Policy: load(t, allowLoopback)}
		_, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "127.0.0.1", Port: ap.Port()})
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("err = %v, want connection refused", err)
		}
	})
	t.Run("a listener with a full backlog times out", func(t *testing.T) {
		ap := testnet.FullBacklog(t)
		d := &dialer.Dialer{Policy: load(t, allowLoopback), Timeout: 200 * time.Millisecond}
		start := time.Now()
		_, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "127.0.0.1", Port: ap.Port()})
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("err = %v, want os.ErrDeadlineExceeded", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("timed out after %v", el)
		}
	})
}
