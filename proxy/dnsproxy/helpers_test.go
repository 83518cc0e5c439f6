package dnsproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// zone is the test upstream's data: presentation-format records. It
// answers like a recursive resolver: CNAME chains followed, NXDOMAIN and
// NODATA with the SOA below.
var zone = []string{
	"api.example.com. 300 IN A 93.184.216.34",
	"api.example.com. 300 IN AAAA 2606:2800:220:1:248:1893:25c8:1946",
	"api.example.com. 300 IN MX 10 mail.example.com.",
	"api.example.com. 300 IN TXT \"v=spf1 -all\"",
	"_https._tcp.api.example.com. 300 IN SRV 10 5 443 api.example.com.",
	"34.216.184.93.in-addr.arpa. 300 IN PTR api.example.com.",
	"short.example.com. 5 IN A 93.184.216.35",
	"other.example.org. 300 IN A 93.184.216.36",
	// Rebinding: a public name answering with guarded addresses.
	"rebind.example.com. 300 IN A 10.0.0.5",
	"rebind.example.com. 300 IN A 93.184.216.34",
	"rebind.example.com. 300 IN A 169.254.169.254",
	"rebind.example.com. 300 IN AAAA ::1",
	"rebind.example.com. 300 IN AAAA fd00::5",
	"rebind.example.com. 300 IN AAAA 2606:2800:220:1:248:1893:25c8:1946",
	"rebind.example.com. 300 IN HTTPS 1 . alpn=h2 ipv4hint=93.184.216.34,10.0.0.5 ipv6hint=fd00::5",
	"allprivate.example.com. 300 IN A 192.168.1.1",
	// Encrypted Client Hello keys: stripped, so that names stay visible.
	"ech.example.com. 300 IN HTTPS 1 . alpn=h2 ech=AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA ipv4hint=93.184.216.34",
	// CNAME chains.
	"alias.example.com. 300 IN CNAME evil.example.org.",
	"evil.example.org. 300 IN A 93.184.216.40",
	"www.example.com. 300 IN CNAME edge.cdn.example.net.",
	"edge.cdn.example.net. 300 IN A 93.184.216.41",
	"deep.example.com. 300 IN CNAME www.example.com.",
	"loop1.example.com. 300 IN CNAME loop2.example.com.",
	"loop2.example.com. 300 IN CNAME loop1.example.com.",
}

// big is a name whose TXT answer (~4 KB) needs TCP.
const big = "big.example.com."

type upstream struct {
	addr    string // host:port, UDP and TCP
	silent  atomic.Bool
	queries sync.Map // "name type" (lower case) -> *atomic.Int64
	rrs     map[string][]dns.RR
	soa     dns.RR
	extra   []dns.RR // appended to every positive answer's additional section
	extraMu sync.Mutex
}

// newUpstream starts a miekg/dns server on 127.0.0.1 (UDP and TCP, one
// port) serving zone.
func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{rrs: map[string][]dns.RR{}}
	for _, s := range zone {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("zone %q: %v", s, err)
		}
		n := strings.ToLower(rr.Header().Name)
		u.rrs[n] = append(u.rrs[n], rr)
	}
	for i := range 40 {
		rr, _ := dns.NewRR(big + " 300 IN TXT \"" + strings.Repeat(string(rune('a'+i%26)), 100) + "\"")
		u.rrs[big] = append(u.rrs[big], rr)
	}
	u.soa, _ = dns.NewRR("example.com. 3600 IN SOA ns.example.com. hostmaster.example.com. 1 7200 3600 1209600 60")

	pc, l := listenPair(t)
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(u.serve)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

