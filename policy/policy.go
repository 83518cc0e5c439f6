// Package policy loads, validates and evaluates egress policies.
//
// It is pure: text in, compiled *Policy out; Request in, Decision out. It
// opens no sockets, starts no goroutines, writes no logs and reads no files
// (callers pass the file's bytes and name). The data paths in proxy/... ask it
// for decisions; cmd/egress wires files, flags and listeners to it.
//
// A decision on a connection is made in two steps. Decide with a name and no
// IP answers whether the name could be reached at all (a Deny is final; an
// Allow means "resolve it and decide again for each address"). Decide with the
// IP that is about to be dialled (and the name it was resolved from, if any)
// gives the final answer, guards included. Callers dial only an IP literal
// that got an Allow, so a name cannot be rebound to a guarded address between
// the check and the dial.
package policy

import (
	"net/netip"
	"strconv"
	"time"
)

// Verdict is what the caller must do. The zero value denies.
type Verdict uint8

const (
	Deny Verdict = iota
	Allow
)

func (v Verdict) String() string {
	if v == Allow {
		return "allow"
	}
	return "deny"
}

// Mode says whether the policy enforces its denials or only reports them.
type Mode uint8

const (
	Enforce Mode = iota
	Audit        // every would-be denial is reported and let through
)

func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// Reason is a stable, greppable code for why a decision was made. Operators
// alert on these strings: never rename one.
type Reason string

const (
	ReasonAllowedByRule Reason = "allowed_by_rule" // an allow rule matched
	ReasonDefaultAllow  Reason = "default_allow"   // no rule matched, default: allow
	ReasonNoRuleMatched Reason = "no_rule_matched" // no rule matched, default: deny
	ReasonDeniedByRule  Reason = "denied_by_rule"  // a deny rule matched
	ReasonInvalidHost   Reason = "invalid_host"    // the name cannot be a hostname
	ReasonClientRefused Reason = "client_refused"  // the source is outside allow_from
	// ReasonPerAddress is step 1's Allow when no name rule decided: resolve
	// the name and decide on each address (a cidr rule may allow one).
	ReasonPerAddress Reason = "decide_per_address"

	// Guards: addresses and names refused unless an allow rule names them
	// explicitly (see Decide).
	ReasonGuardMetadata  Reason = "guard_metadata"   // cloud metadata services
	ReasonGuardLoopback  Reason = "guard_loopback"   // 127.0.0.0/8, ::1
	ReasonGuardPrivate   Reason = "guard_private"    // RFC 1918, fc00::/7
	ReasonGuardLinkLocal Reason = "guard_link_local" // 169.254.0.0/16, fe80::/10
	ReasonGuardCGNAT     Reason = "guard_cgnat"      // 100.64.0.0/10
	ReasonGuardMulticast Reason = "guard_multicast"  // 224.0.0.0/4, ff00::/8
	ReasonGuardSpecial   Reason = "guard_special"    // other IANA special-purpose, not globally reachable
)

