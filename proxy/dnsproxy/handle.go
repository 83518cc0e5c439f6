package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/resolve"
)

var _ dns.Handler = (*Server)(nil)

// hinfoTTL is the TTL RFC 8482 §4.2 suggests for the synthesised HINFO.
const hinfoTTL = 3789

// ServeDNS answers one query; it implements dns.Handler (Serve uses it
// for TCP). A panic is logged with its stack and answered SERVFAIL; the
// server keeps serving.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	ra := w.RemoteAddr()
	_, tcp := ra.(*net.TCPAddr)
	client := addrPortOf(ra)
	var resp *dns.Msg
	func() {
		defer s.recoverPanic(client, req, &resp)
		resp = s.handle(context.Background(), client, req, tcp)
	}()
	if resp != nil {
		_ = w.WriteMsg(resp)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// handle answers req from client; nil means no answer (req is a
// response, never answered: that would make egress a reflector).
func (s *Server) handle(ctx context.Context, client netip.AddrPort, req *dns.Msg, tcp bool) *dns.Msg {
	m, qr, ok := s.start(client, req, tcp)
	if !ok {
		return m
	}
	up, age, err := s.res().Exchange(ctx, qr.p.DNS, qr.q, qr.do(), req.CheckingDisabled)
	return s.finish(&qr, up, age, err, nil)
}

// query is a query whose name the policy allowed, waiting for the
// upstream answer: what finish needs, decided once (e.Decision).
type query struct {
	req   *dns.Msg
	opt   *dns.OPT
	tcp   bool
	q     dns.Question
	p     *policy.Policy // the policy that decided, and decides the answer
	caddr netip.Addr
	e     eventlog.Entry
}

func (qr *query) do() bool { return qr.opt != nil && qr.opt.Do() }

// start checks req and decides on its name: it returns the answer when
// that is all it takes (nil for a response: never answered, that would
// make egress a reflector), else the query to finish with the upstream
// answer and true. (A value, not a pointer: a cached answer then costs
// no allocation for it.)
func (s *Server) start(client netip.AddrPort, req *dns.Msg, tcp bool) (*dns.Msg, query, bool) {
	if req.Response {
		return nil, query{}, false
	}
	opt := req.IsEdns0()
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return reply(req, opt, tcp, dns.RcodeNotImplemented), query{}, false
	case len(req.Question) != 1:
		return reply(req, opt, tcp, dns.RcodeFormatError), query{}, false
	case opt != nil && opt.Version() != 0:
		return reply(req, opt, tcp, dns.RcodeBadVers), query{}, false // RFC 6891 §6.1.3
	}
	q := req.Question[0]
	switch {
	case q.Qclass != dns.ClassINET:
		return reply(req, opt, tcp, dns.RcodeRefused), query{}, false
	case q.Qtype == dns.TypeNone || q.Qtype == dns.TypeOPT || q.Qtype >= 128 && q.Qtype != dns.TypeANY:
		// Zone transfers (AXFR, IXFR), MAILA/MAILB, TKEY, TSIG and the
		// other meta and question types of RFC 6895 §3.1.
		return reply(req, opt, tcp, dns.RcodeNotImplemented), query{}, false
	}

	p := s.policy()
	caddr := client.Addr().Unmap()
	e := eventlog.Entry{
		Proto: eventlog.ProtoDNS, Client: client,
		QName: q.Name, QType: resolve.TypeString(q.Qtype),
	}
	d := p.Decide(policy.Request{Host: q.Name, Client: caddr})
	e.Decision = d
	if !d.Allowed() {
		e.ID = eventlog.NewID()
		s.Events.Record(e)
		return blocked(req, opt, tcp, p, d, e.ID, ""), query{}, false
	}
	if q.Qtype == dns.TypeANY {
		s.record(e)
		m := reply(req, opt, tcp, dns.RcodeSuccess)
		m.Answer = []dns.RR{&dns.HINFO{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: hinfoTTL},
			Cpu: "RFC8482",
		}}
		return m, query{}, false
	}
	return nil, query{req: req, opt: opt, tcp: tcp, q: q, p: p, caddr: caddr, e: e}, true
}

