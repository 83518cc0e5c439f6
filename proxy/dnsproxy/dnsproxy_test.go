package dnsproxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
)

const allowList = `version: 1
default: deny
allow:
  - host: api.example.com
  - host: "*.example.com"
  - host: "*.cdn.example.net"
  - host: "*.in-addr.arpa"
deny:
  - host: mail.example.com
dns:
  upstreams: UPSTREAMS
`

func TestAllowedNamesAreAnswered(t *testing.T) {
	e := newEnv(t, allowList)
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range []struct {
			name  string
			qtype uint16
			want  string // a substring of the answer
		}{
			{"api.example.com", dns.TypeA, "93.184.216.34"},
			{"api.example.com", dns.TypeAAAA, "2606:2800:220:1:248:1893:25c8:1946"},
			{"api.example.com", dns.TypeMX, "mail.example.com."},
			{"api.example.com", dns.TypeTXT, "v=spf1 -all"},
			{"_https._tcp.api.example.com", dns.TypeSRV, "443 api.example.com."},
			{"34.216.184.93.in-addr.arpa", dns.TypePTR, "api.example.com."},
			{"API.Example.COM", dns.TypeA, "93.184.216.34"},
		} {
			t.Run(network+" "+dns.TypeToString[tc.qtype]+" "+tc.name, func(t *testing.T) {
				r := e.query(network, tc.name, tc.qtype)
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
					t.Fatalf("rcode %s, answer %v", dns.RcodeToString[r.Rcode], r.Answer)
				}
				if !strings.Contains(r.Answer[0].String(), tc.want) {
					t.Fatalf("answer %v, want %q", r.Answer, tc.want)
				}
				if r.Question[0].Name != dns.Fqdn(tc.name) {
					t.Fatalf("question %q, want the client's spelling %q", r.Question[0].Name, dns.Fqdn(tc.name))
				}
				if !r.RecursionAvailable || r.Id == 0 {
					t.Fatalf("header %+v", r.MsgHdr)
				}
				if ede(r) != nil {
					t.Fatalf("unexpected EDE %v", ede(r))
				}
			})
		}
	}
	if lines := e.log.lines(t); len(lines) != 0 {
		t.Fatalf("allowed queries logged with log.allowed off: %v", lines)
	}
	a := netip.MustParseAddr("93.184.216.34")
	if got := e.names.Names(loopback, a); !slices.Equal(got, []string{"api.example.com"}) {
		t.Fatalf("names remembered for %s: %q", a, got)
	}
}

func TestAllowedQueriesLoggedWhenAsked(t *testing.T) {
	e := newEnv(t, allowList)
	e.srv.Events.LogAllowed = true
	e.query("udp", "api.example.com", dns.TypeA)
	lines := e.log.lines(t)
	if len(lines) != 1 || lines[0]["event"] != "allow" || lines[0]["qname"] != "api.example.com." || lines[0]["qtype"] != "A" {
		t.Fatalf("lines %v", lines)
	}
}