// Reasons of refusals and closes that Decide does not make itself: a data
// path or egress run decides them from what it sees on the wire or in
// the system. They live here, beside the decision reasons, so that every
// code an operator can find in the log is in one list.
const (
	// ReasonRevoked: a tunnel closed because a reloaded policy refuses
	// the destination it was opened to; the line carries the new
	// decision's rule and hint.
	ReasonRevoked Reason = "revoked"
	// ReasonSNIMismatch: the TLS ClientHello inside a CONNECT tunnel
	// names a server the policy refuses, other than the one the tunnel
	// was opened for (domain fronting).
	ReasonSNIMismatch Reason = "sni_mismatch"
	// ReasonNameMismatch: on the transparent path, the TLS SNI or HTTP
	// Host names a host the original destination address does not
	// belong to.
	ReasonNameMismatch Reason = "name_mismatch"
	// ReasonNotRedirected: the connection reached the transparent
	// listener directly (its original destination is the listener
	// itself), so there is nowhere to forward it.
	ReasonNotRedirected Reason = "not_redirected"
	// ReasonLoop: a connection to one of egress's own listeners, which
	// would make the proxy talk to itself.
	ReasonLoop Reason = "loop"
	// ReasonConnectFilter: the connect filter refused a connection the
	// transparent listener would have let through (the two disagree: a
	// bug to report).
	ReasonConnectFilter Reason = "connect_filter"
	// ReasonUnixSocket: egress run refused a connect() to a socket file
	// outside run.allow_unix.
	ReasonUnixSocket Reason = "unix_socket_refused"
	// ReasonUnixDatagram: egress run did not let the command create a
	// unix datagram socket, which could send to any socket file.
	ReasonUnixDatagram Reason = "unix_dgram_refused"
	// ReasonSandboxRefused: egress run's sandbox refused a packet of a
	// protocol that does not go through egress (UDP other than DNS,
	// ICMP): only TCP and DNS do.
	ReasonSandboxRefused Reason = "sandbox_refused"
	// ReasonTLSUnreadable: the client's first bytes are the start of a
	// TLS handshake, but no complete ClientHello egress can read came
	// within its bound and the inspection time (issue 18). A server might
	// read a name from them that egress never saw: refused (proxy/peek).
	ReasonTLSUnreadable Reason = "tls_unreadable"
	// ReasonTLSECH: the ClientHello carries encrypted_client_hello; the
	// name an ECH server routes on is the encrypted inner one, which
	// egress cannot read. Policy tls.ech: pass lets it through.
	ReasonTLSECH Reason = "tls_ech"
	// ReasonHTTPUnreadable: the bytes started as an HTTP/1 request that
	// net/http's reader could not read, whole, within its bound and time.
	ReasonHTTPUnreadable Reason = "http_unreadable"
	// ReasonHTTP2Preface: HTTP/2 with prior knowledge (h2c), whose
	// requests name their hosts in frames egress does not read, to an
	// address the policy does not allow by itself.
	ReasonHTTP2Preface Reason = "http2_prior_knowledge"
	// ReasonHostMismatch: a plaintext HTTP request inside a CONNECT
	// tunnel names a host the policy refuses at the address dialled
	// (domain fronting over plain HTTP); or a request inside an
	// intercepted TLS connection names a Host other than the one whose
	// certificate egress presented (proxy/intercept).
	ReasonHostMismatch Reason = "host_mismatch"
	// ReasonHTTP2Only: a client of an intercepted destination offered
	// only protocols other than HTTP/1.1 by ALPN (h2-only clients such
	// as gRPC); intercepted hosts are HTTP/1.1.
	ReasonHTTP2Only Reason = "http2_only_client"
	// ReasonClientRejectedCA: the client refused the certificate egress
	// presented for an intercepted destination (unknown CA, bad
	// certificate): it does not trust egress's CA.
	ReasonClientRejectedCA Reason = "client_rejected_ca"
	// ReasonClientTLSFailed: the client's TLS handshake with egress for
	// an intercepted destination failed otherwise.
	ReasonClientTLSFailed Reason = "client_tls_failed"
	// ReasonNoCA: a destination with http: request rules reached a
	// listener that has no interception CA loaded (tls.ca_cert).
	ReasonNoCA Reason = "no_interception_ca"
	// ReasonRequestsUndecided: bytes that are neither TLS nor HTTP/1 to
	// a destination with http: request rules on the transparent
	// listener: there is no request to decide, so it is refused rather
	// than passed undecided.
	ReasonRequestsUndecided Reason = "requests_undecided"
)

// IsGuard reports whether r is one of the guard reasons.
func (r Reason) IsGuard() bool { return len(r) > 6 && r[:6] == "guard_" }

// Request is one destination to decide on. New fields may be added; callers
// use field names.
type Request struct {
	// Host is the name or IP literal the client asked for, in any spelling
	// (Decide normalises it: case, trailing dot, IDN, brackets, zones, every
	// IPv4 literal form). Empty when only the address is known.
	Host string
	// IP is the address about to be dialled, or returned in a DNS answer.
	// The zero Addr means the name is not resolved yet.
	IP netip.Addr
	// Port is the destination port; 0 means "any port" (a DNS lookup asks
	// whether some connection to the name could be allowed).
	Port uint16
	// Client is the source address of the connection or query; it selects
	// the per-client policy (clients:) and is checked against allow_from.
	Client netip.Addr
	// User is the proxy user name (Proxy-Authorization), if any.
	User string
	// Method and Path, when set, ask for a decision on one HTTP request
	// to the destination (Path as sent, without the query: Decide
	// normalises it, see NormalizePath). Empty: a connection decision.
	Method string
	Path   string
}

