package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/names"
)

// leaseLog records the leases asked for.
type leaseLog struct {
	got []string
	err error
}

func (l *leaseLog) Lease(addr netip.Addr, ports []policy.PortRange, all bool, d time.Duration) error {
	l.got = append(l.got, fmt.Sprint(addr, " ", ports, " ", all, " ", d))
	return l.err
}

func TestRecorder(t *testing.T) {
	pol, err := policy.Load("p.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - {host: db.example, ports: [5432]}\n  - {cidr: 10.1.0.0/16, ports: [443]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	f := pol.ConnectFilter()
	client := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		name, host, addr string
		want             string // the lease, "" for none
	}{
		{"an allowed name's address is leased on the rule's ports for as long as the table remembers it", "db.example", "192.0.2.7", "192.0.2.7 [{5432 5432}] false 1m0s"},
		{"a name no allow rule matches gets no lease", "other.example", "192.0.2.8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leases := &leaseLog{}
			table := &names.Table{MinTTL: time.Minute}
			r := &Recorder{Names: table, Leases: leases, Policy: func() *policy.Policy { return pol }, Filter: func() *policy.ConnectFilter { return &f }}
			r.Remember(client, tt.host, netip.MustParseAddr(tt.addr), time.Second)
			got := ""
			if len(leases.got) > 0 {
				got = leases.got[0]
			}
			if got != tt.want || len(leases.got) > 1 {
				t.Errorf("leases %q, want %q", leases.got, tt.want)
			}
			if names := table.Names(client, netip.MustParseAddr(tt.addr)); len(names) != 1 || names[0] != tt.host {
				t.Errorf("the table remembers %q", names)
			}
		})
	}
	t.Run("a filter that passes the address anyway leases nothing", func(t *testing.T) {
		leases := &leaseLog{}
		pass := policy.ConnectFilter{Refuse: []policy.Dest{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}
		r := &Recorder{Names: &names.Table{}, Leases: leases, Policy: func() *policy.Policy { return pol }, Filter: func() *policy.ConnectFilter { return &pass }}
		r.Remember(client, "db.example", netip.MustParseAddr("192.0.2.7"), time.Second)
		if len(leases.got) != 0 {
			t.Errorf("leases %q", leases.got)
		}
	})
	t.Run("a failed lease leaves the answer remembered for the listener", func(t *testing.T) {
		leases := &leaseLog{err: errors.New("sets full")}
		table := &names.Table{}
		r := &Recorder{Names: table, Leases: leases, Policy: func() *policy.Policy { return pol }, Filter: func() *policy.ConnectFilter { return &f }}
		r.Remember(client, "db.example", netip.MustParseAddr("192.0.2.7"), time.Second)
		if len(leases.got) != 1 || table.Len() != 1 {
			t.Errorf("leases %q, table %d", leases.got, table.Len())
		}
	})
}

func TestRefusal(t *testing.T) {
	p := nflog.Packet{Proto: "tcp", Src: netip.MustParseAddrPort("127.0.0.1:40000"), Dst: netip.MustParseAddrPort("192.0.2.1:443")}
	deny := func(netip.Addr, netip.AddrPort) policy.Decision {
		return policy.Decision{Verdict: policy.Deny, Reason: policy.ReasonNoRuleMatched, Hint: "- {cidr: 192.0.2.1/32, ports: [443]}"}
	}
	allow := func(netip.Addr, netip.AddrPort) policy.Decision {
		return policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonAllowedByRule}
	}
	if e := Refusal(p, deny); e.Decision.Reason != policy.ReasonNoRuleMatched || e.Client != p.Src || e.Proto != "tcp" || e.ID == "" {
		t.Errorf("a refusal the listener agrees with: %+v", e)
	}
	if e := Refusal(p, allow); e.Decision.Allowed() || e.Decision.Reason != policy.ReasonConnectFilter {
		t.Errorf("a refusal the listener disagrees with is logged as %+v, want a denial saying connect_filter", e.Decision)
	}
}
