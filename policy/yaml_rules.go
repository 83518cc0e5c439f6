package policy

import (
	"strings"

	"golang.org/x/net/idna"
	"gopkg.in/yaml.v3"
)

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
