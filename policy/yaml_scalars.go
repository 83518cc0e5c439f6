package policy

import (
	"fmt"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

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
