package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// hostile is a DNS proxy whose upstream answers with whatever answer
// returns: an upstream that lies, as a compromised or attacker-run
// resolver would. It counts the questions that reached it.
type hostile struct {
	*Server
	addr  string
	names *names.Table
	asked atomic.Int64
	seen  atomic.Pointer[string] // last qname the upstream saw
}

func newHostile(t *testing.T, policyText string, answer func(q dns.Question) (ans, extra []dns.RR)) *hostile {
	t.Helper()
	h := &hostile{names: &names.Table{}}
	upc, upl := listenPair(t)
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		h.asked.Add(1)
		n := r.Question[0].Name
		h.seen.Store(&n)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer, m.Extra = answer(r.Question[0])
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := dns.MinMsgSize
			if o := r.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			m.Truncate(size)
		}
		_ = w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: upc, Handler: handler}, {Listener: upl, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	pol := testPolicy(t, policyText, upc.LocalAddr().String())
	lg := zerolog.New(zerolog.NewTestWriter(t))
	h.Server = &Server{Policy: func() *policy.Policy { return pol }, Events: &eventlog.Sink{Logger: lg}, Logger: lg, Names: h.names}
	pc, l := listenPair(t)
	h.addr = pc.LocalAddr().String()
	done := make(chan error, 1)
	go func() { done <- h.Server.Serve(pc, l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.Server.Shutdown(ctx)
		<-done
	})
	return h
}

