package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"gopkg.in/yaml.v3"
)

// The policy file is validated from yaml.Nodes rather than decoded into
// structs: KnownFields is lost inside custom unmarshalers, and walking the
// nodes keeps every position so that each error says FILE:LINE:COL and all
// of them are reported at once.

// nodeBudget bounds the work of walking a document: linear in its size,
// so that aliases cannot make a small file expand into billions of nodes
// ("billion laughs"), while any file without aliases fits.
func nodeBudget(size int) int { return 8*size + 1024 }

type loader struct {
	file   string
	errs   Errors
	warns  []Diagnostic
	budget int
	// fs is what the loaders of a policy's files share (nil for a
	// requirements manifest); layer is the file's index in it, 0 for the
	// policy's own file.
	fs    *fileSet
	layer int
	// late are errors sorted after the keys of their mapping (see
	// required); meant the fields unknown keys were taken for.
	late  []lateError
	meant map[meantKey]bool
}

func (l *loader) errf(n *yaml.Node, format string, a ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	l.errs = append(l.errs, Diagnostic{File: l.file, Line: line, Column: col, Message: fmt.Sprintf(format, a...)})
}

func (l *loader) warnf(file string, line, col int, format string, a ...any) {
	l.warns = append(l.warns, Diagnostic{File: file, Line: line, Column: col, Message: fmt.Sprintf(format, a...), Warning: true})
}

