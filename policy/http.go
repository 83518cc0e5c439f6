package policy

import (
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Request rules (issue 20). A host or cidr rule may carry http:, a list
// of request rules on method and path: egress then terminates TLS for the
// destination with a certificate from its own CA (tls:) and decides each
// request. An allow rule's inject: lists headers egress sets, after the
// decision, on every request the rule allows; their values come from
// files or environment variables that the policy names and the loader
// reads (ResolveSecrets): this package reads nothing.
//
// Precedence inside one destination: the most specific request rule wins
// (an exact path over more literal segments over '*' over '/**'; a rule
// naming methods over one that does not), and deny wins a tie. The request
// rules in play are the deciding allow rule's (an allow rule without http:
// stands for "every request") and those of every deny rule with http:
// whose pattern is as specific as the allow rule's or more (ports aside),
// or that is in another file, or on the other side (a name or an
// address). A deny rule with http: does not refuse the connection; it
// makes egress intercept it, even where the allow rule would tunnel.

// TLS is the tls: section: egress's interception CA and the roots it
// trusts for origins besides the system's. Relative paths are relative
// to the policy file that names them.
type TLS struct {
	CACert     string // tls.ca_cert: the CA's certificate (PEM)
	CAKey      string // tls.ca_key: its private key (PEM), readable by egress alone
	UpstreamCA string // tls.upstream_ca: extra roots for origins (PEM); optional
	// ECHPass (tls.ech: pass) lets a ClientHello carrying
	// encrypted_client_hello through, decided on its outer name: a known
	// hole, since an ECH server routes on the inner name, which egress
	// cannot read. Default false (tls.ech: refuse): refused, reason
	// tls_ech (proxy/peek).
	ECHPass bool
}

// RequestRule is one entry of a rule's http: list.
type RequestRule struct {
	// Methods the entry matches, exactly (HEAD is not GET); empty: any.
	Methods []string
	// Paths are the entry's path patterns, in normal form: '*' is one
	// non-empty segment, a trailing "/**" any number of segments (zero
	// included).
	Paths []string
	// Note is the entry's reason: text, as Rule.Note.
	Note string
	// Rule is the host or cidr rule the entry belongs to.
	Rule *Rule
	// Where the entry was written.
	File   string
	Line   int
	Column int

	pats []*pathPattern
}

// Location is FILE:LINE of the entry.
func (rr *RequestRule) Location() string { return location(rr.File, rr.Line) }

// Text is the entry as one line of flow YAML.
func (rr *RequestRule) Text() string {
	var b strings.Builder
	b.WriteByte('{')
	if len(rr.Methods) > 0 {
		b.WriteString("methods: [" + strings.Join(rr.Methods, ", ") + "], ")
	}
	b.WriteString("paths: [")
	for i, p := range rr.Paths {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(p))
	}
	b.WriteString("]}")
	return b.String()
}

// Inject is one entry of a rule's inject: list: a header egress sets on
// every request the rule allows over TLS, replacing what the client sent.
// Its value is never part of any output: String, the log and every
// command name the header and where the value comes from, never the
// value.
type Inject struct {
	Header   string // as written, e.g. Authorization
	FromFile string // absolute path of the file holding the value, or ""
	FromEnv  string // name of the variable holding it, or ""
	Prefix   string // written before the value, e.g. "Bearer "
	// Where from_file or from_env was written: errors about the value
	// point there.
	File   string
	Line   int
	Column int

	// secret is the value once resolved; a pointer, so that fmt prints
	// an address rather than the value when an Inject is formatted.
	secret *secretValue
}

type secretValue struct{ v string }

// Value is the header's value (prefix and secret), and false when the
// secret was never resolved: the caller must then refuse the request,
// not send it without the header.
func (i *Inject) Value() (string, bool) {
	if i.secret == nil {
		return "", false
	}
	return i.Prefix + i.secret.v, true
}

// Source says where the value comes from: "file /run/secrets/x" or "env
// VENDOR_TOKEN".
func (i *Inject) Source() string {
	if i.FromEnv != "" {
		return "env " + i.FromEnv
	}
	return "file " + i.FromFile
}

// String names the header and its source, never the value.
func (i *Inject) String() string { return i.Header + " from " + i.Source() + " (value redacted)" }

// GoString is String: %#v must not print the value either.
func (i *Inject) GoString() string { return i.String() }