// finish answers qr with the upstream answer up (age seconds in the
// cache; memo kept with it, if any), or the error of asking for it: it
// decides on every name of the CNAME chain and every address, with the
// policy that decided on the name, tells Names the addresses given, and
// records the query's line.
func (s *Server) finish(qr *query, up *dns.Msg, age uint32, err error, memo *resolve.Memo) *dns.Msg {
	req, opt, tcp, p, e := qr.req, qr.opt, qr.tcp, qr.p, qr.e
	if err != nil {
		e.ID = eventlog.NewID()
		e.Err = err
		s.Events.Record(e)
		s.warnUpstream(qr.q, err)
		m := reply(req, opt, tcp, dns.RcodeServerFailure)
		if opt != nil {
			code := dns.ExtendedErrorCodeNoReachableAuthority
			if errors.Is(err, resolve.ErrNoUpstream) {
				code = dns.ExtendedErrorCodeNotReady
			}
			setEDE(m, code, "egress: "+err.Error()+"; id "+e.ID)
		}
		return m
	}

	var fv filtered
	f := s.filterCached(&fv, p, qr.caddr, qr.e.Decision.Host, qr.q, up, age, memo)
	if s.Names != nil {
		for _, r := range f.remember {
			s.Names.Remember(qr.caddr, r.host, r.addr, r.ttl)
		}
	}
	switch {
	case f.chainDenied != nil:
		e.ID = eventlog.NewID()
		e.Decision = *f.chainDenied
		e.Err = fmt.Errorf("cname chain %s", strings.Join(f.chain, " -> "))
		s.Events.Record(e)
		if !f.chainDenied.Allowed() {
			return blocked(req, opt, tcp, p, *f.chainDenied, e.ID, strings.Join(f.chain, " -> "))
		}
	case len(f.removed) > 0:
		e.ID = eventlog.NewID()
		e.Decision = f.removed[0]
		e.Err = errors.New(f.removedText())
		s.Events.Record(e)
	default:
		s.record(e)
	}

	m := reply(req, opt, tcp, up.Rcode)
	m.Answer, m.Ns = f.answer, f.ns
	m.Extra = append(slices.Clip(f.extra), m.Extra...) // m.Extra: the OPT record, if any; f is shared
	m.AuthenticatedData = up.AuthenticatedData && !f.changed && (req.AuthenticatedData || opt != nil && opt.Do())
	if opt != nil && f.enforced > 0 {
		setEDE(m, dns.ExtendedErrorCodeBlocked, "egress: "+f.removedText()+"; id "+e.ID)
	}
	fit(m, opt, tcp)
	return m
}

// record records an allowed query, with a decision id only if someone
// will see it: crypto/rand is a visible part of a cached answer's cost.
func (s *Server) record(e eventlog.Entry) {
	if s.Events == nil {
		return
	}
	if s.Events.LogAllowed || s.Events.Observe != nil {
		e.ID = eventlog.NewID()
	}
	s.Events.Record(e)
}

// warnUpstream logs an upstream failure, at most once a second with the
// number of failures left unlogged since: when the upstreams are down,
// every query fails and the canonical lines already carry the error.
func (s *Server) warnUpstream(q dns.Question, err error) {
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	if now-last < int64(time.Second) || !s.lastWarn.CompareAndSwap(last, now) {
		s.suppressed.Add(1)
		return
	}
	s.Logger.Warn().Err(err).Str(eventlog.FieldQName, q.Name).
		Int64("suppressed", s.suppressed.Swap(0)).Msg("dns upstream failed")
}

// reply starts the answer to req: its id, question, RD and CD bits, RA
// set, the rcode, and an OPT record if the query had one (RFC 6891 §6.1.1:
// only then).
func reply(req *dns.Msg, opt *dns.OPT, tcp bool, rcode int) *dns.Msg {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{
		Id: req.Id, Response: true, Opcode: req.Opcode, RecursionAvailable: true, Rcode: rcode,
	}}
	if req.Opcode == dns.OpcodeQuery {
		m.RecursionDesired, m.CheckingDisabled = req.RecursionDesired, req.CheckingDisabled
	}
	if len(req.Question) > 0 {
		m.Question = req.Question[:1:1] // shared: neither message is changed after
	}
	if opt != nil {
		m.SetEdns0(udpBufSize, opt.Do())
	}
	return m
}