func TestDeniedNames(t *testing.T) {
	for _, tc := range []struct {
		name      string
		blocked   string // dns.blocked
		qname     string
		rcode     int
		ede       uint16
		text      []string // substrings of the EDE text
		reason    string
		rule      string
		allowFrom string
	}{
		{
			name: "a name no rule allows gets NXDOMAIN saying no rule matched", qname: "other.example.org",
			rcode: dns.RcodeNameError, ede: dns.ExtendedErrorCodeBlocked,
			// The hint names no more than the lookup asked: a port to
			// fill in, not every port (issue 21).
			text:   []string{"other.example.org", "no rule matched", "no_rule_matched", "to allow: - {host: other.example.org, ports: [PORT]} (PORT: the port the client connects to; a lookup names none)"},
			reason: "no_rule_matched",
		},
		{
			name: "a name a deny rule matches cites the rule", qname: "mail.example.com",
			rcode: dns.RcodeNameError, ede: dns.ExtendedErrorCodeBlocked,
			text:   []string{"denied by rule p.yaml:9", "mail.example.com", "denied_by_rule"},
			reason: "denied_by_rule", rule: "p.yaml:9",
		},
		{
			name: "blocked: refused answers REFUSED", blocked: "refused", qname: "other.example.org",
			rcode: dns.RcodeRefused, ede: dns.ExtendedErrorCodeBlocked, text: []string{"no rule matched"},
			reason: "no_rule_matched",
		},
		{
			name: "blocked: empty answers NOERROR without records", blocked: "empty", qname: "other.example.org",
			rcode: dns.RcodeSuccess, ede: dns.ExtendedErrorCodeBlocked, text: []string{"no rule matched"},
			reason: "no_rule_matched",
		},
		{
			name: "a client outside allow_from is refused as prohibited", allowFrom: "allow_from: [10.0.0.0/8]\n",
			qname: "api.example.com", rcode: dns.RcodeRefused, ede: dns.ExtendedErrorCodeProhibited,
			text: []string{"allow_from"}, reason: "client_refused",
		},
		{
			name: "a metadata name is refused by its guard", qname: "metadata.google.internal",
			rcode: dns.RcodeNameError, ede: dns.ExtendedErrorCodeBlocked, text: []string{"guard_metadata"},
			reason: "guard_metadata",
		},
		{
			// RFC 6761 §6.3: a caching server should not look localhost
			// names up; the policy refuses them by name, so none is
			// forwarded.
			name: "localhost is refused by name as loopback, never forwarded", qname: "localhost",
			rcode: dns.RcodeNameError, ede: dns.ExtendedErrorCodeBlocked, text: []string{"guard_loopback", "- {host: localhost, ports: [PORT]}"},
			reason: "guard_loopback",
		},
		{
			name: "a name under .localhost too", qname: "db.localhost",
			rcode: dns.RcodeNameError, ede: dns.ExtendedErrorCodeBlocked, text: []string{"guard_loopback", "- {host: db.localhost, ports: [PORT]}"},
			reason: "guard_loopback",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := allowList + tc.allowFrom
			if tc.blocked != "" {
				text += "  blocked: " + tc.blocked + "\n"
			}
			e := newEnv(t, text)
			for _, network := range []string{"udp", "tcp"} {
				e.log.reset()
				r := e.query(network, tc.qname, dns.TypeA)
				if r.Rcode != tc.rcode || len(r.Answer) != 0 {
					t.Fatalf("%s: rcode %s answer %v, want %s and no answer", network, dns.RcodeToString[r.Rcode], r.Answer, dns.RcodeToString[tc.rcode])
				}
				x := ede(r)
				if x == nil || x.InfoCode != tc.ede {
					t.Fatalf("%s: EDE %v, want code %d", network, x, tc.ede)
				}
				for _, s := range tc.text {
					if !strings.Contains(x.ExtraText, s) {
						t.Errorf("EDE text %q lacks %q", x.ExtraText, s)
					}
				}
				lines := e.log.lines(t)
				if len(lines) != 1 {
					t.Fatalf("%d log lines, want 1: %v", len(lines), lines)
				}
				l := lines[0]
				for k, want := range map[string]any{
					"event": "deny", "proto": "dns", "qname": dns.Fqdn(tc.qname), "qtype": "A",
					"reason": tc.reason, "rule": tc.rule, "port": float64(0), "level": "warn",
				} {
					if l[k] != want {
						t.Errorf("log %s = %v, want %v (line %v)", k, l[k], want, l)
					}
				}
				if id, _ := l["id"].(string); id == "" || !strings.HasSuffix(x.ExtraText, "id "+id) {
					t.Errorf("EDE text %q does not end with the log line's id %q", x.ExtraText, id)
				}
				if !strings.HasPrefix(l["client"].(string), "127.0.0.1:") {
					t.Errorf("client %v", l["client"])
				}
			}
			if n := e.up.count(tc.qname+".", dns.TypeA); n != 0 {
				t.Fatalf("a denied name was forwarded upstream %d times", n)
			}
		})
	}
}

func TestDeniedWithoutEDNSHasNoOPT(t *testing.T) {
	e := newEnv(t, allowList)
	m := new(dns.Msg)
	m.SetQuestion("other.example.org.", dns.TypeA)
	r := e.exchange("udp", m)
	if r.Rcode != dns.RcodeNameError || r.IsEdns0() != nil {
		t.Fatalf("rcode %s, OPT %v: want NXDOMAIN without OPT (RFC 6891 §6.1.1)", dns.RcodeToString[r.Rcode], r.IsEdns0())
	}
}

func TestAuditModeAnswersAndLogs(t *testing.T) {
	e := newEnv(t, strings.Replace(allowList, "default: deny", "default: deny\nmode: audit", 1))
	r := e.query("udp", "other.example.org", dns.TypeA)
	if got := addrs(r); !slices.Equal(got, []string{"93.184.216.36"}) {
		t.Fatalf("audit mode answer %v", got)
	}
	lines := e.log.lines(t)
	if len(lines) != 1 || lines[0]["event"] != "audit_deny" {
		t.Fatalf("lines %v", lines)
	}
}