// PortRange is an inclusive range of ports; a single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

// Rule is one compiled allow or deny rule.
type Rule struct {
	Action Verdict
	// Host is the normal form of the host pattern ("api.example.com",
	// "*.example.com", "access-analyzer.*.amazonaws.com"); empty for a cidr
	// rule.
	Host string
	// Prefix is the cidr; invalid for a host rule.
	Prefix netip.Prefix
	// Ports the rule is limited to; empty means any port.
	Ports []PortRange
	// Note is the rule's reason: text, written for the people it refuses
	// ("sales data stays in the EU: ask #netops"): one line of printable
	// text, at most 200 bytes. Answers and log lines of the refusals the
	// rule decides carry it.
	Note string
	// Where the rule was written and how, for explaining decisions.
	File   string
	Line   int
	Column int
	Text   string // the rule as one line of flow YAML: {host: api.example.com, ports: [443]}
	// HTTP are the rule's request rules (http:): with any, egress
	// terminates TLS to the destination and decides each request (see
	// http.go). Empty: a tunnel.
	HTTP []*RequestRule
	// Inject are the headers set on every request the rule allows over
	// TLS (inject:); their values never appear in any output.
	Inject []*Inject

	// layer is the index of the rule's file among the policy's files (0:
	// the policy's own file, and --allow): between files a deny wins.
	layer int
}

// Location is FILE:LINE, what log lines and 403 bodies cite.
func (r *Rule) Location() string { return location(r.File, r.Line) }

// Decision is the answer to a Request. New fields may be added.
type Decision struct {
	// Verdict is what the caller must do. In audit mode a would-be denial
	// has Verdict Allow and Audit true.
	Verdict Verdict
	// Audit is true when the policy denied but mode: audit let it through.
	Audit bool
	// Reason says why; Rule is the rule that decided (nil for a default, a
	// guard nobody lifted, or an invalid host).
	Reason Reason
	Rule   *Rule
	// Hint is one line of YAML a person can paste under allow: to allow
	// this destination, or advice when no allow rule can (an exact deny
	// rule must be removed). Empty for an allow.
	Hint string
	// Policy is the name of the policy that decided: "default", or the name
	// of the clients: entry that matched the request's client.
	Policy string
	// Source is the file the policy was loaded from ("(built-in)" for the
	// default policy).
	Source string
	// The destination in normal form. Host is "" when only the address
	// was known (or the name was an IP literal); for invalid_host and
	// client_refused it is the name as given.
	Host string
	IP   netip.Addr
	Port uint16

	// Intercept is true when the destination is allowed and its requests
	// are decided one by one: the deciding rule has http:, or a deny
	// rule with http: matches it (then it is intercepted even where the
	// allow rule alone would tunnel).
	Intercept bool
	// For a request decision (Request.Method set): the method, the path
	// in normal form (as given when it was refused), the request rule
	// that decided (nil when none did), and the headers to set on an
	// allowed request, over TLS only (nil in audit mode and for a
	// denial). Only the deciding rule's inject: applies.
	Method      string
	Path        string
	RequestRule *RequestRule
	Inject      []*Inject
}

// Allowed reports whether the caller may go ahead (true for audit passes).
func (d Decision) Allowed() bool { return d.Verdict == Allow }

// Denied reports whether the policy denied, whether or not it was enforced:
// the decisions to log as denials.
func (d Decision) Denied() bool { return d.Verdict == Deny || d.Audit }

// Event is the log event name for a decision: "allow", "deny" or
// "audit_deny".
func (d Decision) Event() string {
	switch {
	case d.Audit:
		return "audit_deny"
	case d.Verdict == Deny:
		return "deny"
	}
	return "allow"
}