// fit truncates m to what the client can receive: its EDNS(0) buffer
// size, or 512 bytes without EDNS(0), over UDP; 64 KiB over TCP. Records
// that do not fit are dropped and TC set, so that the client asks again
// over TCP (RFC 7766).
func fit(m *dns.Msg, opt *dns.OPT, tcp bool) {
	size := dns.MinMsgSize
	switch {
	case tcp:
		size = dns.MaxMsgSize
	case opt != nil && int(opt.UDPSize()) > size:
		size = int(opt.UDPSize())
	}
	m.Truncate(size)
}

// setEDE adds an RFC 8914 Extended DNS Error to m's OPT record.
func setEDE(m *dns.Msg, code uint16, text string) {
	o := m.IsEdns0()
	if o == nil {
		return
	}
	o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: text})
}

// blocked is the answer to a refused name: the policy's dns.blocked
// answer with EDE 15 (Blocked), or REFUSED with EDE 18 (Prohibited) for a
// client outside allow_from. chain, if set, is the CNAME chain whose last
// name d refused.
func blocked(req *dns.Msg, opt *dns.OPT, tcp bool, p *policy.Policy, d policy.Decision, id, chain string) *dns.Msg {
	rcode, code := dns.RcodeNameError, dns.ExtendedErrorCodeBlocked
	switch {
	case d.Reason == policy.ReasonClientRefused:
		rcode, code = dns.RcodeRefused, dns.ExtendedErrorCodeProhibited
	case p.DNS.Blocked == "refused":
		rcode = dns.RcodeRefused
	case p.DNS.Blocked == "empty":
		rcode = dns.RcodeSuccess
	}
	m := reply(req, opt, tcp, rcode)
	if opt != nil {
		setEDE(m, code, explain(d, id, chain))
	}
	fit(m, opt, tcp)
	return m
}

// explain is the EDE text of a refusal: what refused it (the rule, as
// FILE:LINE and as written, or "no rule matched"), the reason code, how to
// allow it, and the decision id of the log line.
func explain(d policy.Decision, id, chain string) string {
	var b strings.Builder
	b.WriteString("egress: ")
	if d.Host != "" {
		b.WriteString(d.Host)
		b.WriteString(" ")
	}
	if chain != "" {
		b.WriteString("(cname chain ")
		b.WriteString(chain)
		b.WriteString(") ")
	}
	switch {
	case d.Reason == policy.ReasonClientRefused:
		b.WriteString("refused: this client is not in allow_from")
	case d.Rule != nil:
		b.WriteString("denied by rule ")
		b.WriteString(d.Rule.Location())
		b.WriteString(" ")
		b.WriteString(d.Rule.Text)
	case d.Reason == policy.ReasonNoRuleMatched:
		b.WriteString("denied: no rule matched (default: deny)")
	default:
		b.WriteString("denied")
	}
	b.WriteString(" (")
	b.WriteString(string(d.Reason))
	b.WriteString(")")
	if d.Rule != nil && d.Rule.Note != "" {
		b.WriteString("; why: ")
		b.WriteString(d.Rule.Note)
	}
	if d.Hint != "" {
		b.WriteString("; to allow: ")
		b.WriteString(lookupHint(d.Hint))
	}
	b.WriteString("; id ")
	b.WriteString(id)
	return b.String()
}

// lookupHint narrows the hint of a lookup's refusal to what the lookup
// asked: a query names no port, and the policy's hint for port 0, a rule
// without ports, would allow every port (issue 21). The rule is given
// with a PORT for the operator to fill in.
func lookupHint(h string) string {
	i := strings.LastIndexByte(h, '}')
	if !strings.HasPrefix(h, "- {") || i < 0 || strings.Contains(h, "ports:") {
		return h
	}
	return h[:i] + ", ports: [PORT]}" + h[i+1:] + " (PORT: the port the client connects to; a lookup names none)"
}