const defaultAllow = `version: 1
default: allow
dns:
  upstreams: UPSTREAMS
`

func TestRebindingAddressesAreStripped(t *testing.T) {
	e := newEnv(t, defaultAllow)
	for _, network := range []string{"udp", "tcp"} {
		e.log.reset()
		r := e.query(network, "rebind.example.com", dns.TypeA)
		if got := addrs(r); !slices.Equal(got, []string{"93.184.216.34"}) {
			t.Fatalf("%s A: %v, want only the public address", network, got)
		}
		x := ede(r)
		if x == nil || x.InfoCode != dns.ExtendedErrorCodeBlocked ||
			!strings.Contains(x.ExtraText, "10.0.0.5 (guard_private)") ||
			!strings.Contains(x.ExtraText, "169.254.169.254 (guard_metadata)") {
			t.Fatalf("EDE %v", x)
		}
		lines := e.log.lines(t)
		if len(lines) != 1 {
			t.Fatalf("%d lines, want one per query: %v", len(lines), lines)
		}
		l := lines[0]
		if l["event"] != "deny" || l["ip"] != "10.0.0.5" || l["reason"] != "guard_private" ||
			l["host"] != "rebind.example.com" || !strings.Contains(l["error"].(string), "169.254.169.254") {
			t.Fatalf("line %v", l)
		}
	}

	for _, a := range []string{"10.0.0.5", "169.254.169.254"} {
		if got := e.names.Names(loopback, netip.MustParseAddr(a)); got != nil {
			t.Fatalf("stripped address %s remembered as %q", a, got)
		}
	}

	r := e.query("udp", "rebind.example.com", dns.TypeAAAA)
	if got := addrs(r); !slices.Equal(got, []string{"2606:2800:220:1:248:1893:25c8:1946"}) {
		t.Fatalf("AAAA: %v", got)
	}

	r = e.query("udp", "rebind.example.com", dns.TypeHTTPS)
	if len(r.Answer) != 1 {
		t.Fatalf("HTTPS answer %v", r.Answer)
	}
	h := r.Answer[0].String()
	if !strings.Contains(h, `ipv4hint="93.184.216.34"`) || strings.Contains(h, "10.0.0.5") ||
		strings.Contains(h, "ipv6hint") || !strings.Contains(h, `alpn="h2"`) {
		t.Fatalf("HTTPS record %s: want the guarded hints removed, the rest kept", h)
	}
	r = e.query("udp", "ech.example.com", dns.TypeHTTPS)
	if len(r.Answer) != 1 {
		t.Fatalf("HTTPS answer %v", r.Answer)
	}
	if h := r.Answer[0].String(); strings.Contains(h, "ech=") || !strings.Contains(h, `alpn="h2"`) || !strings.Contains(h, `ipv4hint="93.184.216.34"`) {
		t.Fatalf("HTTPS record %s: want the ECH key removed, the rest kept", h)
	}
	// The cached upstream answer is not modified by the filtering.
	e.pol.Store(testPolicy(t, defaultAllow+"allow:\n  - cidr: 10.0.0.0/8\n  - cidr: fd00::/8\n", e.up.addr))
	r = e.query("udp", "rebind.example.com", dns.TypeHTTPS)
	if h := r.Answer[0].String(); !strings.Contains(h, "10.0.0.5") || !strings.Contains(h, "fd00::5") {
		t.Fatalf("after allowing 10/8 and fd00::/8: %s", h)
	}
	if n := e.up.count("rebind.example.com.", dns.TypeHTTPS); n != 1 {
		t.Fatalf("upstream asked %d times, want 1 (cached)", n)
	}

	r = e.query("udp", "allprivate.example.com", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || ede(r) == nil {
		t.Fatalf("all addresses guarded: rcode %s answer %v EDE %v, want an empty NOERROR with EDE", dns.RcodeToString[r.Rcode], r.Answer, ede(r))
	}
}

func TestAnExactAllowRuleLiftsTheGuard(t *testing.T) {
	e := newEnv(t, defaultAllow+"allow:\n  - host: rebind.example.com\n")
	r := e.query("udp", "rebind.example.com", dns.TypeA)
	// The exact rule lifts the private guard, never the metadata one.
	if got := addrs(r); !slices.Equal(got, []string{"10.0.0.5", "93.184.216.34"}) {
		t.Fatalf("answer %v", got)
	}
}

func TestCNAMEChains(t *testing.T) {
	e := newEnv(t, allowList)
	t.Run("a CNAME to a denied name is blocked and cites the target", func(t *testing.T) {
		e.log.reset()
		r := e.query("udp", "alias.example.com", dns.TypeA)
		if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			t.Fatalf("rcode %s answer %v", dns.RcodeToString[r.Rcode], r.Answer)
		}
		x := ede(r)
		if x == nil || !strings.Contains(x.ExtraText, "evil.example.org") ||
			!strings.Contains(x.ExtraText, "alias.example.com. -> evil.example.org.") {
			t.Fatalf("EDE %v", x)
		}
		lines := e.log.lines(t)
		if len(lines) != 1 || lines[0]["host"] != "evil.example.org" || lines[0]["qname"] != "alias.example.com." ||
			lines[0]["reason"] != "no_rule_matched" {
			t.Fatalf("lines %v", lines)
		}
	})
	t.Run("a chain of allowed names is answered whole", func(t *testing.T) {
		r := e.query("udp", "deep.example.com", dns.TypeA)
		if len(r.Answer) != 3 || !slices.Equal(addrs(r), []string{"93.184.216.41"}) {
			t.Fatalf("answer %v", r.Answer)
		}
		if got := e.names.Names(loopback, netip.MustParseAddr("93.184.216.41")); !slices.Equal(got, []string{"deep.example.com"}) {
			t.Fatalf("remembered %q, want the name asked for", got)
		}
	})
	t.Run("a CNAME loop ends the chain without hanging", func(t *testing.T) {
		r := e.query("udp", "loop1.example.com", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(addrs(r)) != 0 {
			t.Fatalf("rcode %s answer %v", dns.RcodeToString[r.Rcode], r.Answer)
		}
	})
}

func TestRecordsOffTheChainAreDropped(t *testing.T) {
	e := newEnv(t, defaultAllow)
	smuggled, _ := dns.NewRR("other.example.org. 300 IN A 93.184.216.99")
	glue, _ := dns.NewRR("ns.example.com. 300 IN A 10.0.0.9")
	e.up.extraMu.Lock()
	e.up.extra = []dns.RR{glue}
	e.up.extraMu.Unlock()
	m := new(dns.Msg)
	m.SetQuestion("api.example.com.", dns.TypeA)
	up := new(dns.Msg)
	up.SetReply(m)
	a, _ := dns.NewRR("api.example.com. 300 IN A 93.184.216.34")
	up.Answer = []dns.RR{a, smuggled}
	up.Extra = []dns.RR{glue}
	var f filtered
	e.srv.filter(&f, e.pol.Load(), loopback, "api.example.com", m.Question[0], up, 0)
	if len(f.answer) != 1 || f.answer[0] != a {
		t.Fatalf("answer %v, want only the record on the chain", f.answer)
	}
	if len(f.extra) != 0 {
		t.Fatalf("extra %v: glue with a guarded address kept", f.extra)
	}
	r := e.query("udp", "api.example.com", dns.TypeA)
	for _, rr := range r.Extra {
		if a, ok := rr.(*dns.A); ok {
			t.Fatalf("guarded glue %v reached the client", a)
		}
	}
}

func TestANYIsAnsweredWithHINFO(t *testing.T) {
	e := newEnv(t, allowList)
	r := e.query("udp", "api.example.com", dns.TypeANY)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("rcode %s answer %v", dns.RcodeToString[r.Rcode], r.Answer)
	}
	h, ok := r.Answer[0].(*dns.HINFO)
	if !ok || h.Cpu != "RFC8482" || h.Hdr.Ttl != hinfoTTL {
		t.Fatalf("answer %v, want RFC 8482 HINFO", r.Answer[0])
	}
	if n := e.up.count("api.example.com.", dns.TypeANY); n != 0 {
		t.Fatalf("ANY forwarded upstream")
	}
	if r := e.query("udp", "other.example.org", dns.TypeANY); r.Rcode != dns.RcodeNameError {
		t.Fatalf("ANY for a denied name: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestProtocolErrors(t *testing.T) {
	e := newEnv(t, defaultAllow)
	for _, tc := range []struct {
		name  string
		msg   func() *dns.Msg
		rcode int
	}{
		{"a zone transfer is not implemented", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetQuestion("example.com.", dns.TypeAXFR)
			return m
		}, dns.RcodeNotImplemented},
		{"class CHAOS is refused", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetQuestion("version.bind.", dns.TypeTXT)
			m.Question[0].Qclass = dns.ClassCHAOS
			return m
		}, dns.RcodeRefused},
		{"an update is not implemented", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetUpdate("example.com.")
			return m
		}, dns.RcodeNotImplemented},
		{"EDNS version 1 gets BADVERS", func() *dns.Msg {
			m := new(dns.Msg)
			m.SetQuestion("api.example.com.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
			return m
		}, dns.RcodeBadVers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				r := e.exchange(network, tc.msg())
				if r.Rcode != tc.rcode {
					t.Fatalf("%s: rcode %s, want %s", network, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
			}
		})
	}

	t.Run("garbage and two questions do not stop the server", func(t *testing.T) {
		c, err := net.Dial("udp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		two := new(dns.Msg)
		two.SetQuestion("api.example.com.", dns.TypeA)
		two.Question = append(two.Question, two.Question[0])
		wire, _ := two.Pack()
		for _, b := range [][]byte{{0x12}, []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"), wire} {
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 512)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no FORMERR for two questions: %v", err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil || r.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply %v %v, want FORMERR", r, err)
		}
		if r := e.query("udp", "api.example.com", dns.TypeA); len(r.Answer) == 0 {
			t.Fatalf("server stopped answering")
		}
	})
}