// RuleReason is the reason: text of what decided d, for the people it
// refuses: the deciding request rule's when it has one, else the host or
// cidr rule's; "" when neither has one (or no rule decided), and for a
// request no request rule matched (the host rule's reason says why the
// host is reachable, not why this request is refused). Log lines, the
// 403's status line and body, egress check and egress run's denials all
// take it from here.
func (d Decision) RuleReason() string {
	switch {
	case d.RequestRule != nil && d.RequestRule.Note != "":
		return d.RequestRule.Note
	case d.RequestRule == nil && d.Reason == ReasonNoRequestRuleMatched:
		return ""
	case d.Rule != nil:
		return d.Rule.Note
	}
	return ""
}

// RuleLocation is the deciding rule's FILE:LINE, or "" when no rule decided.
func (d Decision) RuleLocation() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Location()
}

// Listen holds the listener addresses of egress serve. An empty address
// means the listener is off.
type Listen struct {
	HTTP        string // default 127.0.0.1:3128
	DNS         string // off by default; 127.0.0.1:5353 is the usual choice
	Transparent string // off by default
	// RefuseAtConnect lists the users (names or uids) whose new TCP
	// connections the policy refuses fail at connect() (egress serve's
	// connect filter, nftables); empty: off.
	RefuseAtConnect []string
	Admin           string // default 127.0.0.1:9090
	ProxyProtocol   bool   // accept PROXY protocol v1/v2 on the HTTP listener
	// ProxyProtocolFrom lists the peers (load balancers) whose PROXY
	// headers are believed; required when ProxyProtocol is set, since a
	// header says which client to decide for.
	ProxyProtocolFrom []netip.Prefix
	// Via adds egress's Via entry (RFC 9110 §7.6.3) to the requests and
	// responses the HTTP proxy forwards; default true. Off for origins
	// that treat a proxied request differently (nginx's default
	// gzip_proxied off does not compress an answer to a request with Via).
	Via bool
}

// Log holds the logging settings of egress serve.
type Log struct {
	Format  string // "json" (default) or "console"
	Level   string // "debug", "info" (default), "warn", "error"
	Allowed bool   // also log allowed connections when they close
	File    string // "" = stderr
}

// DNS holds the settings of the DNS proxy.
type DNS struct {
	Upstreams []string      // host:port; empty means the resolv.conf nameservers
	Timeout   time.Duration // per query, all upstreams included; default 2s
	Blocked   string        // answer for refused names: "nxdomain" (default), "refused", "empty"
	MinTTL    time.Duration // cache floor; default 0
	MaxTTL    time.Duration // cache ceiling; default 1h
	CacheSize int           // entries; default 10000
	// ResolveUnlisted (dns.resolve_unlisted, default true) lets a name
	// that no host rule allows be resolved when a cidr allow rule could
	// match the port, to decide on its addresses. False refuses such a
	// name before any lookup (no_rule_matched), so that it never reaches
	// an upstream resolver; only host rules (and default: allow) let
	// names through.
	ResolveUnlisted bool
}

// Timeouts of egress serve.
type Timeouts struct {
	Dial       time.Duration // upstream connect; default 10s
	Header     time.Duration // reading a client's request header; default 10s
	Response   time.Duration // plain HTTP: waiting for the upstream's response header; default 60s
	TunnelIdle time.Duration // close a tunnel idle this long; 0 (default) = never
	// HalfClose bounds a half-closed tunnel: once one side has ended its
	// direction, the other may stay silent this long, then the tunnel is
	// closed (a client gone while its origin never answers would hold its
	// slot forever otherwise); default 30s
	HalfClose time.Duration
	Drain     time.Duration // on SIGTERM, how long open tunnels may finish; default 30s
}

// Limits of egress serve.
type Limits struct {
	MaxTunnels     int // open CONNECT/transparent tunnels; default 10000
	MaxHeaderBytes int // default 65536
}

// Reload holds what a reload of the policy file does to open
// connections.
type Reload struct {
	// RevokeOpen: on reload, decide every open tunnel and transparent
	// connection again and close those the new policy refuses (logged
	// with reason revoked). Default true; false keeps them open until
	// they end, as before.
	RevokeOpen bool
}

// location formats FILE:LINE.
func location(file string, line int) string {
	return file + ":" + strconv.Itoa(line)
}
