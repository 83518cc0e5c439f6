package dnsproxy_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dnsproxy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// A DNS proxy on sockets the caller made (egress run makes them inside a
// network namespace), refusing a name the policy does not allow.
func ExampleServer() {
	p, err := policy.Load("policy.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - host: api.example.com\ndns:\n  upstreams: [\"127.0.0.1:1\"]\n"))
	if err != nil {
		panic(err)
	}
	s := &dnsproxy.Server{
		Policy: func() *policy.Policy { return p },
		Events: &eventlog.Sink{Logger: zerolog.Nop()},
		Names:  &names.Table{},
	}
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(pc, l)
	defer s.Shutdown(context.Background())

	m := new(dns.Msg)
	m.SetQuestion("other.example.org.", dns.TypeA)
	m.SetEdns0(1232, false)
	c := dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, pc.LocalAddr().String())
	if err != nil {
		panic(err)
	}
	fmt.Println(dns.RcodeToString[r.Rcode])
	for _, o := range r.IsEdns0().Option {
		if e, ok := o.(*dns.EDNS0_EDE); ok {
			fmt.Println(e.InfoCode, strings.Split(e.ExtraText, "; ")[0])
		}
	}
	// Output:
	// NXDOMAIN
	// 15 egress: other.example.org denied: no rule matched (default: deny) (no_rule_matched)
}