func TestCache(t *testing.T) {
	text := allowList + "  min_ttl: 0s\n  max_ttl: 1h\n"
	e := newEnv(t, text)
	t0 := time.Now()
	e.setClock(t0)

	t.Run("a second query is answered from the cache with a lower TTL", func(t *testing.T) {
		r := e.query("udp", "api.example.com", dns.TypeA)
		if r.Answer[0].Header().Ttl != 300 {
			t.Fatalf("first TTL %d", r.Answer[0].Header().Ttl)
		}
		e.setClock(t0.Add(100 * time.Second))
		r = e.query("tcp", "api.example.com", dns.TypeA)
		if r.Answer[0].Header().Ttl != 200 {
			t.Fatalf("cached TTL %d, want 200", r.Answer[0].Header().Ttl)
		}
		if n := e.up.count("api.example.com.", dns.TypeA); n != 1 {
			t.Fatalf("upstream asked %d times, want 1", n)
		}
	})
	t.Run("an expired answer is asked again", func(t *testing.T) {
		e.setClock(t0)
		e.query("udp", "short.example.com", dns.TypeA)
		e.setClock(t0.Add(4 * time.Second))
		e.query("udp", "short.example.com", dns.TypeA)
		if n := e.up.count("short.example.com.", dns.TypeA); n != 1 {
			t.Fatalf("within TTL: upstream asked %d times", n)
		}
		e.setClock(t0.Add(5 * time.Second))
		r := e.query("udp", "short.example.com", dns.TypeA)
		if n := e.up.count("short.example.com.", dns.TypeA); n != 2 {
			t.Fatalf("after TTL: upstream asked %d times, want 2", n)
		}
		if r.Answer[0].Header().Ttl != 5 {
			t.Fatalf("fresh TTL %d", r.Answer[0].Header().Ttl)
		}
	})
	t.Run("NXDOMAIN is cached for the SOA minimum", func(t *testing.T) {
		e.setClock(t0)
		r := e.query("udp", "nx.example.com", dns.TypeA)
		if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
			t.Fatalf("rcode %s ns %v", dns.RcodeToString[r.Rcode], r.Ns)
		}
		e.setClock(t0.Add(59 * time.Second))
		e.query("udp", "nx.example.com", dns.TypeA)
		if n := e.up.count("nx.example.com.", dns.TypeA); n != 1 {
			t.Fatalf("upstream asked %d times within the SOA minimum 60s", n)
		}
		e.setClock(t0.Add(60 * time.Second))
		e.query("udp", "nx.example.com", dns.TypeA)
		if n := e.up.count("nx.example.com.", dns.TypeA); n != 2 {
			t.Fatalf("upstream asked %d times after 60s, want 2", n)
		}
	})
	t.Run("NODATA is cached too", func(t *testing.T) {
		e.query("udp", "short.example.com", dns.TypeAAAA)
		e.query("udp", "short.example.com", dns.TypeAAAA)
		if n := e.up.count("short.example.com.", dns.TypeAAAA); n != 1 {
			t.Fatalf("upstream asked %d times", n)
		}
	})
	t.Run("the DO bit is part of the key", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("api.example.com.", dns.TypeMX)
		m.SetEdns0(1232, true)
		e.exchange("udp", m)
		e.query("udp", "api.example.com", dns.TypeMX)
		if n := e.up.count("api.example.com.", dns.TypeMX); n != 2 {
			t.Fatalf("upstream asked %d times, want once per DO value", n)
		}
	})
	t.Run("a policy reload applies to cached names", func(t *testing.T) {
		e.setClock(t0)
		e.query("udp", "api.example.com", dns.TypeA)
		old := e.pol.Load()
		e.pol.Store(testPolicy(t, strings.Replace(allowList, "deny:\n", "deny:\n  - host: api.example.com\n", 1), e.up.addr))
		defer e.pol.Store(old)
		if r := e.query("udp", "api.example.com", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("denied after reload, got %s %v", dns.RcodeToString[r.Rcode], r.Answer)
		}
	})
}

