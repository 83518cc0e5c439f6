package firewall

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// Leases writes address leases: a sandbox's filter or a Host.
type Leases interface {
	Lease(addr netip.Addr, ports []policy.PortRange, all bool, d time.Duration) error
}

var _ names.Recorder = (*Recorder)(nil)

// Recorder is the DNS proxy's names.Recorder in front of a connect filter:
// it remembers each answer in Names for the transparent listener and,
// before the answer goes out, leases its address in the filter on the
// ports the name could be allowed on (policy.NamePorts), for as long as
// Names remembers it. All fields are required.
type Recorder struct {
	Names  *names.Table
	Leases Leases
	Policy func() *policy.Policy
	// Filter is the filter in force (it follows reloads).
	Filter func() *policy.ConnectFilter
	// Logger receives lease failures: the address stays refused.
	Logger zerolog.Logger
}

// Remember implements names.Recorder.
func (r *Recorder) Remember(client netip.Addr, name string, addr netip.Addr, ttl time.Duration) {
	r.Names.Remember(client, name, addr, ttl)
	if !r.Filter().Refuses(addr) {
		return // the filter passes it anyway
	}
	ports, all, ok := r.Policy().NamePorts(client, name)
	if !ok {
		return
	}
	if err := r.Leases.Lease(addr, ports, all, r.Names.Lease(ttl)); err != nil {
		r.Logger.Warn().Err(err).Str(eventlog.FieldHost, name).Str(eventlog.FieldIP, addr.String()).
			Msg("connect filter: could not lease the address; new connections to it are refused")
	}
}

// Refusal is the log entry of a connection the filter refused, seen as
// the packet it logged: decided by decide (the transparent listener's
// DecideConnect), so that its line and summary row say why, like any
// other refusal of the transparent path.
func Refusal(p nflog.Packet, decide func(client netip.Addr, dst netip.AddrPort) policy.Decision) eventlog.Entry {
	e := eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoTCP, Client: p.Src, Decision: decide(p.Src.Addr(), p.Dst)}
	if e.Decision.Allowed() {
		e.Decision.Verdict, e.Decision.Audit, e.Decision.Reason = policy.Deny, false, policy.ReasonConnectFilter
		e.Decision.Hint = "the connect filter refused what the transparent listener allows; please report this"
	}
	return e
}

// Check reports whether f fits in a filter: a rule for each port range of
// each of its destinations, at most MaxRules (a policy of thousands of
// cidr rules does not; egress run then refuses after accept, egress serve
// does not start with listen.refuse_at_connect).
func Check(f *policy.ConnectFilter) error {
	n := 16 // exempt ports, DNS, the lease sets, the final refusal
	for _, ds := range [][]policy.Dest{f.Allow, f.Refuse} {
		for _, d := range ds {
			n += max(1, len(d.Ports))
		}
	}
	if n > MaxRules {
		return fmt.Errorf("connect filter: the policy needs about %d rules, more than %d (too many cidr rules)", n, MaxRules)
	}
	return nil
}
