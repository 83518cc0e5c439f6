package resolve_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/resolve"
)

// server is a miekg/dns upstream on 127.0.0.1 (UDP) answering A and AAAA
// queries from a map, NXDOMAIN for other names, or rcode for every query
// when set; it counts the queries it gets.
type server struct {
	addr    string
	queries atomic.Int64
	rcode   int
}

func newServer(t testing.TB, rcode int, records map[string]string) *server {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: pc.LocalAddr().String(), rcode: rcode}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		s.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		qq := q.Question[0]
		ip, ok := records[strings.TrimSuffix(qq.Name, ".")]
		switch {
		case s.rcode != dns.RcodeSuccess:
			m.Rcode = s.rcode
		case !ok:
			m.Rcode = dns.RcodeNameError
			soa, _ := dns.NewRR(". 60 IN SOA ns. host. 1 7200 3600 1209600 60")
			m.Ns = []dns.RR{soa}
		default:
			a := netip.MustParseAddr(ip)
			if a.Is4() && qq.Qtype == dns.TypeA {
				rr, _ := dns.NewRR(qq.Name + " 300 IN A " + ip)
				m.Answer = append(m.Answer, rr)
			}
			if a.Is6() && qq.Qtype == dns.TypeAAAA {
				rr, _ := dns.NewRR(qq.Name + " 300 IN AAAA " + ip)
				m.Answer = append(m.Answer, rr)
			}
			if len(m.Answer) == 0 {
				soa, _ := dns.NewRR(". 60 IN SOA ns. host. 1 7200 3600 1209600 60")
				m.Ns = []dns.RR{soa}
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return s
}

// silent is the address of a UDP socket that never answers.
func silent(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func load(t testing.TB, upstreams []string, extra string) *policy.Policy {
	t.Helper()
	text := "version: 1\ndefault: allow\ndns:\n  upstreams: [\"" + strings.Join(upstreams, "\", \"") + "\"]\n" + extra
	p, err := policy.Load("t.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func resolver(p *policy.Policy) (*resolve.Resolver, *atomic.Pointer[policy.Policy]) {
	var cur atomic.Pointer[policy.Policy]
	cur.Store(p)
	return &resolve.Resolver{Policy: cur.Load}, &cur
}

func TestLookupNetIP(t *testing.T) {
	records := map[string]string{"svc.test": "127.0.0.7"}
	t.Run("a down first upstream fails over to the second", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{testnet.ClosedUDP(t), up.addr}, ""))
		got, err := r.LookupNetIP(context.Background(), "ip", "svc.test")
		if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.7")}) {
			t.Fatalf("LookupNetIP = %v, %v; want 127.0.0.7 from %s", got, err, up.addr)
		}
	})
	t.Run("a SERVFAIL upstream fails over to the next", func(t *testing.T) {
		bad := newServer(t, dns.RcodeServerFailure, records)
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{bad.addr, up.addr}, ""))
		got, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		if err != nil || len(got) != 1 {
			t.Fatalf("LookupNetIP = %v, %v", got, err)
		}
	})
	t.Run("every upstream down is an error within dns.timeout naming each", func(t *testing.T) {
		down, quiet := testnet.ClosedUDP(t), silent(t)
		r, _ := resolver(load(t, []string{down, quiet}, "  timeout: 400ms\n"))
		start := time.Now()
		_, err := r.LookupNetIP(context.Background(), "ip", "svc.test")
		took := time.Since(start)
		if took > 2*time.Second {
			t.Errorf("failed after %s; dns.timeout is 400ms", took)
		}
		want := "no upstream answered within 400ms: " + down + " refused (port unreachable: nothing listens there), " + quiet + " timed out"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v; want it to say %q", err, want)
		}
		var de *net.DNSError
		var ue *resolve.UpstreamError
		if !errors.As(err, &de) || de.IsNotFound || !errors.As(err, &ue) {
			t.Fatalf("err = %#v; want a *net.DNSError, not IsNotFound, wrapping *UpstreamError", err)
		}
	})
	t.Run("an upstream refused at once is not said to have run out of time", func(t *testing.T) {
		down := testnet.ClosedUDP(t)
		r, _ := resolver(load(t, []string{down}, "  timeout: 2s\n"))
		_, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		want := "no upstream answered: " + down + " refused (port unreachable: nothing listens there)"
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "within") {
			t.Fatalf("err = %v; want it to say %q", err, want)
		}
	})
	t.Run("a silent upstream alone is a DNS timeout", func(t *testing.T) {
		r, _ := resolver(load(t, []string{silent(t)}, "  timeout: 200ms\n"))
		_, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsTimeout || de.IsNotFound {
			t.Fatalf("err = %#v; want a timeout", err)
		}
	})
	t.Run("NXDOMAIN is not found, and says which name", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{up.addr}, ""))
		_, err := r.LookupNetIP(context.Background(), "ip", "nx.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound || de.Name != "nx.test" {
			t.Fatalf("err = %#v; want not found", err)
		}
	})
	t.Run("SERVFAIL from every upstream is a server failure, not a missing name", func(t *testing.T) {
		bad := newServer(t, dns.RcodeServerFailure, records)
		r, _ := resolver(load(t, []string{bad.addr}, ""))
		_, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		var de *net.DNSError
		if !errors.As(err, &de) || de.IsNotFound || de.IsTimeout || !strings.Contains(err.Error(), bad.addr+" answered SERVFAIL") {
			t.Fatalf("err = %v; want a server failure naming %s", err, bad.addr)
		}
	})
	t.Run("a cached answer costs no upstream query", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{up.addr}, ""))
		for range 3 {
			if _, err := r.LookupNetIP(context.Background(), "ip", "svc.test"); err != nil {
				t.Fatal(err)
			}
		}
		if n := up.queries.Load(); n != 2 { // A and AAAA, once
			t.Fatalf("upstream asked %d times, want 2 (A and AAAA, once)", n)
		}
	})
	t.Run("a negative answer is cached too", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{up.addr}, ""))
		for range 3 {
			r.LookupNetIP(context.Background(), "ip4", "nx.test")
		}
		if n := up.queries.Load(); n != 1 {
			t.Fatalf("upstream asked %d times, want 1", n)
		}
	})
	t.Run("a reload that changes dns.upstreams applies to the next lookup", func(t *testing.T) {
		first := newServer(t, dns.RcodeSuccess, map[string]string{"svc.test": "192.0.2.1"})
		second := newServer(t, dns.RcodeSuccess, map[string]string{"svc.test": "192.0.2.2"})
		r, cur := resolver(load(t, []string{first.addr}, ""))
		for _, c := range []struct {
			up   *server
			want string
		}{{first, "192.0.2.1"}, {second, "192.0.2.2"}, {first, "192.0.2.1"}} {
			cur.Store(load(t, []string{c.up.addr}, ""))
			got, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
			if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr(c.want)}) {
				t.Fatalf("through %s: %v, %v; want %s", c.up.addr, got, err, c.want)
			}
		}
	})
	t.Run("localhost is loopback without a query", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{up.addr}, ""))
		got, err := r.LookupNetIP(context.Background(), "ip4", "db.localhost")
		if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.1")}) || up.queries.Load() != 0 {
			t.Fatalf("LookupNetIP = %v, %v, %d queries", got, err, up.queries.Load())
		}
	})
	t.Run("a name in the hosts file is answered from it without a query", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		hosts := filepath.Join(t.TempDir(), "hosts")
		if err := os.WriteFile(hosts, []byte("# comment\n127.0.0.9 Box box.lan # alias\n::1 box\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r, _ := resolver(load(t, []string{up.addr}, ""))
		r.Hosts = hosts
		got, err := r.LookupNetIP(context.Background(), "ip4", "box")
		if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.9")}) || up.queries.Load() != 0 {
			t.Fatalf("LookupNetIP = %v, %v, %d queries", got, err, up.queries.Load())
		}
	})
	t.Run("an upstream that is egress itself is never asked", func(t *testing.T) {
		up := newServer(t, dns.RcodeSuccess, records)
		r, _ := resolver(load(t, []string{up.addr}, ""))
		r.IsSelf = func(ap netip.AddrPort) bool { return ap.String() == up.addr }
		_, err := r.LookupNetIP(context.Background(), "ip4", "svc.test")
		if !errors.Is(err, resolve.ErrNoUpstream) || up.queries.Load() != 0 {
			t.Fatalf("err = %v, %d queries", err, up.queries.Load())
		}
	})
}

// BenchmarkLookupNetIPCached is the dialer's lookup of a cached name.
func BenchmarkLookupNetIPCached(b *testing.B) {
	up := newServer(b, dns.RcodeSuccess, map[string]string{"svc.test": "127.0.0.7"})
	r, _ := resolver(load(b, []string{up.addr}, ""))
	ctx := context.Background()
	if _, err := r.LookupNetIP(ctx, "ip4", "svc.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r.LookupNetIP(ctx, "ip4", "svc.test")
	}
}