// MarshalText is String, for encoders that would otherwise walk the
// fields.
func (i *Inject) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// Reasons of request decisions.
const (
	// ReasonRequestDenied: a deny rule's request rule matched.
	ReasonRequestDenied Reason = "denied_by_request_rule"
	// ReasonNoRequestRuleMatched: the deciding allow rule has http: and
	// none of its request rules matched the method and path.
	ReasonNoRequestRuleMatched Reason = "no_request_rule_matched"
	// ReasonInvalidPath: the path is refused by NormalizePath.
	ReasonInvalidPath Reason = "invalid_path"
	// ReasonInvalidMethod: the method is not an upper-case HTTP token
	// (some frameworks upper-case "post", which an exact match would
	// not), or it is TRACE or CONNECT to a destination whose deciding
	// rule injects a header (the origin would echo the value back).
	ReasonInvalidMethod Reason = "invalid_method"
)

// tls parses the tls: section.
func (l *loader) tls(n *yaml.Node, t *TLS) {
	path := func(dst *string, what string) func(k, v *yaml.Node) {
		return func(k, v *yaml.Node) {
			s, ok := l.str(v, what)
			if !ok {
				return
			}
			if s == "" {
				l.errf(l.node(v), "%s is empty: leave it out", what)
				return
			}
			*dst = l.relPath(s)
		}
	}
	var certKey, keyKey *yaml.Node
	seen := l.mapping(n, "tls", []field{
		{"ca_cert", func(k, v *yaml.Node) { certKey = k; path(&t.CACert, "tls.ca_cert")(k, v) }},
		{"ca_key", func(k, v *yaml.Node) { keyKey = k; path(&t.CAKey, "tls.ca_key")(k, v) }},
		{"upstream_ca", path(&t.UpstreamCA, "tls.upstream_ca")},
		{"ech", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "tls.ech", "refuse", "pass"); ok {
				t.ECHPass = s == "pass"
			}
		}},
	})
	switch {
	case seen["ca_cert"] != nil && seen["ca_key"] == nil:
		l.errf(certKey, "tls.ca_cert needs tls.ca_key: the CA's private key signs the certificates egress presents")
	case seen["ca_key"] != nil && seen["ca_cert"] == nil:
		l.errf(keyKey, "tls.ca_key needs tls.ca_cert")
	}
}

// relPath resolves a path relative to the directory of the file being
// read, as include: does.
func (l *loader) relPath(s string) string {
	if !filepath.IsAbs(s) {
		s = filepath.Join(filepath.Dir(l.file), s)
	}
	return filepath.Clean(s)
}

// requestRules parses a rule's http: list.
func (l *loader) requestRules(n *yaml.Node, parent *Rule) []*RequestRule {
	items := l.seq(n, "http")
	if len(items) == 0 {
		l.errf(l.node(n), "http is empty: leave it out for a tunnel, or list request rules such as {methods: [GET], paths: [\"/v1/**\"]}")
		return nil
	}
	var out []*RequestRule
	for _, item := range items {
		item = l.node(item)
		rr := &RequestRule{Rule: parent, File: l.file, Line: item.Line, Column: item.Column}
		nerr := len(l.errs)
		seen := l.mapping(item, "a request rule", []field{
			{"methods", func(k, v *yaml.Node) { rr.Methods = l.methods(v) }},
			{"paths", func(k, v *yaml.Node) { rr.Paths, rr.pats = l.paths(v) }},
			{"reason", func(k, v *yaml.Node) { rr.Note, _ = l.text(v, "reason") }},
		})
		if item.Kind != yaml.MappingNode {
			continue
		}
		if seen["paths"] == nil {
			l.required(item, "a request rule needs paths: (write \"/**\" for every path)", "paths")
			continue
		}
		if len(l.errs) == nerr {
			out = append(out, rr)
		}
	}
	return out
}

func (l *loader) methods(n *yaml.Node) []string {
	items := l.seq(n, "methods")
	if len(items) == 0 && l.node(n).Kind == yaml.SequenceNode {
		l.errf(l.node(n), "methods is empty: leave methods out to mean any method")
	}
	var out []string
	for _, item := range items {
		s, ok := l.str(item, "a method")
		if !ok {
			continue
		}
		item = l.node(item)
		switch {
		case !isToken(s):
			l.errf(item, "method %q is not an HTTP method such as GET or POST", s)
		case strings.ToUpper(s) != s:
			l.errf(item, "method %q: methods match exactly and are upper case: write %s", s, strings.ToUpper(s))
		case slices.Contains(out, s):
			l.errf(item, "method %s is listed twice", s)
		default:
			out = append(out, s)
		}
	}
	return out
}