// node follows aliases and charges the work budget.
func (l *loader) node(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	l.budget--
	return n
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 parse error into a diagnostic. A tab where
// YAML wants indentation is the usual cause of yaml.v3's "found character
// that cannot start any token" (and of its tab errors, whose line can be
// one off): those say so, at the tab.
func (l *loader) syntaxError(err error, data []byte) {
	msg := err.Error()
	line := 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if strings.Contains(msg, "tab") || strings.Contains(msg, "cannot start any token") {
		if tl, tc, indent := findTab(data, line); tl > 0 {
			where := "a tab in the indentation"
			if !indent {
				where = "a tab where YAML does not take one"
			}
			l.errs = append(l.errs, Diagnostic{File: l.file, Line: tl, Column: tc,
				Message: where + ": YAML indents with spaces only; replace the tab with spaces"})
			return
		}
	}
	l.errs = append(l.errs, Diagnostic{File: l.file, Line: line, Column: 1, Message: "yaml: " + msg})
}

// findTab finds the tab behind a yaml.v3 error reported at line: a tab in
// the leading white space of that line or the next (yaml.v3 reports some
// on the line before), else anywhere in that line. It returns the tab's
// line and column (1-based; 0, 0 if none) and whether it indents.
func findTab(data []byte, line int) (int, int, bool) {
	lines := strings.Split(string(data), "\n")
	indentTab := func(n int) int {
		if n < 1 || n > len(lines) {
			return 0
		}
		s := lines[n-1]
		for i := 0; i < len(s) && (s[i] == ' ' || s[i] == '\t'); i++ {
			if s[i] == '\t' {
				return i + 1
			}
		}
		return 0
	}
	for _, n := range []int{line, line + 1} {
		if c := indentTab(n); c > 0 {
			return n, c, true
		}
	}
	if line >= 1 && line <= len(lines) {
		if i := strings.IndexByte(lines[line-1], '\t'); i >= 0 {
			return line, utf8.RuneCountInString(lines[line-1][:i]) + 1, false
		}
	}
	return 0, 0, false
}

// field is one known key of a mapping and what to do with its value.
type field struct {
	name string
	fn   func(key, val *yaml.Node)
}

// mapping checks that n is a mapping and calls each field's function for
// its key; unknown and repeated keys are errors. It returns the keys seen.
func (l *loader) mapping(n *yaml.Node, what string, fields []field) map[string]*yaml.Node {
	n = l.node(n)
	seen := map[string]*yaml.Node{}
	if n == nil || n.Kind != yaml.MappingNode {
		l.errf(n, "%s must be a mapping, not %s", what, kindName(n))
		return seen
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := l.node(n.Content[i]), n.Content[i+1]
		if l.budget < 0 {
			return seen
		}
		if k.Kind != yaml.ScalarNode {
			l.errf(k, "%s: a key must be a plain name", what)
			continue
		}
		var fn func(key, val *yaml.Node)
		for _, f := range fields {
			if f.name == k.Value {
				fn = f.fn
			}
		}
		switch {
		case fn == nil:
			l.unknown(n, k, what, fields)
		case seen[k.Value] != nil:
			l.errf(k, "field %q appears twice in %s (first at line %d)", k.Value, what, seen[k.Value].Line)
		default:
			seen[k.Value] = k
			l.recordSource(what, k)
			fn(k, v)
		}
	}
	return seen
}

// unknown reports the unknown key k of the mapping m, with the field it
// probably meant, and remembers that guess: an error about that field
// being absent from m would only repeat it (see required).
func (l *loader) unknown(m, k *yaml.Node, what string, fields []field) {
	meant, text := suggest(k.Value, fields)
	if meant == "" && what == "the policy" {
		if sec := sectionOf(k.Value); sec != "" {
			text = fmt.Sprintf(" (it belongs under %s: write it as %s.%s)", sec, sec, k.Value)
		}
	}
	l.errf(k, "unknown field %q in %s%s", k.Value, what, text)
	if meant != "" {
		if l.meant == nil {
			l.meant = map[meantKey]bool{}
		}
		l.meant[meantKey{m, meant}] = true
	}
}

// meantKey is a mapping node and a field an unknown key of it probably
// meant.
type meantKey struct {
	m    *yaml.Node
	name string
}

// lateError is an error placed, among the file's sorted errors, after
// the position at.
type lateError struct {
	d         Diagnostic
	line, col int
}

// required reports, at m, that the mapping m lacks the field names, unless
// an unknown key of m was taken for one of them (then that error says it
// all). The error comes after those of m's keys: it is a consequence, and a
// misspelt key explains it better.
func (l *loader) required(m *yaml.Node, msg string, names ...string) {
	m = l.node(m)
	for _, name := range names {
		if l.meant[meantKey{m, name}] {
			return
		}
	}
	n := len(l.errs)
	l.errf(m, "%s", msg)
	e := lateError{d: l.errs[n], line: m.Line, col: m.Column}
	l.errs = l.errs[:n]
	if len(m.Content) > 0 {
		last := lastNode(m)
		e.line, e.col = last.Line, last.Column
	}
	l.late = append(l.late, e)
}

// lastNode is the node of n that starts last.
func lastNode(n *yaml.Node) *yaml.Node {
	for i := 0; i < 100 && len(n.Content) > 0; i++ {
		n = n.Content[len(n.Content)-1]
	}
	return n
}

// sectionFields are the fields of the policy's sections, for an unknown
// top-level key that belongs in one (upstreams: for dns.upstreams). A
// test checks them against the loader.
var sectionFields = map[string][]string{
	"listen":   {"http", "dns", "transparent", "admin", "proxy_protocol", "proxy_protocol_from", "refuse_at_connect", "via"},
	"log":      {"format", "level", "allowed", "file"},
	"dns":      {"upstreams", "timeout", "blocked", "min_ttl", "max_ttl", "cache_size", "resolve_unlisted"},
	"timeouts": {"dial", "header", "response", "tunnel_idle", "half_close", "drain"},
	"limits":   {"max_tunnels", "max_header_bytes"},
	"reload":   {"revoke_open"},
	"tls":      {"ca_cert", "ca_key", "upstream_ca", "ech"},
}

// sectionOf is the section a top-level key belongs to, or "" (a name
// several sections have, such as dns, is left alone).
func sectionOf(key string) string {
	found := ""
	for sec, fields := range sectionFields {
		if slices.Contains(fields, key) {
			if found != "" {
				return "" // in several sections: no single answer, whatever the order
			}
			found = sec
		}
	}
	return found
}

// suggest proposes a known field for a misspelt one: the same letters
// (case, '-' for '_'), a prefix ("port" for "ports"), or a name one or two
// edits away ("defualt" for "default"). It returns the field meant ("" if
// none) and the text to add to the error.
func suggest(name string, fields []field) (string, string) {
	squash := func(s string) string { return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s)) }
	for _, f := range fields {
		if squash(f.name) == squash(name) {
			return f.name, fmt.Sprintf(" (did you mean %q?)", f.name)
		}
	}
	best, bestDist := "", 3
	var names []string
	for _, f := range fields {
		names = append(names, f.name)
		if len(name) < 3 {
			continue
		}
		if strings.HasPrefix(f.name, name) || strings.HasPrefix(name, f.name) {
			return f.name, fmt.Sprintf(" (did you mean %q?)", f.name)
		}
		// One edit for short names, two from six letters on: "lsiten"
		// is listen, "host" is not port.
		limit := 1
		if len(f.name) >= 6 {
			limit = 2
		}
		if d := editDistance(squash(name), squash(f.name)); d <= limit && d < bestDist {
			best, bestDist = f.name, d
		}
	}
	if best != "" {
		return best, fmt.Sprintf(" (did you mean %q?)", best)
	}
	return "", " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the optimal string alignment distance of a and b:
// substitutions, insertions, deletions and transpositions of neighbours
// each count one.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

func kindName(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!int":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!float":
			return "a number"
		}
		return fmt.Sprintf("the string %q", n.Value)
	}
	return "something else"
}

