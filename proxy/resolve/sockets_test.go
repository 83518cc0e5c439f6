package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

// portUpstream is a UDP upstream on loopback that answers every A query
// with 192.0.2.1 and records the source ports queries came from. With
// forge set, it first sends what an attacker would (see forgeries).
type portUpstream struct {
	addr  string
	pc    net.PacketConn
	mu    sync.Mutex
	ports map[int]bool
	n     atomic.Int64
	forge atomic.Bool
	real  atomic.Bool // send the real answer (default true)
}

func newPortUpstream(t *testing.T) *portUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &portUpstream{addr: pc.LocalAddr().String(), pc: pc, ports: map[int]bool{}}
	u.real.Store(true)
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			u.n.Add(1)
			u.mu.Lock()
			u.ports[from.(*net.UDPAddr).Port] = true
			u.mu.Unlock()
			if u.forge.Load() {
				for _, f := range forgeries(t, q) {
					b, _ := f.Pack()
					pc.WriteTo(b, from)
				}
				// From another port of the upstream's address: the
				// connected socket must not even receive it.
				if other, err := net.ListenPacket("udp", "127.0.0.1:0"); err == nil {
					b, _ := answer(q, "192.0.2.66").Pack()
					other.WriteTo(b, from)
					other.Close()
				}
			}
			if u.real.Load() {
				b, _ := answer(q, "192.0.2.1").Pack()
				pc.WriteTo(b, from)
			}
		}
	}()
	return u
}

func (u *portUpstream) portCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ports)
}

func answer(q *dns.Msg, ip string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	rr, _ := dns.NewRR(q.Question[0].Name + " 300 IN A " + ip)
	m.Answer = []dns.RR{rr}
	return m
}

// forgeries are answers to q an off-path attacker could send to the
// right port: a wrong id, the right id for another question, the right
// id and question on a packet that is not a response, and garbage.
func forgeries(t *testing.T, q *dns.Msg) []*dns.Msg {
	wrongID := answer(q, "192.0.2.66")
	wrongID.Id = q.Id + 1
	other := answer(q, "192.0.2.66")
	other.Question[0].Name = "victim.test."
	other.Answer[0].Header().Name = "victim.test."
	notResponse := answer(q, "192.0.2.66")
	notResponse.Response = false
	wrongType := answer(q, "192.0.2.66")
	wrongType.Question[0].Qtype = dns.TypeAAAA
	return []*dns.Msg{wrongID, other, notResponse, wrongType}
}

func testResolver(t *testing.T, upstreams ...string) (*Resolver, *atomic.Pointer[policy.Policy]) {
	t.Helper()
	var cur atomic.Pointer[policy.Policy]
	cur.Store(loadPolicy(t, upstreams...))
	r := &Resolver{Policy: cur.Load}
	t.Cleanup(r.Close)
	return r, &cur
}