func (l *loader) paths(n *yaml.Node) ([]string, []*pathPattern) {
	items := l.seq(n, "paths")
	if len(items) == 0 && l.node(n).Kind == yaml.SequenceNode {
		l.errf(l.node(n), "paths is empty: write \"/**\" for every path")
	}
	var out []string
	var pats []*pathPattern
	for _, item := range items {
		s, ok := l.str(item, "a path")
		if !ok {
			continue
		}
		item = l.node(item)
		pp, msg := compilePattern(s)
		switch {
		case pp == nil:
			l.errf(item, "path %q: %s", s, msg)
		case slices.Contains(out, s):
			l.errf(item, "path %q is listed twice", s)
		default:
			out = append(out, s)
			pats = append(pats, pp)
		}
	}
	return out, pats
}

// reservedHeaders may not be injected: they frame the message or the
// connection, or name the destination.
var reservedHeaders = []string{"host", "content-length", "transfer-encoding", "connection", "keep-alive",
	"te", "trailer", "upgrade", "expect", "proxy-authorization", "proxy-authenticate", "proxy-connection"}

// injects parses a rule's inject: list.
func (l *loader) injects(n *yaml.Node) []*Inject {
	items := l.seq(n, "inject")
	if len(items) == 0 {
		l.errf(l.node(n), "inject is empty: leave it out")
		return nil
	}
	var out []*Inject
	headers := map[string]int{}
	for _, item := range items {
		item = l.node(item)
		in := &Inject{File: l.file}
		nerr := len(l.errs)
		var hdrNode, srcNode *yaml.Node
		seen := l.mapping(item, "an inject entry", []field{
			{"header", func(k, v *yaml.Node) {
				s, ok := l.str(v, "header")
				if !ok {
					return
				}
				hdrNode = l.node(v)
				switch {
				case !isToken(s):
					l.errf(hdrNode, "header %q is not a header name such as Authorization", s)
				case slices.Contains(reservedHeaders, strings.ToLower(s)):
					l.errf(hdrNode, "header %s cannot be injected: it frames the request or names its destination", s)
				default:
					in.Header = s
				}
			}},
			{"from_file", func(k, v *yaml.Node) {
				if s, ok := l.str(v, "from_file"); ok {
					srcNode = l.node(v)
					if s == "" {
						l.errf(srcNode, "from_file is empty")
						return
					}
					in.FromFile = l.relPath(s)
				}
			}},
			{"from_env", func(k, v *yaml.Node) {
				if s, ok := l.str(v, "from_env"); ok {
					srcNode = l.node(v)
					if !isEnvName(s) {
						l.errf(srcNode, "from_env %q is not a variable name such as VENDOR_TOKEN", s)
						return
					}
					in.FromEnv = s
				}
			}},
			{"prefix", func(k, v *yaml.Node) {
				if s, ok := l.text(v, "prefix"); ok {
					in.Prefix = s
				}
			}},
		})
		if item.Kind != yaml.MappingNode {
			continue
		}
		if seen["header"] == nil {
			l.required(item, "an inject entry needs header:", "header")
		}
		switch {
		case seen["from_file"] != nil && seen["from_env"] != nil:
			l.errf(seen["from_env"], "an inject entry takes from_file or from_env, not both")
		case seen["from_file"] == nil && seen["from_env"] == nil:
			l.required(item, "an inject entry needs from_file: or from_env: (where its value is read)", "from_file", "from_env")
		}
		if in.Header != "" {
			key := strings.ToLower(in.Header)
			if line, dup := headers[key]; dup {
				l.errf(hdrNode, "header %s is injected twice (first at line %d)", in.Header, line)
			}
			headers[key] = hdrNode.Line
		}
		if len(l.errs) > nerr || srcNode == nil || in.Header == "" {
			continue
		}
		in.Line, in.Column = srcNode.Line, srcNode.Column
		out = append(out, in)
	}
	return out
}

