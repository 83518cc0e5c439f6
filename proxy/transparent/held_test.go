package transparent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
)

func TestPrepare(t *testing.T) {
	accepting := testnet.ServeTCP(t, func(c net.Conn) {}).AddrPort()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	pol, err := policy.Load("p.yaml", []byte(fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {cidr: 127.0.0.1/32, ports: [%d, %d]}\n", accepting.Port(), refusing.Port())))
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	s := &Server{Policy: func() *policy.Policy { return pol }, Held: &Held{}}
	for _, tt := range []struct {
		name string
		dst  netip.AddrPort
		want Outcome
	}{
		{"an allowed destination that accepts is connected and held", accepting, Connected},
		{"an allowed destination that refuses is refused", refusing, Refused},
		{"a destination the address does not allow is left to the listener", netip.AddrPortFrom(accepting.Addr(), 1), Pass},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.Prepare(context.Background(), client, tt.dst); got != tt.want {
				t.Fatalf("Prepare = %d, want %d", got, tt.want)
			}
			up := s.takeHeld(client, tt.dst)
			if (up != nil) != (tt.want == Connected) {
				t.Fatalf("held upstream %v", up)
			}
			if up != nil {
				if up.RemoteAddr().String() != tt.dst.String() {
					t.Errorf("held upstream to %v, want %v", up.RemoteAddr(), tt.dst)
				}
				up.Close()
				if s.takeHeld(client, tt.dst) != nil {
					t.Error("an upstream taken twice")
				}
			}
		})
	}
	t.Run("without Held nothing is dialled", func(t *testing.T) {
		s := &Server{Policy: func() *policy.Policy { return pol }}
		if got := s.Prepare(context.Background(), client, accepting); got != Pass {
			t.Errorf("Prepare = %d, want Pass", got)
		}
	})
	t.Run("a dial that times out is silent", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if got := outcome(ctx.Err()); got != Pass {
			t.Errorf("a cancelled dial: %d, want Pass", got)
		}
		if got := outcome(context.DeadlineExceeded); got != Silent {
			t.Errorf("a dial past its deadline: %d, want Silent", got)
		}
	})
}