func (l *loader) str(n *yaml.Node, what string) (string, bool) {
	n = l.node(n)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		l.errf(n, "%s must be a string, not %s", what, kindName(n))
		return "", false
	}
	return n.Value, true
}

func (l *loader) integer(n *yaml.Node, what string) (int, bool) {
	n = l.node(n)
	var v int
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		l.errf(n, "%s must be an integer, not %s", what, kindName(n))
		return 0, false
	}
	return v, true
}

func (l *loader) boolean(n *yaml.Node, what string) bool {
	n = l.node(n)
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		l.errf(n, "%s must be true or false, not %s", what, kindName(n))
	}
	return v
}

func (l *loader) enum(n *yaml.Node, what string, values ...string) (string, bool) {
	s, ok := l.str(n, what)
	if !ok {
		return "", false
	}
	for _, v := range values {
		if s == v {
			return s, true
		}
	}
	l.errf(l.node(n), "%s must be %s, not %q", what, strings.Join(values, " or "), s)
	return "", false
}

func (l *loader) duration(n *yaml.Node, what string) (time.Duration, bool) {
	n = l.node(n)
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int") {
		l.errf(n, "%s must be a duration such as 10s, not %s", what, kindName(n))
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		l.errf(n, "%s must be a duration such as 10s or 1m30s, not %q", what, n.Value)
		return 0, false
	}
	if d < 0 {
		l.errf(n, "%s must not be negative", what)
		return 0, false
	}
	return d, true
}

func (l *loader) seq(n *yaml.Node, what string) []*yaml.Node {
	n = l.node(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(n, "%s must be a list, not %s", what, kindName(n))
		return nil
	}
	l.budget -= len(n.Content)
	return n.Content
}

func (l *loader) verdict(n *yaml.Node, what string) Verdict {
	s, _ := l.enum(n, what, "allow", "deny")
	if s == "allow" {
		return Allow
	}
	return Deny
}

func (l *loader) mode(n *yaml.Node, what string) Mode {
	s, _ := l.enum(n, what, "enforce", "audit")
	if s == "audit" {
		return Audit
	}
	return Enforce
}

// document decodes the one YAML document of data, or reports why not
// (empty saying what an empty file lacks, second that there is a second
// document) and returns nil.
func (l *loader) document(data []byte, empty, second string) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.errs = append(l.errs, Diagnostic{File: l.file, Line: 1, Column: 1, Message: empty})
			return nil
		}
		l.syntaxError(err, data)
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		l.errf(&next, "%s", second)
	case !errors.Is(err, io.EOF):
		l.syntaxError(err, data)
	}
	if len(doc.Content) == 0 {
		l.errf(&doc, "%s", empty)
		return nil
	}
	return &doc
}

// parse validates the document and fills p. Rules are left for compile.
func (l *loader) parse(data []byte, p *Policy) {
	doc := l.document(data, "the file is empty: version: 1 and default: are required",
		"a policy file holds one YAML document; remove the second one (after ---)")
	if doc == nil {
		return
	}
	root := doc.Content[0]
	top := &p.top
	// Included files first: what this file says is read after them.
	if r := l.node(root); r.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(r.Content); i += 2 {
			if k := l.node(r.Content[i]); k.Kind == yaml.ScalarNode && k.Value == "include" {
				l.includes(r.Content[i+1], p)
				break
			}
		}
	}
	seen := l.mapping(root, "the policy", []field{
		{"version", func(k, v *yaml.Node) {
			if n, ok := l.integer(v, "version"); ok {
				if n != 1 {
					l.errf(l.node(v), "unsupported version %d: this egress reads version 1", n)
				}
				p.Version = n
			}
		}},
		{"default", func(k, v *yaml.Node) {
			if d, ok := l.enum(v, "default", "allow", "deny"); ok && l.tighten("default", &l.fs.def, v, d, "deny") {
				top.def = l.verdict(v, "default")
			}
		}},
		{"mode", func(k, v *yaml.Node) {
			if m, ok := l.enum(v, "mode", "enforce", "audit"); ok && l.tighten("mode", &l.fs.mode, v, m, "enforce") {
				top.mode = l.mode(v, "mode")
			}
		}},
		{"allow", func(k, v *yaml.Node) { top.rules = append(top.rules, l.rules(v, Allow, "allow")...) }},
		{"deny", func(k, v *yaml.Node) { top.rules = append(top.rules, l.rules(v, Deny, "deny")...) }},
		{"allow_from", func(k, v *yaml.Node) { p.AllowFrom = l.prefixes(v, "allow_from") }},
		{"nat64_prefixes", func(k, v *yaml.Node) { p.NAT64Prefixes = l.nat64Prefixes(v) }},
		{"clients", func(k, v *yaml.Node) { l.clients(v, p) }},
		{"listen", func(k, v *yaml.Node) { l.listen(v, &p.Listen) }},
		{"log", func(k, v *yaml.Node) { l.log(v, &p.Log) }},
		{"dns", func(k, v *yaml.Node) { l.dns(v, &p.DNS) }},
		{"timeouts", func(k, v *yaml.Node) { l.timeouts(v, &p.Timeouts) }},
		{"limits", func(k, v *yaml.Node) { l.limits(v, &p.Limits) }},
		{"reload", func(k, v *yaml.Node) { l.reload(v, &p.Reload) }},
		{"tls", func(k, v *yaml.Node) { l.tls(v, &p.TLS) }},
		{"include", func(k, v *yaml.Node) {}}, // read above
	})
	if l.node(root).Kind == yaml.MappingNode {
		if seen["version"] == nil {
			l.required(root, "version is required: add version: 1", "version")
		}
		// An included file may leave default: to the file that includes
		// it; the policy as a whole needs one (unless an included file
		// that may set it did not load: that error says it all).
		if seen["default"] == nil && l.layer == 0 && (l.fs.def == nil || l.fs.def.implicit) && !l.fs.incomplete {
			l.required(root, "default is required: add default: allow (full internet) or default: deny (only what is listed)", "default")
		}
		if seen["default"] == nil {
			l.implicit("default", &l.fs.def, "deny")
		}
		if seen["mode"] == nil {
			l.implicit("mode", &l.fs.mode, "enforce")
		}
	}
}

