package dialer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// TestSecurityLoopThroughUnspecified: connecting to 0.0.0.0 or [::]
// reaches the local host (Linux routes it to loopback), so a listener on
// 127.0.0.1 or ::1 is reached through the unspecified address too. With a
// policy that lifts the loopback and "this network" guards, the loop guard is all that stands
// between a client and egress talking to itself.
func TestSecurityLoopThroughUnspecified(t *testing.T) {
	pol, err := policy.Load("open.yaml", []byte(`version: 1
default: allow
allow:
  - cidr: 0.0.0.0/8
  - cidr: 127.0.0.0/8
  - cidr: "::/128"
  - cidr: "::1/128"
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, listen, host string }{
		{"0.0.0.0 reaches a listener on 127.0.0.1", "127.0.0.1:0", "0.0.0.0"},
		{"0 (inet_aton) reaches a listener on 127.0.0.1", "127.0.0.1:0", "0"},
		{"[::] reaches a listener on [::1]", "[::1]:0", "::"},
		{"[::ffff:0.0.0.0] reaches a listener on 127.0.0.1", "127.0.0.1:0", "[::ffff:0.0.0.0]"},
		{"127.0.0.1 reaches a listener on 0.0.0.0", "0.0.0.0:0", "127.0.0.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", tt.listen)
			if err != nil {
				t.Skipf("listen %s: %v", tt.listen, err)
			}
			defer l.Close()
			go acceptAndClose(l)
			self := &dialer.Self{}
			self.Add(l.Addr())
			d := &dialer.Dialer{Policy: func() *policy.Policy { return pol }, IsSelf: self.Contains}
			port := uint16(l.Addr().(*net.TCPAddr).Port)
			c, dec, err := d.Dial(context.Background(), "tcp", policy.Request{Host: tt.host, Port: port, Client: netip.MustParseAddr("127.0.0.1")})
			if err == nil {
				c.Close()
			}
			var de *dialer.DeniedError
			if !errors.As(err, &de) || dec.Reason != policy.ReasonLoop {
				t.Fatalf("dial %s port %d: err %v, reason %q; want a loop denial", tt.host, port, err, dec.Reason)
			}
		})
	}
}

// flipResolver answers 127.0.0.1 and 127.0.0.2 in turn: a rebinding
// name, public on one lookup and guarded on the next.
type flipResolver struct{ n atomic.Int64 }

func (f *flipResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	if f.n.Add(1)%2 == 1 {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return []netip.Addr{netip.MustParseAddr("127.0.0.2")}, nil
}

// TestSecurityRebindingNeverReachesTheGuardedAnswer: whatever the
// resolver answers from one lookup to the next, the dialer connects only
// to an address it decided on, never to the guarded one.
func TestSecurityRebindingNeverReachesTheGuardedAnswer(t *testing.T) {
	pol, err := policy.Load("rebind.yaml", []byte("version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1\n"))
	if err != nil {
		t.Fatal(err)
	}
	var hits [2]atomic.Int64
	accepted := [2]chan string{make(chan string, 64), make(chan string, 64)} // remote addresses
	var port uint16
	for i, a := range []string{"127.0.0.1:0", "127.0.0.2:0"} {
		if port != 0 {
			a = net.JoinHostPort(a[:len(a)-2], strconv.Itoa(int(port)))
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("listen %s: %v", a, err)
		}
		defer l.Close()
		port = uint16(l.Addr().(*net.TCPAddr).Port)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				hits[i].Add(1)
				accepted[i] <- c.RemoteAddr().String()
				c.Close()
			}
		}()
	}
	d := &dialer.Dialer{Policy: func() *policy.Policy { return pol }, Resolver: &flipResolver{}}
	allowed, denied := 0, 0
	for range 10 {
		c, dec, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "rebind.example", Port: port})
		var de *dialer.DeniedError
		switch {
		case err == nil:
			allowed++
			if got := c.RemoteAddr().String(); got != net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))) {
				t.Errorf("connected to %s", got)
			}
			c.Close()
		case errors.As(err, &de) && dec.Reason == policy.ReasonGuardLoopback:
			denied++
		default:
			t.Fatalf("dial: %v", err)
		}
	}
	// No fixed wait for the accept loop: connect to the guarded listener
	// once ourselves; its FIFO accept queue hands out every earlier
	// connection before ours.
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(int(port))), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reached := func() int {
		n, mine := 0, c.LocalAddr().String()
		for {
			select {
			case a := <-accepted[1]:
				if a == mine {
					return n
				}
				n++
			case <-time.After(5 * time.Second):
				t.Fatal("guarded listener did not accept the counting connection")
			}
		}
	}()
	if allowed != 5 || denied != 5 || reached != 0 {
		t.Fatalf("allowed %d, denied %d, guarded listener reached %d times", allowed, denied, reached)
	}
}

// TestSecurityLoopNameWithSeveralAddresses (issue 18): localhost is
// 127.0.0.1 and ::1; with egress listening on 127.0.0.1 only, a CONNECT to
// localhost:PORT is egress pointed at itself, refused as a loop, not
// dialled on ::1 (a 502, or whatever else holds that port there).
func TestSecurityLoopNameWithSeveralAddresses(t *testing.T) {
	pol, err := policy.Load("open.yaml", []byte("version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.0/8\n  - cidr: \"::1/128\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go acceptAndClose(l)
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	// Something else on ::1 at the same port, when the host has IPv6: the
	// dialer must not reach it either.
	var other atomic.Int64
	if l6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(int(port)))); err == nil {
		defer l6.Close()
		go func() {
			for {
				c, err := l6.Accept()
				if err != nil {
					return
				}
				other.Add(1)
				c.Close()
			}
		}()
	}
	self := &dialer.Self{}
	self.Add(l.Addr())
	for _, order := range [][]netip.Addr{
		{netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.1")},
		{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
	} {
		t.Run("answer "+order[0].String()+" first", func(t *testing.T) {
			d := &dialer.Dialer{Policy: func() *policy.Policy { return pol }, Resolver: mapResolver{"localhost": order}, IsSelf: self.Contains}
			c, dec, err := d.Dial(context.Background(), "tcp", policy.Request{Host: "localhost", Port: port, Client: netip.MustParseAddr("127.0.0.1")})
			if err == nil {
				c.Close()
			}
			var de *dialer.DeniedError
			if !errors.As(err, &de) || dec.Reason != policy.ReasonLoop {
				t.Fatalf("dial localhost port %d: err %v, reason %q; want a loop denial", port, err, dec.Reason)
			}
		})
	}
	if n := other.Load(); n != 0 {
		t.Errorf("the listener on ::1 was reached %d times", n)
	}
}