func TestCacheTTLClamps(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings string
		qname    string
		wantTTL  uint32
		wantUp   int64 // upstream queries after two client queries 100s apart... see below
	}{
		{"min_ttl raises a short TTL", "  min_ttl: 60s\n", "short.example.com", 60, 1},
		{"max_ttl lowers a long TTL", "  max_ttl: 10s\n", "api.example.com", 10, 2},
		{"cache_size 0 turns the cache off", "  cache_size: 0\n", "api.example.com", 300, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, allowList+tc.settings)
			t0 := time.Now()
			e.setClock(t0)
			r := e.query("udp", tc.qname, dns.TypeA)
			if ttl := r.Answer[0].Header().Ttl; ttl != tc.wantTTL {
				t.Fatalf("TTL %d, want %d", ttl, tc.wantTTL)
			}
			e.setClock(t0.Add(30 * time.Second))
			e.query("udp", tc.qname, dns.TypeA)
			if n := e.up.count(tc.qname+".", dns.TypeA); n != tc.wantUp {
				t.Fatalf("upstream asked %d times, want %d", n, tc.wantUp)
			}
		})
	}
}

func TestUpstreamFaults(t *testing.T) {
	t.Run("a silent upstream gives SERVFAIL within dns.timeout", func(t *testing.T) {
		e := newEnv(t, "version: 1\ndefault: allow\ndns:\n  upstreams: [\""+silentUpstream(t)+"\"]\n  timeout: 300ms\n")
		start := time.Now()
		r := e.query("udp", "api.example.com", dns.TypeA)
		took := time.Since(start)
		if r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
		}
		if took > 1500*time.Millisecond {
			t.Fatalf("SERVFAIL after %s, bound is 300ms", took)
		}
		if x := ede(r); x == nil || x.InfoCode != dns.ExtendedErrorCodeNoReachableAuthority || !strings.Contains(x.ExtraText, "300ms") {
			t.Fatalf("EDE %v", x)
		}
	})
	t.Run("every upstream down gives SERVFAIL at once", func(t *testing.T) {
		e := newEnv(t, "version: 1\ndefault: allow\ndns:\n  upstreams: [\""+testnet.ClosedUDP(t)+"\", \""+testnet.ClosedUDP(t)+"\"]\n")
		start := time.Now()
		r := e.query("tcp", "api.example.com", dns.TypeA)
		if r.Rcode != dns.RcodeServerFailure || time.Since(start) > 1500*time.Millisecond {
			t.Fatalf("rcode %s after %s", dns.RcodeToString[r.Rcode], time.Since(start))
		}
	})
	t.Run("failover to the next upstream, which is then asked first", func(t *testing.T) {
		up := newUpstream(t)
		e := newEnv(t, "version: 1\ndefault: allow\ndns:\n  cache_size: 0\n  timeout: 1s\n  upstreams: [\""+
			silentUpstream(t)+"\", \""+testnet.ClosedUDP(t)+"\", \""+up.addr+"\"]\n")
		start := time.Now()
		r := e.query("udp", "api.example.com", dns.TypeA)
		if got := addrs(r); !slices.Equal(got, []string{"93.184.216.34"}) {
			t.Fatalf("answer %v rcode %s", got, dns.RcodeToString[r.Rcode])
		}
		if time.Since(start) > 900*time.Millisecond {
			t.Fatalf("failover took %s", time.Since(start))
		}
		start = time.Now()
		e.query("udp", "api.example.com", dns.TypeA)
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Fatalf("second query took %s: the working upstream was not preferred", d)
		}
		if n := up.count("api.example.com.", dns.TypeA); n != 2 {
			t.Fatalf("working upstream asked %d times", n)
		}
	})
	t.Run("an upstream that is egress itself is skipped", func(t *testing.T) {
		e := newEnv(t, defaultAllow)
		e.pol.Store(testPolicy(t, defaultAllow, e.addr))
		r := e.query("udp", "api.example.com", dns.TypeA)
		if x := ede(r); r.Rcode != dns.RcodeServerFailure || x == nil || !strings.Contains(x.ExtraText, "egress itself") {
			t.Fatalf("rcode %s EDE %v", dns.RcodeToString[r.Rcode], x)
		}
	})
}

