package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// The line about connections that ignored the proxy agrees with its count.
func TestRunSummaryRawLineAgrees(t *testing.T) {
	for _, c := range []struct {
		raw, total int
		want       string
	}{
		{1, 1, "1 of 1 connection went out directly (raw sockets or clients that ignore HTTP_PROXY), caught by the transparent path: behind a plain HTTP proxy only, it would need a route of its own"},
		{2, 3, "2 of 3 connections went out directly (raw sockets or clients that ignore HTTP_PROXY), caught by the transparent path: behind a plain HTTP proxy only, they would need a route of their own"},
	} {
		s := newRunSummary(nil)
		s.raw, s.total = c.raw, c.total
		var b strings.Builder
		s.write(&b)
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("raw %d of %d: summary\n%s\nlacks %q", c.raw, c.total, b.String(), c.want)
		}
	}
}

// The summary's "to allow:" says when pasting it would lift a guard, as
// the 403 and check do (issue 21), and says nothing more for an ordinary
// refusal.
func TestRunSummarySaysWhichGuardAHintLifts(t *testing.T) {
	pol, err := policy.Load("policy.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - host: example.com\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		ip        string
		port      uint16
		want, not string
	}{
		{"the metadata service's hint lifts its guard", "169.254.169.254", 80,
			"        to allow: - {cidr: 169.254.169.254/32, ports: [80]}  (or: egress run --allow 169.254.169.254:80)\n" +
				"        which lifts guard_metadata: opens the cloud's metadata service and its credentials\n", ""},
		{"a public address's hint lifts nothing (decided only, never dialled)", "93.184.215.14", 443,
			"        to allow: - {cidr: 93.184.215.14/32, ports: [443]}", "which lifts"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := pol.Decide(policy.Request{IP: netip.MustParseAddr(c.ip), Port: c.port, Client: netip.MustParseAddr("127.0.0.1")})
			if !d.Denied() {
				t.Fatalf("%s:%d allowed (%s)", c.ip, c.port, d.Reason)
			}
			s := newRunSummary(nil)
			s.observe(eventlog.Entry{Proto: eventlog.ProtoTCP, Client: netip.MustParseAddrPort("127.0.0.1:40000"), Decision: d})
			var b strings.Builder
			s.write(&b)
			if !strings.Contains(b.String(), c.want) {
				t.Errorf("summary\n%s\nlacks %q", b.String(), c.want)
			}
			if c.not != "" && strings.Contains(b.String(), c.not) {
				t.Errorf("summary\n%s\nsays %q", b.String(), c.not)
			}
		})
	}
}
