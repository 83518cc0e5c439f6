package policy

import (
	"fmt"
	"slices"

	"gopkg.in/yaml.v3"
)

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
