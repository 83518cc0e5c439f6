//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// serve's dialer resolves through the DNS proxy's resolver, with its
// failover: with dns.upstreams [down, working] a CONNECT to a name only
// the working one knows succeeds, and with every upstream down the 502
// names each one and what it did.
func TestServeDialerFailsOverAcrossUpstreams(t *testing.T) {
	t.Parallel()
	down := closedUDPPort(t)
	up := dnsUpstream(t, map[string]string{"svc.test": "127.0.0.1"})
	origin := greeterOrigin(t)
	for _, c := range []struct {
		name      string
		upstreams string
		status    string
	}{
		{"a down first upstream is skipped", `["` + down + `", "` + up + `"]`, "HTTP/1.1 200"},
		{"every upstream down is a DNS server failure naming them", `["` + down + `"]`, "HTTP/1.1 502 egress could not resolve svc.test: DNS server failure"},
	} {
		t.Run(c.name, func(t *testing.T) {
			config := writeConfig(t, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - host: svc.test\n    ports: [%d]\ndns:\n  upstreams: %s\n  timeout: 1s\n", origin, c.upstreams))
			_, addr, _ := startEgress(t, nil, "serve", "--config", config, "--listen", "127.0.0.1:0")
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "CONNECT svc.test:%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", origin)
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, c.status) {
				t.Fatalf("status line %q, %v; want %q...", line, err, c.status)
			}
			if strings.HasPrefix(line, "HTTP/1.1 502") {
				body, _ := io.ReadAll(br)
				if want := "no upstream answered: " + down + " refused (port unreachable: nothing listens there)"; !strings.Contains(string(body), want) {
					t.Fatalf("502 body %q; want it to say %q", body, want)
				}
				return
			}
			if greet, _ := br.ReadString('\n'); greet != "db ready\n" {
				// The 200's header ends with an empty line first.
				if greet, _ = br.ReadString('\n'); greet != "db ready\n" {
					t.Fatalf("through the tunnel: %q", greet)
				}
			}
		})
	}
}

// closedUDPPort is a loopback UDP address nobody listens on.
func closedUDPPort(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().String()
	pc.Close()
	return a
}

// freeDNSAddr is a loopback address whose port is free for both UDP and
// TCP right now, as a DNS listener needs.
func freeDNSAddr(t *testing.T) string {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := pc.LocalAddr().String()
		l, err := net.Listen("tcp", a)
		pc.Close()
		if err == nil {
			l.Close()
			return a
		}
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return ""
}

// countingUpstream is a DNS upstream on loopback that answers NXDOMAIN to
// everything and counts the queries it gets.
func countingUpstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		n.Add(1)
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeNameError)
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String(), &n
}

// With dns.resolve_unlisted: false, a name no host rule allows is refused
// on every path of egress serve (plain HTTP, CONNECT, the DNS listener)
// without a query upstream, even on a port a cidr rule allows; by default
// it is resolved first (and then refused or not on its addresses).
func TestServeResolveUnlisted(t *testing.T) {
	t.Parallel()
	origin := greeterOrigin(t)
	for _, c := range []struct {
		name    string
		setting string
		queries bool
	}{
		{"resolve_unlisted false: refused with no upstream query", "  resolve_unlisted: false\n", false},
		{"by default: resolved upstream first", "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			up, queries := countingUpstream(t)
			dnsAddr := freeDNSAddr(t)
			config := writeConfig(t, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\n    ports: [%d]\nlisten:\n  dns: %s\n  admin: \"\"\ndns:\n  upstreams: [%q]\n%s", origin, dnsAddr, up, c.setting))
			_, addr, _ := startEgress(t, nil, "serve", "--config", config, "--listen", "127.0.0.1:0")

			target := fmt.Sprintf("unlisted.test:%d", origin)
			for _, req := range []string{
				"GET http://" + target + "/ HTTP/1.1\r\nHost: " + target + "\r\n\r\n",
				"CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n",
			} {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				io.WriteString(conn, req)
				line, _ := bufio.NewReader(conn).ReadString('\n')
				conn.Close()
				want := "HTTP/1.1 403 egress denied " + target + ": no rule matched"
				if c.queries {
					want = "HTTP/1.1 502 egress could not resolve unlisted.test: no such host"
				}
				if !strings.HasPrefix(line, want) {
					t.Errorf("%q: status line %q; want %q...", strings.Fields(req)[0], line, want)
				}
			}
			m := new(dns.Msg)
			m.SetQuestion("unlisted.test.", dns.TypeA)
			r, err := dns.Exchange(m, dnsAddr)
			if err != nil || r.Rcode != dns.RcodeNameError {
				t.Fatalf("DNS answer %v, %v; want NXDOMAIN", r, err)
			}
			if got := queries.Load(); (got > 0) != c.queries {
				t.Fatalf("the upstream got %d queries; want queries: %v", got, c.queries)
			}
		})
	}
}