func (l *loader) rules(n *yaml.Node, action Verdict, what string) []*Rule {
	var out []*Rule
	for _, item := range l.seq(n, what) {
		if r := l.rule(item, action, what); r != nil {
			out = append(out, r)
		}
		if l.budget < 0 {
			break
		}
	}
	return out
}

func (l *loader) rule(n *yaml.Node, action Verdict, what string) *Rule {
	n = l.node(n)
	article := "a "
	if action == Allow {
		article = "an "
	}
	if n.Kind != yaml.MappingNode {
		l.errf(n, "%s%s rule must be a mapping such as {host: api.example.com, ports: [443]}, not %s", article, what, kindName(n))
		return nil
	}
	// Walked by hand rather than with mapping(): a policy may hold 100,000
	// rules, and this loop allocates nothing but the rule.
	r := &Rule{Action: action, File: l.file, Line: n.Line, Column: n.Column, layer: l.layer}
	var hostKey, cidrKey, portsKey, reasonKey, httpKey, injectKey *yaml.Node
	nerr := len(l.errs)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := l.node(n.Content[i]), n.Content[i+1]
		var dup *yaml.Node
		switch {
		case k.Kind != yaml.ScalarNode:
			l.errf(k, "%s%s rule: a key must be a plain name", article, what)
		case k.Value == "host":
			dup, hostKey = hostKey, k
			if s, ok := l.str(v, "host"); ok && dup == nil {
				r.Host = l.hostPattern(l.node(v), s)
			}
		case k.Value == "cidr":
			dup, cidrKey = cidrKey, k
			if s, ok := l.str(v, "cidr"); ok && dup == nil {
				r.Prefix = l.prefix(l.node(v), s, "cidr")
			}
		case k.Value == "ports":
			dup, portsKey = portsKey, k
			if dup == nil {
				r.Ports = l.ports(v)
			}
		case k.Value == "reason":
			dup, reasonKey = reasonKey, k
			if dup == nil {
				r.Note, _ = l.text(v, "reason")
			}
		case k.Value == "http":
			dup, httpKey = httpKey, k
			if dup == nil {
				r.HTTP = l.requestRules(v, r)
			}
		case k.Value == "inject":
			dup, injectKey = injectKey, k
			if dup == nil {
				r.Inject = l.injects(v)
			}
		default:
			l.unknown(n, k, article+what+" rule", ruleFields)
		}
		if dup != nil {
			l.errf(k, "field %q appears twice in %s%s rule (first at line %d)", k.Value, article, what, dup.Line)
		}
	}
	switch {
	case hostKey != nil && cidrKey != nil:
		l.errf(cidrKey, "a rule has either host or cidr, not both: write two rules")
	case hostKey == nil && cidrKey == nil && portsKey != nil:
		l.required(n, "a rule needs host or cidr; ports alone match nothing", "host", "cidr")
	case hostKey == nil && cidrKey == nil:
		l.required(n, "a rule needs host or cidr", "host", "cidr")
	}
	l.checkHTTP(r, httpKey, injectKey)
	if len(l.errs) > nerr || hostKey == nil && cidrKey == nil {
		return nil
	}
	r.Text = ruleText(r)
	return r
}

// ruleFields names the fields of a rule, for suggestions.
var ruleFields = []field{{name: "host"}, {name: "cidr"}, {name: "ports"}, {name: "reason"}, {name: "http"}, {name: "inject"}}

