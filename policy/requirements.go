package policy

import (
	"net/url"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// A requirements manifest is what a plugin ships to say where it needs to
// connect. It is JSON (read here as YAML, a superset, to keep every
// position for errors); a Python helper reads the same file, so the format
// is fixed:
//
//	{
//	  "plugin": "example-dbms",
//	  "requirements": [
//	    {"host": "api.example.com", "port": 443, "protocol": "https", "purpose": "DBMS REST API", "required": true},
//	    {"host": "db.corp.example", "port": 5432, "protocol": "tcp", "via": "direct"},
//	    {"url": "https://api.vendor.example/v1/license", "method": "GET"}
//	  ]
//	}
//
// An entry with url (http or https) is a request: its host, port and
// protocol come from the URL, and it is decided on its method (GET by
// default) and path as egress decides requests to a host with http:
// request rules (issue 20).

// Requirements is a plugin's network requirements manifest.
type Requirements struct {
	File   string // the name diagnostics and output cite
	Plugin string // optional
	List   []Requirement
}

// Requirement is one destination a plugin needs.
type Requirement struct {
	// Host is a name or an IP literal, as written in the manifest (Decide
	// normalises it).
	Host string
	Port uint16
	// Protocol is tcp, tls, http or https; when the manifest leaves it out,
	// https for port 443, http for 80, else tcp.
	Protocol string
	Purpose  string
	// Required is false for a requirement the plugin can do without
	// (telemetry, say); true unless the manifest says otherwise.
	Required bool
	// Via is the path the plugin's client takes: "direct" (a raw connect:
	// egress run's transparent path, a host's redirect), "proxy"
	// (HTTPS_PROXY), or "" when the manifest leaves it out (the Python
	// helper then checks an IP literal directly, a name through the
	// environment's proxy if any). The policy decides both paths alike.
	Via string
	// URL, for a request requirement, is the URL as written; Method its
	// method (GET by default) and Path the URL's path as written, without
	// the query (Decide normalises it). All "" for a connection.
	URL, Method, Path string
	// Where the requirement was written.
	Line, Column int
}

// Request is the policy request for r: its name and port, any client.
// A request requirement (URL) adds its method and path.
func (r Requirement) Request() Request {
	return Request{Host: r.Host, Port: r.Port, Method: r.Method, Path: r.Path}
}

// Protocols a requirement may name.
var requirementProtocols = []string{"tcp", "tls", "http", "https"}

// defaultProtocol is the protocol of a requirement that names none.
func defaultProtocol(port uint16) string {
	switch port {
	case 443:
		return "https"
	case 80:
		return "http"
	}
	return "tcp"
}

// LoadRequirements parses a requirements manifest. file names it in
// diagnostics. A non-nil error is an Errors listing every problem, as
// FILE:LINE:COL: message: unknown fields (with a suggestion), wrong types, a
// missing or invalid host, a port outside 1-65535, an unknown protocol.
func LoadRequirements(file string, data []byte) (rs *Requirements, err error) {
	rs = &Requirements{File: file}
	if errs := load(file, data, func(l *loader) { l.requirements(data, rs) }); errs != nil {
		return nil, errs
	}
	return rs, nil
}

func (l *loader) requirements(data []byte, rs *Requirements) {
	doc := l.document(data, `the file is empty: want {"requirements": [{"host": ..., "port": ...}]}`,
		"a requirements file holds one document; remove the second one")
	if doc == nil {
		return
	}
	root := doc.Content[0]
	seen := l.mapping(root, "the requirements file", []field{
		{"plugin", func(k, v *yaml.Node) { rs.Plugin, _ = l.text(v, "plugin") }},
		{"requirements", func(k, v *yaml.Node) {
			for _, item := range l.seq(v, "requirements") {
				if l.budget < 0 {
					return
				}
				if r, ok := l.requirement(item); ok {
					rs.List = append(rs.List, r)
				}
			}
		}},
	})
	if l.node(root).Kind == yaml.MappingNode && seen["requirements"] == nil {
		l.required(root, `requirements is required: add "requirements": [] (a list of {"host": ..., "port": ...})`)
	}
}

// requirementFields names the fields of a requirement, for suggestions.
var requirementFields = []field{{name: "host"}, {name: "port"}, {name: "url"}, {name: "method"}, {name: "protocol"}, {name: "purpose"}, {name: "required"}, {name: "via"}}

func (l *loader) requirement(n *yaml.Node) (Requirement, bool) {
	n = l.node(n)
	r := Requirement{Required: true, Line: n.Line, Column: n.Column}
	if n.Kind != yaml.MappingNode {
		l.errf(n, `a requirement must be a mapping such as {"host": "api.example.com", "port": 443}, not %s`, kindName(n))
		return r, false
	}
	nerr := len(l.errs)
	var protocol *yaml.Node
	fns := map[string]func(v *yaml.Node){
		"host": func(v *yaml.Node) {
			s, ok := l.str(v, "host")
			if !ok {
				return
			}
			if _, _, err := NormalizeHost(s); err != nil {
				l.errf(l.node(v), "host %q is not a host name or IP address", s)
				return
			}
			r.Host = s
		},
		"port": func(v *yaml.Node) {
			p, ok := l.integer(v, "port")
			if !ok {
				return
			}
			if p < 1 || p > 65535 {
				l.errf(l.node(v), "port must be 1 to 65535, not %d", p)
				return
			}
			r.Port = uint16(p)
		},
		"protocol": func(v *yaml.Node) {
			protocol = v
			r.Protocol, _ = l.enum(v, "protocol", requirementProtocols...)
		},
		"purpose":  func(v *yaml.Node) { r.Purpose, _ = l.text(v, "purpose") },
		"required": func(v *yaml.Node) { r.Required = l.boolean(v, "required") },
		"via":      func(v *yaml.Node) { r.Via, _ = l.enum(v, "via", "direct", "proxy") },
		"url":      func(v *yaml.Node) { l.requirementURL(v, &r) },
		"method": func(v *yaml.Node) {
			s, ok := l.str(v, "method")
			switch {
			case !ok:
				return
			case !isToken(s):
				l.errf(l.node(v), "method %q is not an HTTP method such as GET or POST", s)
			case strings.ToUpper(s) != s:
				l.errf(l.node(v), "method %q: methods match exactly and are upper case: write %s", s, strings.ToUpper(s))
			default:
				r.Method = s
			}
		},
	}
	fields := make([]field, len(requirementFields))
	for i, f := range requirementFields {
		fn := fns[f.name]
		fields[i] = field{f.name, func(k, v *yaml.Node) { fn(v) }}
	}
	seen := l.mapping(n, "a requirement", fields)
	if u := seen["url"]; u != nil {
		// The URL says where: a second say could disagree with it.
		for _, f := range []string{"host", "port", "protocol"} {
			if k := seen[f]; k != nil {
				l.errf(k, "a requirement with url takes its %s from the URL: remove %s", f, f)
			}
		}
		if len(l.errs) > nerr {
			return r, false
		}
		if r.Method == "" {
			r.Method = "GET"
		}
		return r, true
	}
	if k := seen["method"]; k != nil {
		l.errf(k, `method needs a url: {"url": "https://host/path", "method": "GET"}`)
	}
	if seen["host"] == nil {
		l.required(n, "a requirement needs a host (or a url)", "host")
	}
	if seen["port"] == nil {
		l.required(n, "a requirement needs a port (1 to 65535)", "port")
	}
	if len(l.errs) > nerr || seen["host"] == nil || seen["port"] == nil {
		return r, false
	}
	if protocol == nil {
		r.Protocol = defaultProtocol(r.Port)
	}
	return r, true
}

// requirementURL reads a requirement's url: http or https, a host, no
// credentials, a path egress can decide (NormalizePath); the query is
// sent by whoever checks it, never decided.
func (l *loader) requirementURL(v *yaml.Node, r *Requirement) {
	s, ok := l.str(v, "url")
	if !ok {
		return
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		l.errf(l.node(v), "url %q is not a URL", s)
		return
	case u.Scheme != "http" && u.Scheme != "https":
		l.errf(l.node(v), `url %q: a requirement's url is http:// or https://; for another protocol write {"host": ..., "port": ...}`, s)
		return
	case u.User != nil:
		l.errf(l.node(v), "url %q holds credentials: a manifest names where, never a secret", s)
		return
	case u.Fragment != "" || strings.Contains(s, "#"):
		l.errf(l.node(v), "url %q has a #fragment, which is never sent: remove it", s)
		return
	}
	if _, _, err := NormalizeHost(u.Hostname()); err != nil || u.Hostname() == "" {
		l.errf(l.node(v), "url %q: the host is not a host name or IP address", s)
		return
	}
	port, _ := SchemePort(u.Scheme)
	if p := u.Port(); p != "" {
		n, err := parsePort(p)
		if err != nil || n == 0 {
			l.errf(l.node(v), "url %q: port must be 1 to 65535", s)
			return
		}
		port = n
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if _, err := NormalizePath(path); err != nil {
		l.errf(l.node(v), "url %q: egress refuses this path: %v", s, err)
		return
	}
	r.URL, r.Host, r.Port, r.Protocol, r.Path = s, u.Hostname(), port, u.Scheme, path
}

// maxTextLen bounds the free text of a manifest (plugin, purpose).
const maxTextLen = 200

// text reads a one-line string of printable characters: the manifest
// comes from a plugin, and egress check prints its text among the rules
// it tells an operator to paste, so a line break or a terminal control
// sequence in it could forge a rule.
func (l *loader) text(n *yaml.Node, what string) (string, bool) {
	s, ok := l.str(n, what)
	if !ok {
		return "", false
	}
	if len(s) > maxTextLen {
		l.errf(l.node(n), "%s is longer than %d bytes", what, maxTextLen)
		return "", false
	}
	for _, r := range s {
		// Graphic: letters, marks, numbers, punctuation, symbols and
		// spaces; not controls, nor format characters (bidi overrides
		// and isolates, zero-width ones, U+FEFF) that reorder or hide
		// what a reader of a log or a 403 sees, nor private-use or
		// unassigned ones. U+2028 and U+2029 are line breaks.
		if !unicode.IsGraphic(r) || r == 0x2028 || r == 0x2029 {
			l.errf(l.node(n), "%s must be one line of printable text: it has %q", what, r)
			return "", false
		}
	}
	return s, true
}
