package main

import (
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"strconv"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// serveFilter is egress serve's connect filter (listen.refuse_at_connect):
// the host's nftables table, the DNS answers leased into it, reloads.
type serveFilter struct {
	host     *firewall.Host
	filter   atomic.Pointer[policy.ConnectFilter]
	recorder *firewall.Recorder
	logger   zerolog.Logger
}

// newServeFilter installs the filter for the users of
// pol.Listen.RefuseAtConnect, exempting egress's listener ports on
// loopback; table is the DNS proxy's memory of its answers.
func newServeFilter(pol *policy.Policy, current func() *policy.Policy, table *names.Table, listens []string, logger zerolog.Logger) (*serveFilter, error) {
	var uids []uint32
	for _, u := range pol.Listen.RefuseAtConnect {
		uid, err := lookupUID(u)
		if err != nil {
			return nil, fmt.Errorf("listen.refuse_at_connect: %w", err)
		}
		uids = append(uids, uid)
	}
	var exempt []uint16
	for _, a := range listens {
		if _, p, err := net.SplitHostPort(a); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n != 0 {
				exempt = append(exempt, uint16(n))
			}
		}
	}
	f := pol.ConnectFilter()
	if err := firewall.Check(&f); err != nil {
		return nil, fmt.Errorf("listen.refuse_at_connect: %w", err)
	}
	// The SYNs are held (connect() ends as the destination answers)
	// only where a transparent listener takes the connections.
	h, err := firewall.InstallHost(firewall.HostConfig{UIDs: uids, Exempt: exempt, Filter: f, Hold: pol.Listen.Transparent != ""})
	if err != nil {
		return nil, fmt.Errorf("listen.refuse_at_connect: %w (egress needs CAP_NET_ADMIN for it)", err)
	}
	if h.HoldError != "" {
		logger.Info().Str("reason", h.HoldError).
			Msg("listen.refuse_at_connect: connect() cannot wait for the destination here (no NFQUEUE); allowed connections are accepted before egress dials")
	}
	sf := &serveFilter{host: h, logger: logger}
	sf.filter.Store(&f)
	sf.recorder = &firewall.Recorder{Names: table, Leases: h, Policy: current, Filter: sf.filter.Load, Logger: logger}
	return sf, nil
}

// logRefusals records each refused connection like the transparent
// listener's refusals, decided by decide (its DecideConnect).
func (sf *serveFilter) logRefusals(events *eventlog.Sink, decide func(client netip.Addr, dst netip.AddrPort) policy.Decision) {
	sf.host.ReadRefusals(func(p nflog.Packet) {
		if p.Proto == "tcp" {
			events.Record(firewall.Refusal(p, decide))
		}
	})
}

// reload installs the filter of a reloaded policy.
func (sf *serveFilter) reload(p *policy.Policy) {
	f := p.ConnectFilter()
	if err := sf.host.Update(f); err != nil {
		sf.logger.Error().Err(err).Msg("connect filter: the reloaded policy's rules could not be installed; the previous ones stay")
		return
	}
	sf.filter.Store(&f)
}

func (sf *serveFilter) Close() error { return sf.host.Close() }

// lookupUID is a user name's uid, or the uid given.
func lookupUID(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %s: uid %q", s, u.Uid)
	}
	return uint32(n), nil
}