// hostPattern validates a host pattern and returns it; a pattern that is
// not in normal form is an error that gives the normal form.
func (l *loader) hostPattern(n *yaml.Node, s string) string {
	if s == "*" {
		return s
	}
	if s == "" {
		l.errf(n, "host is empty")
		return ""
	}
	if t, ok := parseURL(s); ok {
		l.errf(n, "%s", urlMessage("host", s, t))
		return ""
	}
	if _, ip, err := NormalizeHost(s); err == nil && ip.IsValid() {
		l.errf(n, "host %q is an address: write cidr: %s", s, ip)
		return ""
	}
	if strings.HasPrefix(s, "[") || strings.Contains(s, ":") {
		l.errf(n, "host %q: a host is a name without port; put ports under ports:", s)
		return ""
	}
	if isNormalPattern(s) {
		if err := checkName(s, true); err != nil {
			l.errf(n, "host %q: %v", s, err)
			return ""
		}
		return s
	}
	labels := strings.Split(s, ".")
	if len(labels) > 1 && labels[len(labels)-1] == "" {
		labels = labels[:len(labels)-1]
	}
	for i, lab := range labels {
		switch {
		case lab == "*" && i == len(labels)-1:
			l.errf(n, "host %q: the last label cannot be '*'; a wildcard stands for labels on the left (*.example.com) or one label in the middle (a.*.example.com)", s)
			return ""
		case lab == "*":
		case strings.Contains(lab, "*"):
			l.errf(n, "host %q: misplaced wildcard: '*' must be a whole label, as in *.example.com or a.*.example.com", s)
			return ""
		case isASCII(lab):
			labels[i] = lowerASCII(lab)
		default:
			a, err := idna.Lookup.ToASCII(lab)
			if err != nil || !isASCII(a) {
				a = lab
				if !isASCII(lab) {
					l.errf(n, "host %q: label %q is not a valid international name", s, lab)
					return ""
				}
			}
			labels[i] = lowerASCII(a)
		}
	}
	norm := strings.Join(labels, ".")
	if err := checkName(norm, true); err != nil {
		l.errf(n, "host %q: %v", s, err)
		return ""
	}
	if _, isNum, _ := parseIPv4Literal(norm); isNum {
		l.errf(n, "host %q ends in a number: it is neither a name nor an address (use cidr: for addresses)", s)
		return ""
	}
	if norm != s {
		l.errf(n, "host %q is not in normal form: write %q", s, norm)
		return ""
	}
	return norm
}

// isNormalPattern reports whether s is already a pattern in normal form
// (lowercase letters, digits, '-', '_', whole '*' labels except the last,
// no trailing dot, not ending in a number), so that the common case needs
// no rewriting.
func isNormalPattern(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			if i == len(s)-1 {
				return false
			}
		case c == '*':
			if i > 0 && s[i-1] != '.' || i+1 >= len(s) || s[i+1] != '.' {
				return false
			}
		default:
			return false
		}
	}
	_, isNum, _ := parseIPv4Literal(s)
	return !isNum
}

// prefix parses a cidr or a bare address (/32 or /128). IPv4-mapped IPv6
// prefixes become IPv4 ones, the form addresses are matched in.
func (l *loader) prefix(n *yaml.Node, s, what string) netip.Prefix {
	var p netip.Prefix
	if t, ok := parseURL(s); ok && what == "cidr" {
		l.errf(n, "%s", urlMessage("cidr", s, t))
		return netip.Prefix{}
	}
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			l.errf(n, "%s %q is not a cidr such as 10.0.0.0/8 or 2001:db8::/32", what, s)
			return netip.Prefix{}
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			l.errf(n, "%s %q is not an address or cidr such as 10.0.0.5 or 10.0.0.0/8", what, s)
			return netip.Prefix{}
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		l.errf(n, "%s %q has bits set after the /%d: write %s (or %s for the address alone)", what, s, p.Bits(), m, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
		return netip.Prefix{}
	}
	return p
}

func (l *loader) prefixes(n *yaml.Node, what string) []netip.Prefix {
	var out []netip.Prefix
	for _, item := range l.seq(n, what) {
		if s, ok := l.str(item, what+" entry"); ok {
			if p := l.prefix(l.node(item), s, what+" entry"); p.IsValid() {
				out = append(out, p)
			}
		}
	}
	return out
}