func loadPolicy(t *testing.T, upstreams ...string) *policy.Policy {
	t.Helper()
	p, err := policy.Load("t.yaml", []byte("version: 1\ndefault: allow\ndns:\n  cache_size: 0\n  timeout: 500ms\n  upstreams: [\""+strings.Join(upstreams, "\", \"")+"\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ask(t *testing.T, r *Resolver, name string) (*dns.Msg, error) {
	t.Helper()
	m, _, err := r.Exchange(context.Background(), r.policy().DNS, dns.Question{Name: name, Qtype: dns.TypeA, Qclass: dns.ClassINET}, false, false)
	return m, err
}

func firstA(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// sockets returns the pool's open sockets to upstream.
func (p *socketPool) open(upstream string) []*upSocket {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*upSocket
	if set := p.sets[upstream]; set != nil {
		for _, s := range set {
			if s != nil {
				out = append(out, s)
			}
		}
	}
	return out
}

func isClosed(s *upSocket) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func TestUpstreamSockets(t *testing.T) {
	t.Run("queries one after another reuse a few sockets", func(t *testing.T) {
		up := newPortUpstream(t)
		r, _ := testResolver(t, up.addr)
		for i := range 200 {
			m, err := ask(t, r, fmt.Sprintf("n%d.test.", i))
			if err != nil || firstA(m) != "192.0.2.1" {
				t.Fatalf("query %d: %v %v", i, m, err)
			}
		}
		if n := up.portCount(); n > socketsPerUpstream {
			t.Fatalf("200 queries came from %d source ports, want at most %d", n, socketsPerUpstream)
		}
	})
	t.Run("concurrent queries share the sockets and each gets its own answer", func(t *testing.T) {
		up := newPortUpstream(t)
		r, _ := testResolver(t, up.addr)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 32 {
			wg.Go(func() {
				for i := range 20 {
					name := fmt.Sprintf("g%d-%d.test.", g, i)
					m, err := ask(t, r, name)
					if err == nil && (len(m.Question) != 1 || m.Question[0].Name != name || firstA(m) != "192.0.2.1") {
						err = fmt.Errorf("asked %s, got %v", name, m)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := up.portCount(); n > socketsPerUpstream {
			t.Fatalf("640 queries came from %d source ports, want at most %d", n, socketsPerUpstream)
		}
	})
	t.Run("forged and mismatched answers are ignored, the real one taken", func(t *testing.T) {
		up := newPortUpstream(t)
		up.forge.Store(true)
		r, _ := testResolver(t, up.addr)
		for i := range 20 {
			m, err := ask(t, r, fmt.Sprintf("n%d.test.", i))
			if err != nil || firstA(m) != "192.0.2.1" {
				t.Fatalf("query %d: %v %v; want the real answer 192.0.2.1", i, m, err)
			}
		}
	})
	t.Run("forged answers alone never answer: the query times out", func(t *testing.T) {
		up := newPortUpstream(t)
		up.forge.Store(true)
		up.real.Store(false)
		r, _ := testResolver(t, up.addr)
		m, err := ask(t, r, "n.test.")
		var ue *UpstreamError
		if m != nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), up.addr+" timed out") {
			t.Fatalf("got %v, %v; want a timeout naming %s", m, err, up.addr)
		}
	})
	t.Run("idle and old sockets are closed by the timer", func(t *testing.T) {
		up := newPortUpstream(t)
		r, _ := testResolver(t, up.addr)
		r.sockets.every, r.sockets.idle = 10*time.Millisecond, 30*time.Millisecond
		if _, err := ask(t, r, "a.test."); err != nil {
			t.Fatal(err)
		}
		open := r.sockets.open(up.addr)
		if len(open) != 1 {
			t.Fatalf("%d sockets open after one query, want 1", len(open))
		}
		testwait.Until(t, testwait.Timeout, "the idle socket closed", func() bool {
			return isClosed(open[0]) && len(r.sockets.open(up.addr)) == 0
		})
		// Past maxSocketAge a busy socket is retired too.
		r.sockets.idle, r.sockets.age = time.Hour, 50*time.Millisecond
		if _, err := ask(t, r, "b.test."); err != nil {
			t.Fatal(err)
		}
		first := r.sockets.open(up.addr)
		testwait.UntilNil(t, testwait.Timeout, func() error {
			if isClosed(first[0]) {
				return nil
			}
			if _, err := ask(t, r, "c.test."); err != nil { // busy meanwhile
				return fmt.Errorf("ask: %w", err)
			}
			return errors.New("a socket older than its age was not closed")
		})
	})
	t.Run("the sockets of an upstream a reload removed are closed", func(t *testing.T) {
		a, b := newPortUpstream(t), newPortUpstream(t)
		r, cur := testResolver(t, a.addr)
		r.sockets.every = 10 * time.Millisecond
		for i := range 8 {
			if _, err := ask(t, r, fmt.Sprintf("n%d.test.", i)); err != nil {
				t.Fatal(err)
			}
		}
		old := r.sockets.open(a.addr)
		cur.Store(loadPolicy(t, b.addr))
		testwait.Until(t, testwait.Timeout, "no socket open to the removed upstream", func() bool { return len(r.sockets.open(a.addr)) == 0 })
		for _, s := range old {
			if !isClosed(s) {
				t.Fatalf("a socket to %s, no longer an upstream, is open", a.addr)
			}
		}
		if m, err := ask(t, r, "after.test."); err != nil || b.n.Load() != 1 {
			t.Fatalf("after the reload: %v %v, %d queries to the new upstream", m, err, b.n.Load())
		}
	})
	t.Run("Close closes the sockets", func(t *testing.T) {
		up := newPortUpstream(t)
		r, _ := testResolver(t, up.addr)
		if _, err := ask(t, r, "a.test."); err != nil {
			t.Fatal(err)
		}
		open := r.sockets.open(up.addr)
		r.Close()
		if !isClosed(open[0]) {
			t.Fatal("Close left an idle socket open")
		}
		// Still usable.
		if m, err := ask(t, r, "b.test."); err != nil || firstA(m) != "192.0.2.1" {
			t.Fatalf("after Close: %v %v", m, err)
		}
	})
}
