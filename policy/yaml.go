package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"

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