// nat64Prefixes validates nat64_prefixes: IPv6 prefixes of the lengths RFC
// 6052 §2.2 defines, with the u-octet (bits 64-71) zero, in global unicast,
// unique local or the RFC 6052/8215 prefixes, apart from the other forms
// that carry IPv4 addresses and from the metadata addresses, and not
// overlapping each other (an address must have one reading).
func (l *loader) nat64Prefixes(n *yaml.Node) []netip.Prefix {
	const what = "nat64_prefixes entry"
	var out []netip.Prefix
	for _, item := range l.seq(n, "nat64_prefixes") {
		s, ok := l.str(item, what)
		if !ok {
			continue
		}
		item = l.node(item)
		if !strings.Contains(s, "/") {
			if _, err := netip.ParseAddr(s); err == nil {
				l.errf(item, "%s %q needs a length: write %s/96 (or /32, /40, /48, /56, /64)", what, s, s)
				continue
			}
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			l.errf(item, "%s %q is not a cidr such as 64:ff9b::/96", what, s)
			continue
		}
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			l.errf(item, "%s %q is not an IPv6 prefix such as 64:ff9b::/96", what, s)
			continue
		}
		if m := p.Masked(); m != p {
			l.errf(item, "%s %q has bits set after the /%d: write %s", what, s, p.Bits(), m)
			continue
		}
		switch p.Bits() {
		case 32, 40, 48, 56, 64, 96:
		default:
			l.errf(item, "%s %q: the length must be 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)", what, s)
			continue
		}
		if p.Bits() == 96 && p.Addr().As16()[8] != 0 {
			l.errf(item, "%s %q: bits 64-71 (the u-octet) must be zero (RFC 6052 §2.2)", what, s)
			continue
		}
		if !(globalUnicast.Contains(p.Addr()) || uniqueLocal.Contains(p.Addr()) || nat64.Overlaps(p) && p.Bits() >= nat64.Bits() || nat64LocalUse.Overlaps(p) && p.Bits() >= nat64LocalUse.Bits()) {
			l.errf(item, "%s %q must be global unicast (2000::/3), unique local (fc00::/7) or inside 64:ff9b::/96 or 64:ff9b:1::/48", what, s)
			continue
		}
		if msg := nat64Clash(p, out); msg != "" {
			l.errf(item, "%s %q %s", what, s, msg)
			continue
		}
		out = append(out, p)
	}
	return out
}

// nat64Clash says why p cannot be a NAT64 prefix next to the ones already
// declared, or "".
func nat64Clash(p netip.Prefix, declared []netip.Prefix) string {
	for _, f := range []struct {
		name string
		p    netip.Prefix
	}{{"6to4", sixToFour}, {"Teredo", teredo}} {
		if f.p.Overlaps(p) {
			return "overlaps " + f.name + " " + f.p.String()
		}
	}
	for _, g := range guardRanges {
		if g.reason == ReasonGuardMetadata && p.Contains(g.prefix.Addr()) {
			return "contains the metadata address " + g.prefix.Addr().String()
		}
	}
	for _, q := range declared {
		if q.Overlaps(p) {
			return "overlaps " + strconv.Quote(q.String())
		}
	}
	return ""
}

func (l *loader) ports(n *yaml.Node) []PortRange {
	items := l.seq(n, "ports")
	if len(items) == 0 && l.node(n).Kind == yaml.SequenceNode {
		l.errf(l.node(n), "ports is empty: leave ports out to mean any port")
	}
	var out []PortRange
	for _, item := range items {
		item = l.node(item)
		if item.Kind != yaml.ScalarNode || (item.Tag != "!!int" && item.Tag != "!!str") {
			l.errf(item, "a port must be a number or a range such as \"8000-8100\", not %s", kindName(item))
			continue
		}
		s := strings.TrimSpace(item.Value)
		lo, hi, isRange := strings.Cut(s, "-")
		if !isRange {
			hi = lo
		}
		a, err1 := parsePort(lo)
		b, err2 := parsePort(hi)
		switch {
		case err1 != nil || err2 != nil:
			l.errf(item, "port %q: want a number from 1 to 65535 or a range such as \"8000-8100\"", item.Value)
			continue
		case a > b:
			l.errf(item, "port range %q is backwards: write \"%d-%d\"", item.Value, b, a)
			continue
		}
		if a == 0 {
			l.warnf(l.file, item.Line, item.Column, "port 0 is never dialled: remove it (leave ports out to mean any port)")
		}
		out = append(out, PortRange{Lo: a, Hi: b})
	}
	return out
}

func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, strconv.ErrSyntax
	}
	v, err := strconv.ParseUint(s, 10, 16)
	return uint16(v), err
}