func (u *upstream) count(name string, qtype uint16) int64 {
	v, ok := u.queries.Load(strings.ToLower(name) + " " + dns.TypeToString[qtype])
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (u *upstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	v, _ := u.queries.LoadOrStore(strings.ToLower(q.Name)+" "+dns.TypeToString[q.Qtype], new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	if u.silent.Load() || q.Name == "silent.example.com." {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	name := strings.ToLower(q.Name)
	for range 10 {
		rrs, ok := u.rrs[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
			break
		}
		next := ""
		for _, rr := range rrs {
			if c, ok := rr.(*dns.CNAME); ok && q.Qtype != dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
				next = strings.ToLower(c.Target)
			} else if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
		if next == "" {
			break
		}
		name = next
	}
	if len(m.Answer) == 0 || m.Rcode == dns.RcodeNameError {
		m.Ns = []dns.RR{u.soa}
	} else {
		u.extraMu.Lock()
		m.Extra = append(m.Extra, u.extra...)
		u.extraMu.Unlock()
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// silentUpstream returns the address of a UDP and TCP socket that never
// answers (TCP connections are accepted and left alone).
func silentUpstream(t testing.TB) string {
	t.Helper()
	pc, l := listenPair(t)
	t.Cleanup(func() { pc.Close() })
	t.Cleanup(func() { l.Close() })
	return pc.LocalAddr().String()
}

// listenPair listens on 127.0.0.1 over UDP and TCP on one port, trying
// again when the TCP port of a fresh UDP port is taken.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("no free UDP+TCP port pair on 127.0.0.1")
	return nil, nil
}

// logBuf collects log lines for assertions; safe for concurrent use.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the JSON lines logged so far.
func (l *logBuf) lines(t testing.TB) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(l.b.Bytes(), []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func (l *logBuf) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

// testPolicy loads YAML policy text, with the upstream filled in where
// the text says UPSTREAM.
func testPolicy(t testing.TB, text string, ups ...string) *policy.Policy {
	t.Helper()
	if len(ups) > 0 {
		text = strings.ReplaceAll(text, "UPSTREAMS", `["`+strings.Join(ups, `", "`)+`"]`)
	}
	p, err := policy.Load("p.yaml", []byte(text))
	if err != nil {
		t.Fatalf("policy:\n%s\n%v", text, err)
	}
	return p
}

// env is an egress DNS proxy under test with its upstream.
type env struct {
	t      testing.TB
	up     *upstream
	srv    *Server
	addr   string // host:port, UDP and TCP
	log    *logBuf
	names  *names.Table
	pol    atomic.Pointer[policy.Policy]
	clock  atomic.Int64 // unix nanoseconds; 0 = real time
	panics atomic.Int32 // the next queries that make Policy panic
	told   atomic.Int64 // addresses Names was told
	served chan error
}

// newEnv starts a Server on 127.0.0.1 with the policy text (UPSTREAMS is
// replaced by the test upstream).
func newEnv(t testing.TB, text string) *env {
	t.Helper()
	e := &env{t: t, up: newUpstream(t), log: &logBuf{}, names: &names.Table{}}
	e.pol.Store(testPolicy(t, text, e.up.addr))
	var w io.Writer = e.log
	if tt, ok := t.(*testing.T); ok {
		w = io.MultiWriter(e.log, zerolog.NewTestWriter(tt))
	}
	lg := zerolog.New(w)
	e.srv = &Server{
		Policy: func() *policy.Policy {
			if n := e.panics.Load(); n > 0 && e.panics.CompareAndSwap(n, n-1) {
				panic("boom")
			}
			return e.pol.Load()
		},
		Events: &eventlog.Sink{Logger: lg},
		Logger: lg,
		Names:  countingRecorder{e},
		Now: func() time.Time {
			if n := e.clock.Load(); n != 0 {
				return time.Unix(0, n)
			}
			return time.Now()
		},
	}
	e.start()
	return e
}

func (e *env) start() {
	t := e.t
	pc, l := listenPair(t)
	e.addr = pc.LocalAddr().String()
	e.served = make(chan error, 1)
	go func() { e.served <- e.srv.Serve(pc, l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-e.served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	// Wait until both sockets answer.
	for _, n := range []string{"udp", "tcp"} {
		c := dns.Client{Net: n, Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion("ready.invalid.", dns.TypeA)
		m.Opcode = dns.OpcodeStatus
		testwait.UntilNil(t, testwait.Timeout, func() error {
			if _, _, err := c.Exchange(m, e.addr); err != nil {
				return fmt.Errorf("server not answering on %s: %w", n, err)
			}
			return nil
		})
	}
}

func (e *env) setClock(tm time.Time) { e.clock.Store(tm.UnixNano()) }

// query asks the proxy for name/qtype over network ("udp" or "tcp") with
// EDNS(0) (buffer 1232, DO unset).
func (e *env) query(network, name string, qtype uint16) *dns.Msg {
	e.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	return e.exchange(network, m)
}

func (e *env) exchange(network string, m *dns.Msg) *dns.Msg {
	e.t.Helper()
	c := dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, e.addr)
	if err != nil {
		e.t.Fatalf("query %s %s over %s: %v", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], network, err)
	}
	return r
}

// ede returns the Extended DNS Error of a response, or nil.
func ede(m *dns.Msg) *dns.EDNS0_EDE {
	o := m.IsEdns0()
	if o == nil {
		return nil
	}
	for _, opt := range o.Option {
		if e, ok := opt.(*dns.EDNS0_EDE); ok {
			return e
		}
	}
	return nil
}

// addrs returns the A and AAAA addresses of the answer section.
func addrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

var loopback = netip.MustParseAddr("127.0.0.1")

// countingRecorder tells env's names table, counting.
type countingRecorder struct{ e *env }

func (c countingRecorder) Remember(client netip.Addr, name string, addr netip.Addr, ttl time.Duration) {
	c.e.told.Add(1)
	c.e.names.Remember(client, name, addr, ttl)
}
