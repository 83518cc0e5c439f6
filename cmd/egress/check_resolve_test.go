package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// fakeResolver answers from a map; a name missing is "no such host". No
// lookup leaves the process.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestCheckResolveGoesOnAfterAFailedLookup (issue 21): a name that does not
// resolve is reported on its own line, and the targets after it are still
// checked; the exit is 2 once all are reported.
func TestCheckResolveGoesOnAfterAFailedLookup(t *testing.T) {
	p, err := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\n"))
	if err != nil {
		t.Fatal(err)
	}
	res := fakeResolver{"api.example.com": {netip.MustParseAddr("93.184.215.14")}, "db.example.com": {netip.MustParseAddr("10.1.2.3")}}
	for _, asJSON := range []bool{false, true} {
		var stdout, stderr bytes.Buffer
		c := checker{p: p, resolve: true, asJSON: asJSON, stdout: &stdout, stderr: &stderr, resolver: res}
		var outs []outcome
		for _, target := range []string{"nx.example.com:443", "api.example.com:443", "db.example.com:5432"} {
			req, err := parseCheckTarget(target)
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, c.decide(target, req)...)
		}
		if len(outs) != 3 || outs[0].err == nil || outs[1].err != nil || outs[2].err != nil {
			t.Fatalf("outcomes %+v; want nx unresolved, then the two others decided", outs)
		}
		if got := formatUnresolved(outs[0], ""); got != "unresolved nx.example.com:443  resolve nx.example.com: no such host" {
			t.Errorf("line %q", got)
		}
		if !outs[1].d.Allowed() || outs[2].d.Reason != policy.ReasonGuardPrivate {
			t.Errorf("decisions %v %v", outs[1].d.Reason, outs[2].d.Reason)
		}
	}
	// The command: every target reported, exit 2.
	code, out := runCommand(func(args []string, stdout, stderr io.Writer) int {
		return cmdCheckWith(args, stdout, stderr, res)
	}, "--resolve", "--config", writeConfig(t, "version: 1\ndefault: allow\n"), "nx.example.com:443", "api.example.com:443", "nx2.example.com", "db.example.com:5432")
	if code != exitUsage {
		t.Errorf("exit %d; want %d", code, exitUsage)
	}
	for _, want := range []string{
		"unresolved nx.example.com:443  resolve nx.example.com: no such host\n",
		"allow      api.example.com:443 (93.184.215.14)  default_allow\n",
		"unresolved nx2.example.com  resolve nx2.example.com: no such host\n",
		"deny       db.example.com:5432 (10.1.2.3)  guard_private",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