// checkHTTP checks what a rule's http: and inject: need of each other.
func (l *loader) checkHTTP(r *Rule, httpKey, injectKey *yaml.Node) {
	switch {
	case injectKey != nil && r.Action == Deny:
		l.errf(injectKey, "inject: on a deny rule: egress injects only into requests an allow rule allows")
	case injectKey != nil && httpKey == nil:
		l.errf(injectKey, "inject: needs http: request rules on the same rule: egress injects only into requests it decides one by one (list {paths: [\"/**\"]} to allow every request)")
	}
}

// isToken reports whether s is an HTTP token (RFC 9110 §5.6.2).
func isToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func isEnvName(s string) bool {
	if s == "" || len(s) > 128 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// addRequestDeny files a deny rule with http: among the request denies
// (they do not refuse connections) and reports whether it was one.
func (rs *ruleset) addRequestDeny(c crule) bool {
	if c.r.Action != Deny || len(c.r.HTTP) == 0 {
		return false
	}
	if c.r.Host != "" {
		rs.reqNames.add(c)
	} else {
		rs.reqAddrs.add(c)
	}
	rs.hasReqDenies = true
	return true
}

// requestDenies returns the deny rules with http: whose request rules are
// in play for a destination the connection decision d allowed (see the
// comment at the top of this file).
func (rs *ruleset) requestDenies(d *Decision, name string, ip netip.Addr) []crule {
	if !rs.hasReqDenies {
		return nil
	}
	var out []crule
	consider := func(c crule) {
		if !c.r.matchesPort(d.Port) || c.r.Action != Deny {
			return
		}
		// An allow rule for a more specific pattern wins, as for
		// connections; ports do not count here (rank's two low bits):
		// "deny POST /admin/** on this host" holds over "allow this host
		// on 443".
		if a := d.Rule; a != nil && (a.Host != "") == (c.r.Host != "") && a.layer == c.r.layer && c.rank>>2 < rank(a)>>2 {
			return
		}
		out = append(out, c)
	}
	if name != "" {
		rs.reqNames.each(name, consider)
	}
	if ip.IsValid() {
		rs.reqAddrs.each(ip, consider)
	}
	return out
}

// intercept sets d.Intercept for an allowed destination and, for a
// request (r.Method set), decides the request.
func (rs *ruleset) intercept(d *Decision, r Request, name string, ip netip.Addr) {
	if d.Verdict != Allow {
		return
	}
	denies := rs.requestDenies(d, name, ip)
	d.Intercept = d.Rule != nil && len(d.Rule.HTTP) > 0 || len(denies) > 0
	if r.Method == "" && r.Path == "" {
		return
	}
	d.Method = r.Method
	if !d.Intercept {
		if p, err := NormalizePath(r.Path); err == nil {
			d.Path = p
		} else {
			d.Path = r.Path
		}
		return // a tunnel rule: every request to it is allowed, as the connection is
	}
	if !d.Audit {
		rs.decideRequest(d, r, denies)
	}
}

// decideRequest decides one request to an intercepted destination that
// the connection decision d allowed.
func (rs *ruleset) decideRequest(d *Decision, r Request, denies []crule) {
	deny := func(reason Reason, rule *Rule, rr *RequestRule, hint string) {
		d.Verdict, d.Reason, d.Rule, d.RequestRule, d.Hint = Deny, reason, rule, rr, hint
		if rs.mode == Audit {
			d.Verdict, d.Audit = Allow, true
		}
	}
	if !isToken(r.Method) {
		d.Path = r.Path
		deny(ReasonInvalidMethod, d.Rule, nil, "")
		return
	}
	if strings.ToUpper(r.Method) != r.Method {
		d.Path = r.Path
		deny(ReasonInvalidMethod, d.Rule, nil, "send "+strings.ToUpper(r.Method)+": methods are upper case on intercepted destinations, as some servers read "+r.Method+" as "+strings.ToUpper(r.Method)+" and request rules match exactly")
		return
	}
	p, err := NormalizePath(r.Path)
	if err != nil {
		d.Path = r.Path
		deny(ReasonInvalidPath, d.Rule, nil, "the path is refused: "+err.Error())
		return
	}
	d.Path = p
	var best *RequestRule
	// An allow rule without http: (or default: allow) allows every
	// request, below any request rule that matches.
	bestScore := -1
	if d.Rule == nil || len(d.Rule.HTTP) == 0 {
		bestScore = 0
	}
	consider := func(rr *RequestRule) {
		s := rr.score(r.Method, p)
		if s > bestScore {
			best, bestScore = rr, s
		}
	}
	if d.Rule != nil {
		for _, rr := range d.Rule.HTTP {
			consider(rr)
		}
	}
	for _, c := range denies {
		for _, rr := range c.r.HTTP {
			consider(rr)
		}
	}
	allow := d.Rule
	switch {
	case best != nil && best.Rule.Action == Deny:
		deny(ReasonRequestDenied, best.Rule, best, "remove or narrow the request rule at "+best.Location())
	case best != nil && allow != nil && len(allow.Inject) > 0 && echoesRequest(r.Method):
		deny(ReasonInvalidMethod, allow, nil, r.Method+" is refused where the rule at "+allow.Location()+" injects a header: the origin would echo the request, injected value included, back to the client")
	case best != nil:
		d.Reason, d.RequestRule = ReasonAllowedByRule, best
		d.Inject = allow.Inject
	case allow != nil && len(allow.HTTP) > 0:
		deny(ReasonNoRequestRuleMatched, allow, nil, "add under http: of the rule at "+allow.Location()+": "+RequestHint(r.Method, p))
	}
}

// echoesRequest reports whether a method makes the origin send the
// request back (TRACE), or is not a request to the origin at all
// (CONNECT inside an intercepted connection): neither may carry an
// injected header.
func echoesRequest(method string) bool {
	return method == "TRACE" || method == "CONNECT"
}

// score is how well rr matches a request: -1 if it does not; else the
// best matching path's rank, then methods named, then deny (deny wins a
// tie).
func (rr *RequestRule) score(method, p string) int {
	if len(rr.Methods) > 0 && !slices.Contains(rr.Methods, method) {
		return -1
	}
	best := -1
	for _, pp := range rr.pats {
		if pp.match(p) && pp.rank() > best {
			best = pp.rank()
		}
	}
	if best < 0 {
		return -1
	}
	s := (best + 1) << 2 // above 0: an allow rule without http:
	if len(rr.Methods) > 0 {
		s += 2
	}
	if rr.Rule.Action == Deny {
		s++
	}
	return s
}

// RequestHint is the request rule allowing method and the normal path p,
// as one line of flow YAML: - {methods: [POST], paths: ["/v1/admin"]}.
func RequestHint(method, p string) string {
	return "- {methods: [" + method + "], paths: [" + strconv.Quote(p) + "]}"
}

// Intercepts reports whether some rule has http: request rules: egress
// must then terminate TLS for it, with a CA (tls:).
func (p *Policy) Intercepts() bool {
	for _, r := range p.Rules() {
		if len(r.HTTP) > 0 {
			return true
		}
	}
	return false
}

// InterceptedHosts lists the host patterns and cidrs of the rules with
// http: (allow and deny, every clients: entry), sorted and without
// repeats: the names a CA made for this policy must be able to sign for.
func (p *Policy) InterceptedHosts() (hosts []string, cidrs []netip.Prefix) {
	for _, r := range p.Rules() {
		if len(r.HTTP) == 0 {
			continue
		}
		if r.Host != "" {
			hosts = append(hosts, r.Host)
		} else {
			cidrs = append(cidrs, r.Prefix)
		}
	}
	sort.Strings(hosts)
	sort.Slice(cidrs, func(i, j int) bool { return cidrs[i].String() < cidrs[j].String() })
	return slices.Compact(hosts), slices.Compact(cidrs)
}

// Injects lists every inject: entry of the policy, in file order.
func (p *Policy) Injects() []*Inject {
	var out []*Inject
	for _, r := range p.Rules() {
		out = append(out, r.Inject...)
	}
	return out
}

// SecretSource is how ResolveSecrets reads what inject: entries name.
// egress passes a bounded file reader and os.LookupEnv.
type SecretSource struct {
	ReadFile  func(name string) ([]byte, error)
	LookupEnv func(name string) (string, bool)
}

// maxSecretLen bounds an injected value.
const maxSecretLen = 8192

// ResolveSecrets reads the value of every inject: entry. It must be
// called before p is shared (the loader does, at load and reload). A
// missing file or variable, an empty value, and a value holding CR, LF
// or any other control character (one trailing newline is trimmed) are
// errors at the FILE:LINE:COL of the from_file or from_env that names it;
// the error never holds the value.
func (p *Policy) ResolveSecrets(src SecretSource) error {
	var errs Errors
	fail := func(in *Inject, msg string) {
		errs = append(errs, Diagnostic{File: in.File, Line: in.Line, Column: in.Column, Message: "inject " + in.Header + ": " + msg})
	}
	for _, in := range p.Injects() {
		var v string
		switch {
		case in.FromEnv != "":
			s, ok := "", false
			if src.LookupEnv != nil {
				s, ok = src.LookupEnv(in.FromEnv)
			}
			if !ok {
				fail(in, "the variable "+in.FromEnv+" is not set")
				continue
			}
			v = s
		default:
			if src.ReadFile == nil {
				fail(in, "cannot read "+in.FromFile)
				continue
			}
			data, err := src.ReadFile(in.FromFile)
			if err != nil {
				fail(in, "cannot read the file: "+err.Error())
				continue
			}
			v = string(data)
		}
		v = strings.TrimSuffix(v, "\n")
		if msg := checkSecret(v); msg != "" {
			fail(in, "the value from "+in.Source()+" "+msg)
			continue
		}
		in.secret = &secretValue{v: v}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkSecret says what is wrong with an injected value, never quoting it.
func checkSecret(v string) string {
	switch {
	case v == "":
		return "is empty"
	case len(v) > maxSecretLen:
		return "is longer than " + strconv.Itoa(maxSecretLen) + " bytes"
	case !utf8.ValidString(v):
		return "is not UTF-8 text"
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return "holds a control character at byte " + strconv.Itoa(i+1) + " (one trailing newline is trimmed; CR, LF, tabs and other control characters are refused: a header value cannot carry them)"
		}
	}
	return ""
}

// lintHTTP warns of request rules and injections that do less, or more,
// than they seem to.
func (p *Policy) lintHTTP() []Diagnostic {
	var out []Diagnostic
	warn := func(file string, line, col int, msg string) {
		out = append(out, Diagnostic{File: file, Line: line, Column: col, Message: msg, Warning: true})
	}
	var first *RequestRule
	for _, r := range p.Rules() {
		for _, rr := range r.HTTP {
			if first == nil {
				first = rr
			}
			if r.Action == Deny {
				for _, pat := range rr.Paths {
					if !strings.Contains(pat, "*") {
						warn(rr.File, rr.Line, rr.Column, "deny path "+pat+" is exact: another spelling of the same route, such as a trailing slash, is not matched, and Express or Django serve /x/ as /x; deny "+strings.TrimSuffix(pat, "/")+"/** as well, or allow the paths you mean rather than deny the ones you fear")
						break
					}
				}
			}
			if r.Action == Allow && len(rr.Methods) == 0 && slices.Contains(rr.Paths, "/**") {
				warn(rr.File, rr.Line, rr.Column, "this request rule allows every method and path: fine while observing requests for egress learn (with log.allowed: true); narrow it to the methods and paths you mean before enforcing, or remove http: to tunnel")
			}
		}
		for _, in := range r.Inject {
			switch {
			case r.Host == "":
				warn(in.File, in.Line, in.Column, "inject: under a cidr rule sends the "+in.Header+" value to any server at "+r.Prefix.String()+", whatever name a client asked for; prefer a host rule naming the API")
			case strings.Contains(r.Host, "*"):
				warn(in.File, in.Line, in.Column, "inject: under a wildcard rule sends the "+in.Header+" value to every name "+r.Host+" matches; name the host exactly")
			}
		}
	}
	if first != nil && p.TLS.CACert == "" {
		warn(first.File, first.Line, first.Column, "http: request rules need tls.ca_cert and tls.ca_key: egress serve refuses to start without them (egress run makes its own CA); egress ca init DIR writes both")
	}
	return out
}

// DecidesOnNames reports whether any host rule, of the top level or of a
// clients: entry, can make a name matter to a decision. Where none does,
// every connection is decided on its address alone, and a name egress
// cannot read (an encrypted_client_hello's inner name) changes nothing.
// Called only for the rare hello that carries ECH: no need to precompute.
func (p *Policy) DecidesOnNames() bool {
	for _, rs := range append([]*ruleset{&p.top}, p.clientSets...) {
		for _, rules := range [][]*Rule{rs.rules, rs.inherited} {
			for _, r := range rules {
				if r.Host != "" {
					return true
				}
			}
		}
	}
	return false
}