func (l *loader) clients(n *yaml.Node, p *Policy) {
	for _, item := range l.seq(n, "clients") {
		item = l.node(item)
		// Default and mode are inherited from the top level once every
		// file is read (see LoadWith).
		c := Client{}
		rs := &ruleset{}
		var defN, modeN *yaml.Node
		seen := l.mapping(item, "a clients entry", []field{
			{"name", func(k, v *yaml.Node) {
				if s, ok := l.str(v, "name"); ok {
					if s == "" || s == "default" {
						l.errf(l.node(v), "a client's name must not be empty or %q", "default")
					} else {
						l.clientName(v, s)
					}
					c.Name = s
				}
			}},
			{"sources", func(k, v *yaml.Node) { c.Sources = l.prefixes(v, "sources") }},
			{"users", func(k, v *yaml.Node) {
				for _, u := range l.seq(v, "users") {
					if s, ok := l.str(u, "a user"); ok {
						c.Users = append(c.Users, s)
					}
				}
			}},
			{"default", func(k, v *yaml.Node) { c.Default, defN = l.verdict(v, "default"), l.node(v) }},
			{"mode", func(k, v *yaml.Node) { c.Mode, modeN = l.mode(v, "mode"), l.node(v) }},
			{"allow", func(k, v *yaml.Node) { rs.rules = append(rs.rules, l.rules(v, Allow, "allow")...) }},
			{"deny", func(k, v *yaml.Node) { rs.rules = append(rs.rules, l.rules(v, Deny, "deny")...) }},
		})
		if item.Kind != yaml.MappingNode {
			continue
		}
		if seen["name"] == nil {
			l.required(item, "a clients entry needs a name", "name")
		}
		if seen["sources"] == nil && seen["users"] == nil {
			l.required(item, "a clients entry needs sources or users to select its clients", "sources", "users")
		}
		if u := seen["users"]; u != nil && seen["sources"] == nil {
			// egress does not check proxy passwords: the user name only
			// selects the entry, so any client can claim it.
			l.warnf(l.file, u.Line, u.Column, "users without sources: egress does not authenticate proxy users, so any client that can reach egress may send this user name and get this entry's rules; add sources")
		}
		rs.name, rs.def, rs.mode = c.Name, c.Default, c.Mode
		p.Clients = append(p.Clients, c)
		p.clientSets = append(p.clientSets, rs)
		l.fs.clientsSet = append(l.fs.clientsSet, clientAt{file: l.file, layer: l.layer, def: defN, mode: modeN})
	}
}

func (l *loader) addr(n *yaml.Node, what string) string {
	s, ok := l.str(n, what)
	if !ok || s == "" {
		return ""
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		l.errf(l.node(n), "%s %q: want IP:PORT such as 127.0.0.1:3128 or [::1]:3128 (or \"\" for off)", what, s)
		return ""
	}
	if !ap.Addr().Unmap().IsLoopback() {
		l.fs.listens = append(l.fs.listens, listenAt{file: l.file, node: l.node(n), field: what})
	}
	return s
}

func (l *loader) listen(n *yaml.Node, ls *Listen) {
	var ppKey, racKey *yaml.Node
	l.mapping(n, "listen", []field{
		{"http", func(k, v *yaml.Node) { ls.HTTP = l.addr(v, "listen.http") }},
		{"dns", func(k, v *yaml.Node) { ls.DNS = l.addr(v, "listen.dns") }},
		{"transparent", func(k, v *yaml.Node) { ls.Transparent = l.addr(v, "listen.transparent") }},
		{"admin", func(k, v *yaml.Node) { ls.Admin = l.addr(v, "listen.admin") }},
		{"proxy_protocol", func(k, v *yaml.Node) { ls.ProxyProtocol = l.boolean(v, "listen.proxy_protocol"); ppKey = k }},
		{"proxy_protocol_from", func(k, v *yaml.Node) { ls.ProxyProtocolFrom = l.prefixes(v, "listen.proxy_protocol_from") }},
		{"refuse_at_connect", func(k, v *yaml.Node) { ls.RefuseAtConnect = l.users(v, "listen.refuse_at_connect"); racKey = k }},
		{"via", func(k, v *yaml.Node) { ls.Via = l.boolean(v, "listen.via") }},
	})
	if len(ls.RefuseAtConnect) > 0 && ls.Transparent == "" {
		l.errf(racKey, "listen.refuse_at_connect needs listen.transparent: the filter passes what the transparent listener may allow")
	}
	if ls.ProxyProtocol && len(ls.ProxyProtocolFrom) == 0 {
		// Anyone who may send a header may claim any client address,
		// and with it another client's policy or a way past allow_from.
		l.errf(ppKey, "listen.proxy_protocol needs listen.proxy_protocol_from: the addresses of the load balancers allowed to send PROXY headers")
	}
}

