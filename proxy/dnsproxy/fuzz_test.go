package dnsproxy

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

const fuzzPolicy = `version: 1
default: deny
allow:
  - host: api.example.com
  - host: "*.example.com"
  - cidr: 10.20.0.0/16
deny:
  - host: mail.example.com
dns:
  upstreams: UPSTREAMS
  timeout: 200ms
`

func fuzzSeeds(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
		do    bool
	}{
		{"api.example.com.", dns.TypeA, true, false},
		{"rebind.example.com.", dns.TypeA, true, true},
		{"rebind.example.com.", dns.TypeHTTPS, true, false},
		{"alias.example.com.", dns.TypeA, false, false},
		{"other.example.org.", dns.TypeAAAA, true, false},
		{"api.example.com.", dns.TypeANY, true, false},
		{big, dns.TypeTXT, false, false},
		{"example.com.", dns.TypeAXFR, false, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, q.do)
		}
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, false)
		f.Add(wire, true)
	}
	f.Add([]byte("\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x01\x00\x01"), false)
	f.Add([]byte{}, false)
}

// FuzzHandle feeds arbitrary queries to the query handler, with a real
// upstream on loopback: it must never panic, never answer a response, and
// always produce an answer that packs and fits the client's buffer.
func FuzzHandle(f *testing.F) {
	fuzzSeeds(f)
	up := newUpstream(f)
	p := testPolicy(f, fuzzPolicy, up.addr)
	s := &Server{Events: &eventlog.Sink{Logger: zerolog.Nop()}, Names: &names.Table{MaxEntries: 1000}}
	s.Policy = func() *policy.Policy { return p }
	client := netip.MustParseAddrPort("127.0.0.1:5300")
	f.Fuzz(func(t *testing.T, wire []byte, tcp bool) {
		req := new(dns.Msg)
		if err := req.Unpack(wire); err != nil {
			return // miekg/dns's server answers FORMERR or drops these
		}
		resp := s.handle(context.Background(), client, req, tcp)
		if resp == nil {
			if !req.Response {
				t.Fatalf("no answer to a query: %v", req)
			}
			return
		}
		if req.Response {
			t.Fatalf("answered a response")
		}
		resp.Compress = true
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, resp)
		}
		limit := dns.MaxMsgSize
		if !tcp {
			limit = dns.MinMsgSize
			if o := req.IsEdns0(); o != nil && int(o.UDPSize()) > limit {
				limit = int(o.UDPSize())
			}
		}
		if len(out) > limit {
			t.Fatalf("answer of %d bytes, client buffer %d", len(out), limit)
		}
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("header %+v for query id %d", resp.MsgHdr, req.Id)
		}
	})
}

// FuzzFilter feeds arbitrary upstream answers to the answer filter: it must
// never panic, never modify the answer (the cache shares it), and never
// let a guarded address through.
func FuzzFilter(f *testing.F) {
	up := newUpstream(f)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"api.example.com.", dns.TypeA}, {"rebind.example.com.", dns.TypeA},
		{"rebind.example.com.", dns.TypeAAAA}, {"rebind.example.com.", dns.TypeHTTPS},
		{"alias.example.com.", dns.TypeA}, {"deep.example.com.", dns.TypeA},
		{"loop1.example.com.", dns.TypeA}, {"nx.example.com.", dns.TypeA},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		r, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, up.addr)
		if err != nil {
			f.Fatal(err)
		}
		wire, _ := r.Pack()
		f.Add(wire)
	}
	p := testPolicy(f, "version: 1\ndefault: allow\nallow:\n  - cidr: 10.20.0.0/16\n")
	s := &Server{}
	client := netip.MustParseAddr("127.0.0.1")
	f.Fuzz(func(t *testing.T, wire []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(wire); err != nil || len(m.Question) != 1 {
			return
		}
		before, err := m.Pack()
		if err != nil {
			return
		}
		q := m.Question[0]
		d := p.Decide(policy.Request{Host: q.Name, Client: client})
		if !d.Allowed() {
			return
		}
		var fl filtered
		s.filter(&fl, p, client, d.Host, q, m, 7)
		after, _ := m.Pack()
		if !bytes.Equal(before, after) {
			t.Fatalf("filter modified the upstream answer")
		}
		if fl.chainDenied != nil {
			return
		}
		for _, sec := range [][]dns.RR{fl.answer, fl.ns, fl.extra} {
			for _, rr := range sec {
				var a netip.Addr
				switch rr := rr.(type) {
				case *dns.A:
					a, _ = netip.AddrFromSlice(rr.A)
				case *dns.AAAA:
					a, _ = netip.AddrFromSlice(rr.AAAA)
				default:
					continue
				}
				a = a.Unmap()
				if (a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast()) && !netip.MustParsePrefix("10.20.0.0/16").Contains(a) {
					t.Fatalf("guarded address %s kept in %v", a, rr)
				}
			}
		}
		resp := new(dns.Msg)
		resp.Answer, resp.Ns, resp.Extra = fl.answer, fl.ns, fl.extra
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("filtered answer does not pack: %v", err)
		}
	})
}