func (h *hostile) query(t *testing.T, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	c := dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, h.addr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const hostilePolicy = `version: 1
default: allow
allow:
  - host: db.corp.example
deny:
  - host: "*.blocked.example"
dns:
  upstreams: UPSTREAMS
`

// TestSecurityHostileUpstream: what a lying upstream can and cannot get
// through the DNS proxy, and what the transparent path then believes.
func TestSecurityHostileUpstream(t *testing.T) {
	secret := netip.MustParseAddr("10.0.0.99")
	h := newHostile(t, hostilePolicy, func(q dns.Question) ([]dns.RR, []dns.RR) {
		switch strings.ToLower(q.Name) {
		case "evil.example.":
			// An answer for the question plus a record for the exactly
			// allowed name pointing at a guarded address, in both the
			// answer and the additional section.
			return []dns.RR{rr(t, q.Name+" 60 IN A 93.184.216.34"), rr(t, "db.corp.example. 60 IN A 10.0.0.99")},
				[]dns.RR{rr(t, "db.corp.example. 60 IN A 10.0.0.99")}
		case "chain.example.":
			// A CNAME to the exactly allowed name, whose address the
			// upstream makes up: the guard is lifted only for names the
			// client asked for, so 10.0.0.99 must not be answered.
			return []dns.RR{rr(t, q.Name+" 60 IN CNAME db.corp.example."), rr(t, "db.corp.example. 60 IN A 10.0.0.99")}, nil
		case "meta.example.":
			return []dns.RR{rr(t, q.Name+" 60 IN CNAME metadata.google.internal."), rr(t, "metadata.google.internal. 60 IN A 169.254.169.254")}, nil
		case "nat64.example.":
			return []dns.RR{rr(t, q.Name+" 60 IN AAAA 64:ff9b::a9fe:a9fe"), rr(t, q.Name+" 60 IN AAAA 2002:a00:63::1"), rr(t, q.Name+" 60 IN AAAA ::ffff:10.0.0.99")}, nil
		case "svcb.example.":
			return []dns.RR{rr(t, q.Name+" 60 IN HTTPS 1 . alpn=h2 ipv4hint=10.0.0.99 ipv6hint=fd00::99")}, nil
		case "many.example.":
			var out []dns.RR
			for i := 0; i < 200; i++ {
				out = append(out, rr(t, q.Name+" 60 IN A 10.0."+itoa(i/250)+"."+itoa(i%250+1)))
			}
			return append(out, rr(t, q.Name+" 60 IN A 93.184.216.34")), nil
		}
		return []dns.RR{rr(t, q.Name+" 60 IN A 93.184.216.34")}, nil
	})
	loop4 := netip.MustParseAddr("127.0.0.1")

	t.Run("answer records for other names are dropped and none is remembered", func(t *testing.T) {
		// The additional section keeps db.corp.example's address (its
		// owner lifts the guard, and a lying upstream could answer that
		// name directly anyway), but it is never remembered: the
		// transparent path does not believe it.
		r := h.query(t, "evil.example.", dns.TypeA)
		for _, x := range r.Answer {
			if a, ok := x.(*dns.A); ok && a.A.String() == secret.String() {
				t.Errorf("guarded address for another name reached the client: %v", x)
			}
		}
		if n := h.names.Names(loop4, secret); len(n) != 0 {
			t.Errorf("names remembered for %s: %v", secret, n)
		}
	})
	t.Run("a CNAME to an exactly allowed name does not lift the guard for the asked name", func(t *testing.T) {
		r := h.query(t, "chain.example.", dns.TypeA)
		for _, a := range addrs(r) {
			if a == secret.String() {
				t.Errorf("guarded address answered through a CNAME: %v", r.Answer)
			}
		}
		if n := h.names.Names(loop4, secret); len(n) != 0 {
			t.Errorf("names remembered for %s: %v", secret, n)
		}
	})
	t.Run("a CNAME to a metadata name is blocked", func(t *testing.T) {
		r := h.query(t, "meta.example.", dns.TypeA)
		if len(addrs(r)) != 0 {
			t.Errorf("answer %v", r.Answer)
		}
	})
	t.Run("guarded IPv4 addresses embedded in IPv6 answers are stripped", func(t *testing.T) {
		r := h.query(t, "nat64.example.", dns.TypeAAAA)
		if len(addrs(r)) != 0 {
			t.Errorf("answer %v", r.Answer)
		}
	})
	t.Run("guarded HTTPS address hints are stripped", func(t *testing.T) {
		r := h.query(t, "svcb.example.", dns.TypeHTTPS)
		for _, x := range r.Answer {
			if s := x.String(); strings.Contains(s, "10.0.0.99") || strings.Contains(s, "fd00::99") {
				t.Errorf("hint kept: %s", s)
			}
		}
	})
	t.Run("a huge answer mixing guarded and public addresses keeps only the public one", func(t *testing.T) {
		r := h.query(t, "many.example.", dns.TypeA)
		if got := addrs(r); len(got) != 1 || got[0] != "93.184.216.34" {
			t.Errorf("rcode %s, addresses %v", dns.RcodeToString[r.Rcode], got)
		}
	})
	t.Run("case-randomised (0x20) and escaped spellings of a denied name never reach the upstream", func(t *testing.T) {
		before := h.asked.Load()
		for _, n := range []string{"X.BlOcKeD.ExAmPlE.", `x\.blocked.example.`, `x.blocked\.example.`, `x.blocked.example\000.`, `x.\066locked.example.`, "x.blocked.example.."} {
			m := new(dns.Msg)
			m.SetQuestion(n, dns.TypeA)
			c := dns.Client{Net: "udp", Timeout: 2 * time.Second}
			r, _, err := c.Exchange(m, h.addr)
			if err != nil {
				continue // not even a query miekg/dns will send: fine
			}
			if len(r.Answer) != 0 {
				t.Errorf("%s answered: %v", n, r.Answer)
			}
		}
		if n := h.asked.Load() - before; n != 0 {
			t.Errorf("the upstream was asked %d times for spellings of a denied name (last %q)", n, *h.seen.Load())
		}
	})
	t.Run("ANY is not forwarded", func(t *testing.T) {
		before := h.asked.Load()
		h.query(t, "evil.example.", dns.TypeANY)
		if h.asked.Load() != before {
			t.Errorf("ANY reached the upstream")
		}
	})
}

func itoa(i int) string { return strconv.Itoa(i) }
