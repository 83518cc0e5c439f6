package dnsproxy

import (
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// benchServer is a Server with the allowList policy (cache on or off),
// forwarding to a loopback upstream.
func benchServer(b *testing.B, cacheSize string) *Server {
	up := newUpstream(b)
	p := testPolicy(b, allowList+"  cache_size: "+cacheSize+"\n", up.addr)
	return &Server{
		Policy: func() *policy.Policy { return p },
		Events: &eventlog.Sink{Logger: zerolog.Nop()},
		Names:  &names.Table{},
	}
}

func benchQuery(name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	return m
}

// BenchmarkHandleCached is the handler's cost for a cached, allowed answer
// (no socket): decide, cache copy, decide on the address, remember it,
// build and fit the answer.
func BenchmarkHandleCached(b *testing.B) {
	s := benchServer(b, "10000")
	q := benchQuery("api.example.com.")
	client := netip.MustParseAddrPort("127.0.0.1:5300")
	ctx := context.Background()
	if r := s.handle(ctx, client, q, false); len(r.Answer) != 1 {
		b.Fatalf("answer %v", r)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.handle(ctx, client, q, false)
	}
}

// BenchmarkHandleDenied is the cost of refusing a name.
func BenchmarkHandleDenied(b *testing.B) {
	s := benchServer(b, "10000")
	q := benchQuery("other.example.org.")
	client := netip.MustParseAddrPort("127.0.0.1:5300")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		s.handle(ctx, client, q, false)
	}
}

// BenchmarkHandleUncached forwards every query to the loopback upstream
// (cache_size: 0): the handler plus one UDP exchange.
func BenchmarkHandleUncached(b *testing.B) {
	s := benchServer(b, "0")
	q := benchQuery("api.example.com.")
	client := netip.MustParseAddrPort("127.0.0.1:5300")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if r := s.handle(ctx, client, q, false); len(r.Answer) != 1 {
			b.Fatalf("answer %v", r)
		}
	}
}

// BenchmarkUDPCached is one cached query over a real UDP socket, client
// included.
func BenchmarkUDPCached(b *testing.B) {
	e := newEnv(b, allowList)
	q := benchQuery("api.example.com.")
	c := dns.Client{Net: "udp"}
	conn, err := c.Dial(e.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.ReportAllocs()
	for b.Loop() {
		r, _, err := c.ExchangeWithConn(q, conn)
		if err != nil || len(r.Answer) != 1 {
			b.Fatalf("%v %v", r, err)
		}
	}
}

// udpExchange asks addr for q over UDP on conn, one query at a time.
func udpExchange(b *testing.B, conn *dns.Conn, q *dns.Msg) {
	q.Id = dns.Id()
	if err := conn.WriteMsg(q); err != nil {
		b.Fatal(err)
	}
	r, err := conn.ReadMsg()
	if err != nil || r.Id != q.Id || len(r.Answer) != 1 {
		b.Fatalf("%v %v", r, err)
	}
}

func dialUDP(b *testing.B, addr string) *dns.Conn {
	conn, err := dns.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// BenchmarkUDPDirect asks the test upstream directly, one query at a
// time: the baseline of BenchmarkUDPUncached (their difference is the
// latency egress adds to an uncached answer).
func BenchmarkUDPDirect(b *testing.B) {
	e := newEnv(b, allowList)
	conn := dialUDP(b, e.up.addr)
	q := benchQuery("api.example.com.")
	b.ReportAllocs()
	for b.Loop() {
		udpExchange(b, conn, q)
	}
}

// BenchmarkUDPUncached is one uncached query at a time over real UDP
// sockets: client, egress, upstream and back.
func BenchmarkUDPUncached(b *testing.B) {
	e := newEnv(b, allowList+"  cache_size: 0\n")
	conn := dialUDP(b, e.addr)
	q := benchQuery("api.example.com.")
	b.ReportAllocs()
	for b.Loop() {
		udpExchange(b, conn, q)
	}
}

// benchParallel runs 32 clients, each with one query outstanding at a
// time on its own socket, against addr.
func benchParallel(b *testing.B, addr string) {
	b.SetParallelism(16) // x GOMAXPROCS clients
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := dns.Dial("udp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		q := benchQuery("api.example.com.")
		for pb.Next() {
			q.Id = dns.Id()
			if err := conn.WriteMsg(q); err != nil {
				b.Error(err)
				return
			}
			if r, err := conn.ReadMsg(); err != nil || len(r.Answer) != 1 {
				b.Errorf("%v %v", r, err)
				return
			}
		}
	})
}

// BenchmarkUDPUncachedParallel is the uncached forward path under load:
// many queries in flight on the upstream sockets.
func BenchmarkUDPUncachedParallel(b *testing.B) {
	e := newEnv(b, allowList+"  cache_size: 0\n")
	benchParallel(b, e.addr)
}

// BenchmarkUDPCachedParallel is the cached path under load.
func BenchmarkUDPCachedParallel(b *testing.B) {
	e := newEnv(b, allowList)
	e.query("udp", "api.example.com", dns.TypeA)
	benchParallel(b, e.addr)
}

// BenchmarkTakeCached is the UDP reader's work for one cached query,
// without the system calls: unpack, decide, the cached answer, pack.
func BenchmarkTakeCached(b *testing.B) {
	s := benchServer(b, "10000")
	u := newUDPServer(s, nil)
	pkt, _ := benchQuery("api.example.com.").Pack()
	client := netip.MustParseAddrPort("127.0.0.1:5300")
	out := make([]byte, 0, udpBufSize)
	if r := s.handle(context.Background(), client, benchQuery("api.example.com."), false); len(r.Answer) != 1 {
		b.Fatalf("answer %v", r)
	}
	b.ReportAllocs()
	for b.Loop() {
		m := u.take(pkt, client)
		if m == nil {
			b.Fatal("no answer")
		}
		out, _ = m.PackBuffer(out[:cap(out)])
	}
}
