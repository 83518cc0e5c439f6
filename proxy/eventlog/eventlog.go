// Package eventlog writes egress's canonical log line: one line per
// connection, request or DNS query, built in one place from a
// policy.Decision so that every data path logs the same fields.
//
// It does not decide anything and keeps no state; the logger is passed in.
package eventlog

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
)

// Field names of the canonical line. Operators index and alert on them:
// never rename one. README.md documents each.
const (
	FieldID           = "id"            // decision id, also sent to clients (X-Egress-Id, DNS EDE text)
	FieldEvent        = "event"         // allow | deny | audit_deny
	FieldProto        = "proto"         // http | connect | tcp | dns
	FieldClient       = "client"        // client address ip:port
	FieldHost         = "host"          // normalised name asked for ("" for an IP literal)
	FieldPort         = "port"          // destination port
	FieldIP           = "ip"            // address decided on or dialled, when known
	FieldMethod       = "method"        // plain HTTP, and intercepted requests
	FieldURL          = "url"           // plain HTTP, and intercepted requests (without the query)
	FieldRequestRule  = "request_rule"  // FILE:LINE of the deciding request rule (http:), when one decided
	FieldInjected     = "injected"      // names of the headers egress set (inject:), never their values
	FieldQName        = "qname"         // DNS only
	FieldQType        = "qtype"         // DNS only
	FieldRule         = "rule"          // FILE:LINE of the deciding rule, "" when none
	FieldRuleText     = "rule_text"     // the deciding rule as written
	FieldRuleReason   = "rule_reason"   // the deciding rule's reason: text, when it has one
	FieldReason       = "reason"        // policy.Reason code
	FieldPolicy       = "policy"        // policy file
	FieldClientPolicy = "client_policy" // "default" or the clients: entry that applied
	FieldHint         = "hint"          // YAML to add under allow: to allow it
	FieldBytesUp      = "bytes_up"      // client to destination
	FieldBytesDown    = "bytes_down"    // destination to client
	FieldDurationMS   = "duration_ms"   // connection lifetime
	FieldError        = "error"         // what went wrong after the decision (dial, resolve)
	FieldPath         = "path"          // unix only: the socket address as the process gave it
	FieldSocket       = "socket"        // unix only: the socket file it named, resolved
	FieldPID          = "pid"           // egress run: the process, when known
	FieldProcess      = "process"       // egress run: its command name
)

// Proto values.
const (
	ProtoHTTP    = "http"
	ProtoConnect = "connect"
	ProtoTCP     = "tcp"
	ProtoDNS     = "dns"
	ProtoHTTPS   = "https" // one request inside an intercepted TLS connection (proxy/intercept)
	ProtoUnix    = "unix"  // a unix socket egress run's sandbox refused
	// Other protocols of packets egress run's sandbox refused are named
	// as the kernel names them: "udp", "icmp", "ipv6-icmp".
)

// Entry is one connection, request or query, with its decision.
type Entry struct {
	ID       string
	Proto    string
	Client   netip.AddrPort
	Decision policy.Decision
	Method   string // plain HTTP
	URL      string // plain HTTP, intercepted requests
	// Injected names the headers egress set on the request (inject:):
	// names only, the values are never logged.
	Injected []string
	QName    string // DNS
	QType    string // DNS
	Path     string // unix
	Socket   string // unix
	PID      int    // egress run: the process, when known
	Process  string // egress run: its command name

	// Set on the line logged when an allowed connection closes.
	BytesUp   int64
	BytesDown int64
	Duration  time.Duration
	Err       error
}

// Sink records entries: it shows each one to Observe (metrics, the
// admin listener's recent denials) and logs it as the canonical line when
// it is a denial or a failure (the client got a 502 or 504, and the id in
// its answer must lead to a line), or when LogAllowed is set. Data paths hold a *Sink and
// call Record once per connection, request or query. A nil *Sink records
// nothing.
type Sink struct {
	Logger     zerolog.Logger
	LogAllowed bool
	// Observe, if set, sees every entry, logged or not. It must be safe
	// for concurrent use and fast: it runs on the data path.
	Observe func(Entry)
}

// Record observes e and logs it if it is a denial, carries an error
// (e.Err), or LogAllowed is set.
func (s *Sink) Record(e Entry) {
	if s == nil {
		return
	}
	if s.Observe != nil {
		s.Observe(e)
	}
	if s.LogAllowed || e.Decision.Denied() || e.Err != nil {
		Log(s.Logger, e)
	}
}

// NewID returns a fresh decision id: 16 hex digits, unique enough to find
// one line in a day of logs.
func NewID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Log writes e as the canonical line: at warn level for denials (audit
// denials included) and failures (e.Err: an allowed destination that could
// not be resolved or reached), at info level otherwise.
func Log(l zerolog.Logger, e Entry) {
	d := e.Decision
	ev := l.Info()
	if d.Denied() || e.Err != nil {
		ev = l.Warn()
	}
	if !ev.Enabled() {
		return
	}
	ev = ev.Str(FieldID, e.ID).
		Str(FieldEvent, d.Event()).
		Str(FieldProto, e.Proto)
	var addr [64]byte // addresses are appended here, not allocated as strings
	if e.Client.IsValid() {
		ev = ev.Bytes(FieldClient, e.Client.AppendTo(addr[:0]))
	}
	ev = ev.Str(FieldHost, d.Host).Uint16(FieldPort, d.Port)
	if d.IP.IsValid() {
		ev = ev.Bytes(FieldIP, d.IP.AppendTo(addr[:0]))
	}
	if e.Method != "" {
		ev = ev.Str(FieldMethod, e.Method)
	}
	if e.URL != "" {
		ev = ev.Str(FieldURL, e.URL)
	}
	if e.QName != "" {
		ev = ev.Str(FieldQName, e.QName).Str(FieldQType, e.QType)
	}
	if e.Proto == ProtoUnix {
		ev = ev.Str(FieldPath, e.Path).Str(FieldSocket, e.Socket)
	}
	if e.PID != 0 {
		ev = ev.Int(FieldPID, e.PID).Str(FieldProcess, e.Process)
	}
	ev = ev.Str(FieldRule, d.RuleLocation())
	if d.RequestRule != nil {
		ev = ev.Str(FieldRequestRule, d.RequestRule.Location())
	}
	if len(e.Injected) > 0 {
		ev = ev.Strs(FieldInjected, e.Injected)
	}
	if d.Rule != nil {
		ev = ev.Str(FieldRuleText, d.Rule.Text)
	}
	if why := d.RuleReason(); why != "" {
		ev = ev.Str(FieldRuleReason, why)
	}
	ev = ev.Str(FieldReason, string(d.Reason)).
		Str(FieldPolicy, d.Source).
		Str(FieldClientPolicy, d.Policy)
	if d.Hint != "" {
		ev = ev.Str(FieldHint, d.Hint)
	}
	if e.Duration > 0 || e.BytesUp > 0 || e.BytesDown > 0 {
		ev = ev.Int64(FieldBytesUp, e.BytesUp).
			Int64(FieldBytesDown, e.BytesDown).
			Int64(FieldDurationMS, e.Duration.Milliseconds())
	}
	if e.Err != nil {
		ev = ev.Str(FieldError, e.Err.Error())
	}
	ev.Msg("")
}