// users reads a list of user names or numeric uids.
func (l *loader) users(n *yaml.Node, what string) []string {
	var out []string
	for _, u := range l.seq(n, what) {
		if un := l.node(u); un.Kind == yaml.ScalarNode && un.Tag == "!!int" {
			u = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: un.Value, Line: un.Line, Column: un.Column}
		}
		s, ok := l.str(u, "a user")
		if !ok {
			continue
		}
		if !validUser(s) {
			l.errf(l.node(u), "%s: %q is not a user name or uid (such as plugin or 1001)", what, s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// validUser reports whether s can be a user name (POSIX portable
// characters, not starting with '-') or a uid.
func validUser(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (l *loader) log(n *yaml.Node, lg *Log) {
	l.mapping(n, "log", []field{
		{"format", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "log.format", "json", "console"); ok {
				lg.Format = s
			}
		}},
		{"level", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "log.level", "debug", "info", "warn", "error"); ok {
				lg.Level = s
			}
		}},
		{"allowed", func(k, v *yaml.Node) { lg.Allowed = l.boolean(v, "log.allowed") }},
		{"file", func(k, v *yaml.Node) { lg.File, _ = l.str(v, "log.file") }},
	})
}

func (l *loader) dns(n *yaml.Node, d *DNS) {
	var minKey *yaml.Node
	l.mapping(n, "dns", []field{
		{"upstreams", func(k, v *yaml.Node) {
			d.Upstreams = nil
			for _, u := range l.seq(v, "dns.upstreams") {
				s, ok := l.str(u, "a dns upstream")
				if !ok {
					continue
				}
				if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
					s = netip.AddrPortFrom(a, 53).String()
				} else if _, err := netip.ParseAddrPort(s); err != nil {
					l.errf(l.node(u), "dns upstream %q: want IP or IP:PORT such as 192.0.2.53:53", s)
					continue
				}
				d.Upstreams = append(d.Upstreams, s)
			}
		}},
		{"timeout", func(k, v *yaml.Node) {
			if t, ok := l.duration(v, "dns.timeout"); ok {
				if t == 0 {
					l.errf(l.node(v), "dns.timeout must be more than 0")
				}
				d.Timeout = t
			}
		}},
		{"blocked", func(k, v *yaml.Node) {
			if s, ok := l.enum(v, "dns.blocked", "nxdomain", "refused", "empty"); ok {
				d.Blocked = s
			}
		}},
		{"min_ttl", func(k, v *yaml.Node) { minKey = k; d.MinTTL, _ = l.duration(v, "dns.min_ttl") }},
		{"max_ttl", func(k, v *yaml.Node) { d.MaxTTL, _ = l.duration(v, "dns.max_ttl") }},
		{"resolve_unlisted", func(k, v *yaml.Node) { d.ResolveUnlisted = l.boolean(v, "dns.resolve_unlisted") }},
		{"cache_size", func(k, v *yaml.Node) {
			if c, ok := l.integer(v, "dns.cache_size"); ok {
				if c < 0 {
					l.errf(l.node(v), "dns.cache_size must not be negative")
				}
				d.CacheSize = c
			}
		}},
	})
	if d.MinTTL > d.MaxTTL {
		l.errf(minKey, "dns.min_ttl %s is more than dns.max_ttl %s", d.MinTTL, d.MaxTTL)
	}
}

func (l *loader) timeouts(n *yaml.Node, t *Timeouts) {
	positive := func(dst *time.Duration, what string) func(k, v *yaml.Node) {
		return func(k, v *yaml.Node) {
			if d, ok := l.duration(v, what); ok {
				if d == 0 {
					l.errf(l.node(v), "%s must be more than 0", what)
				}
				*dst = d
			}
		}
	}
	l.mapping(n, "timeouts", []field{
		{"dial", positive(&t.Dial, "timeouts.dial")},
		{"header", positive(&t.Header, "timeouts.header")},
		{"response", positive(&t.Response, "timeouts.response")},
		{"tunnel_idle", func(k, v *yaml.Node) { t.TunnelIdle, _ = l.duration(v, "timeouts.tunnel_idle") }},
		{"half_close", positive(&t.HalfClose, "timeouts.half_close")},
		{"drain", func(k, v *yaml.Node) { t.Drain, _ = l.duration(v, "timeouts.drain") }},
	})
}

func (l *loader) limits(n *yaml.Node, lm *Limits) {
	positive := func(dst *int, what string) func(k, v *yaml.Node) {
		return func(k, v *yaml.Node) {
			if c, ok := l.integer(v, what); ok {
				if c <= 0 {
					l.errf(l.node(v), "%s must be more than 0", what)
				}
				*dst = c
			}
		}
	}
	l.mapping(n, "limits", []field{
		{"max_tunnels", positive(&lm.MaxTunnels, "limits.max_tunnels")},
		{"max_header_bytes", positive(&lm.MaxHeaderBytes, "limits.max_header_bytes")},
	})
}

func (l *loader) reload(n *yaml.Node, r *Reload) {
	l.mapping(n, "reload", []field{
		{"revoke_open", func(k, v *yaml.Node) { r.RevokeOpen = l.boolean(v, "reload.revoke_open") }},
	})
}