func TestTruncation(t *testing.T) {
	e := newEnv(t, defaultAllow)
	t.Run("a big answer over UDP is truncated with TC, then complete over TCP", func(t *testing.T) {
		r := e.query("udp", big, dns.TypeTXT)
		if !r.Truncated || len(r.Answer) == 0 || len(r.Answer) >= 40 {
			t.Fatalf("UDP: TC %v, %d records", r.Truncated, len(r.Answer))
		}
		r.Compress = true // as it came on the wire
		if wire, _ := r.Pack(); len(wire) > 1232 {
			t.Fatalf("UDP answer of %d bytes exceeds the client's 1232", len(wire))
		}
		r = e.query("tcp", big, dns.TypeTXT)
		if r.Truncated || len(r.Answer) != 40 {
			t.Fatalf("TCP: TC %v, %d records", r.Truncated, len(r.Answer))
		}
	})
	t.Run("without EDNS the answer fits in 512 bytes", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion(big, dns.TypeTXT)
		r := e.exchange("udp", m)
		r.Compress = true
		if wire, _ := r.Pack(); !r.Truncated || len(wire) > 512 {
			t.Fatalf("TC %v, %d bytes", r.Truncated, len(wire))
		}
	})
	t.Run("the upstream's truncated answer was fetched again over TCP", func(t *testing.T) {
		if n := e.up.count(big, dns.TypeTXT); n != 2 {
			t.Fatalf("upstream asked %d times, want 2 (UDP truncated, then TCP), then the cache", n)
		}
	})
	t.Run("miekg/dns's client falls back to TCP by itself", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion(big, dns.TypeTXT)
		m.SetEdns0(1232, false)
		c := dns.Client{Net: "udp", Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, e.addr)
		if err != nil || !r.Truncated {
			t.Fatalf("UDP: %v TC=%v", err, r != nil && r.Truncated)
		}
		c.Net = "tcp"
		r, _, err = c.Exchange(m, e.addr)
		if err != nil || len(r.Answer) != 40 {
			t.Fatalf("TCP retry: %v", err)
		}
	})
}

func TestDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig not installed (apt-get install -y dnsutils)")
	}
	e := newEnv(t, allowList)
	host, port, _ := net.SplitHostPort(e.addr)
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, dig, append([]string{"@" + host, "-p", port, "+tries=1", "+time=3"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run("+short", "api.example.com", "A"); strings.TrimSpace(out) != "93.184.216.34" {
		t.Fatalf("dig +short: %q", out)
	}
	out := run("other.example.org", "A")
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "EDE: 15 (Blocked)") || !strings.Contains(out, "no rule matched") {
		t.Fatalf("dig on a denied name:\n%s", out)
	}
	out = run(strings.TrimSuffix(big, "."), "TXT")
	if !strings.Contains(out, "Truncated, retrying in TCP mode") || strings.Count(out, "IN\tTXT") < 40 {
		t.Fatalf("dig on a big answer:\n%s", out)
	}
}

func TestServesIPv6AndAnyPacketConn(t *testing.T) {
	up := newUpstream(t)
	p := testPolicy(t, allowList, up.addr)
	s := &Server{Policy: func() *policy.Policy { return p }}
	pc6, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	// A PacketConn that is not a *net.UDPConn takes the generic path.
	pc4, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wrapped := struct{ net.PacketConn }{pc4}
	served := make(chan error, 2)
	go func() { served <- s.Serve(pc6, nil) }()
	go func() { served <- s.Serve(wrapped, nil) }()
	for _, addr := range []string{pc6.LocalAddr().String(), pc4.LocalAddr().String()} {
		m := new(dns.Msg)
		m.SetQuestion("api.example.com.", dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
		if err != nil || !slices.Equal(addrs(r), []string{"93.184.216.34"}) {
			t.Fatalf("%s: %v %v", addr, r, err)
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	}
}

func TestAPanicIsAnsweredSERVFAILAndLogged(t *testing.T) {
	e := newEnv(t, allowList)
	e.panics.Store(2)
	for _, network := range []string{"udp", "tcp"} {
		if r := e.query(network, "api.example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s: rcode %s", network, dns.RcodeToString[r.Rcode])
		}
	}
	if r := e.query("udp", "api.example.com", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("not serving after a panic: %v", r)
	}
	n := 0
	for _, l := range e.log.lines(t) {
		if l["message"] == "dns query handler panicked" && l["panic"] == "boom" && strings.Contains(l["stack"].(string), "(*Server).start") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d panic lines, want 2", n)
	}
}

func TestCachedAnswersAreDecidedPerClientPolicyAndAge(t *testing.T) {
	const perClient = `version: 1
default: deny
allow:
  - host: api.example.com
clients:
  - name: other
    sources: [127.0.0.2/32]
    default: deny
    allow:
      - host: api.example.com
    deny:
      - cidr: 93.184.216.34
dns:
  upstreams: UPSTREAMS
`
	e := newEnv(t, perClient)
	t0 := time.Now()
	e.setClock(t0)
	from := func(client string) *dns.Msg {
		t.Helper()
		c := dns.Client{Net: "udp", Timeout: 5 * time.Second,
			Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(client)}}}
		m := new(dns.Msg)
		m.SetQuestion("api.example.com.", dns.TypeA)
		m.SetEdns0(1232, false)
		r, _, err := c.Exchange(m, e.addr)
		if err != nil {
			t.Fatalf("from %s: %v", client, err)
		}
		return r
	}
	for i, c := range []struct {
		client string
		want   []string
		ttl    uint32
		step   func()
	}{
		{"127.0.0.1", []string{"93.184.216.34"}, 300, nil},
		{"127.0.0.1", []string{"93.184.216.34"}, 300, nil},
		{"127.0.0.2", nil, 0, nil}, // the same cached answer, another client's rules
		{"127.0.0.1", []string{"93.184.216.34"}, 290, func() { e.setClock(t0.Add(10 * time.Second)) }},
		{"127.0.0.1", nil, 0, func() {
			denied := strings.Replace(perClient, "clients:", "deny:\n  - cidr: 93.184.216.34\nclients:", 1)
			e.pol.Store(testPolicy(t, denied, e.up.addr))
		}},
	} {
		if c.step != nil {
			c.step()
		}
		r := from(c.client)
		if got := addrs(r); !slices.Equal(got, c.want) {
			t.Fatalf("answer %d to %s: %v, want %v", i, c.client, got, c.want)
		}
		if len(c.want) > 0 && r.Answer[0].Header().Ttl != c.ttl {
			t.Fatalf("answer %d: TTL %d, want %d", i, r.Answer[0].Header().Ttl, c.ttl)
		}
		if len(c.want) == 0 && ede(r) == nil {
			t.Fatalf("answer %d to %s: the address was removed without EDE", i, c.client)
		}
	}
	if n := e.up.count("api.example.com.", dns.TypeA); n != 1 {
		t.Fatalf("upstream asked %d times, want 1 (every answer from the cache)", n)
	}
	if n := e.told.Load(); n != 3 {
		t.Fatalf("Names told %d times, want 3: once for each answer that gave the address", n)
	}
}

