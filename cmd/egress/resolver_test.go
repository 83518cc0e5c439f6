//go:build linux

package main

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// serve's dialer resolves through the dns.upstreams in force at each
// lookup: a reload that changes them is followed without a restart, as
// the DNS listener follows it.
func TestServeResolverFollowsReloadedUpstreams(t *testing.T) {
	first := dnsUpstream(t, map[string]string{"svc.test": "192.0.2.1"})
	second := dnsUpstream(t, map[string]string{"svc.test": "192.0.2.2"})
	load := func(up string) *policy.Policy {
		p, err := policy.Load("t.yaml", []byte("version: 1\ndefault: allow\ndns:\n  upstreams: [\""+up+"\"]\n"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var cur atomic.Pointer[policy.Policy]
	cur.Store(load(first))
	r := currentUpstreams(cur.Load)
	for _, c := range []struct {
		upstream, want string
	}{{first, "192.0.2.1"}, {second, "192.0.2.2"}} {
		cur.Store(load(c.upstream))
		got, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr(c.want) {
			t.Errorf("through %s: %v, %v; want %s", c.upstream, got, err, c.want)
		}
	}
}