func TestConcurrentUncachedQueriesOverUDP(t *testing.T) {
	e := newEnv(t, allowList+"  cache_size: 0\n")
	names := []string{"api.example.com.", "www.example.com.", "rebind.example.com.", "other.example.org."}
	want := map[string][]string{
		"api.example.com.":    {"93.184.216.34"},
		"www.example.com.":    {"93.184.216.41"},
		"rebind.example.com.": {"93.184.216.34"},
		"other.example.org.":  nil, // denied: NXDOMAIN, never forwarded
	}
	errs := make(chan error, 32)
	done := make(chan struct{})
	for g := range 32 {
		go func() {
			defer func() { done <- struct{}{} }()
			conn, err := dns.Dial("udp", e.addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			for i := range 10 {
				name := names[(g+i)%len(names)]
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				m.SetEdns0(1232, false)
				if err := conn.WriteMsg(m); err != nil {
					errs <- err
					return
				}
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				r, err := conn.ReadMsg()
				if err == nil && (r.Id != m.Id || r.Question[0].Name != name || !slices.Equal(addrs(r), want[name])) {
					err = errors.New("asked " + name + ", got " + r.String())
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 32 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 320 queries: 80 denied by name, 240 forwarded and answered with one
	// allowed address each.
	if n := e.told.Load(); n != 240 {
		t.Fatalf("Names told %d addresses, want 240", n)
	}
}
