package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/egress-proxy/egress/policy"
)

// Request rules learned from intercepted requests (issue 20): the log
// lines of proto https carry each request's method and URL (without the
// query). For a host with such lines, learn writes a rule for the ports
// they came on with http: entries: the paths seen, each method's own,
// generalised a little, and methods grouped by the paths they share.
// inject: is never proposed (a secret is a person's decision).
const (
	// learnSiblings distinct last segments of one method under one
	// parent path (/v1/status/a, /b, /c) become PARENT/* (/v1/status/*).
	learnSiblings = 3
	// learnSubtree: more than this many distinct paths of one method
	// under one first segment (/v1/...) become /FIRST/** (/v1/**).
	learnSubtree = 8
)

// requests is what was seen of a host's intercepted requests.
type requests struct {
	ports   map[uint16]bool           // the ports they came on
	methods map[string]map[string]int // method -> normal path -> count
}

// addRequest learns one request line of d; it reports false for a method
// or URL that cannot be written as a request rule (log text is untrusted).
func (d *dest) addRequest(port uint16, method, rawURL string) bool {
	p, ok := urlPath(rawURL)
	if !ok || !validMethod(method) {
		return false
	}
	n, err := policy.NormalizePath(p)
	if err != nil || strings.ContainsAny(n, "*?#\"") {
		return false
	}
	if d.requests.methods == nil {
		d.requests.ports, d.requests.methods = map[uint16]bool{}, map[string]map[string]int{}
	}
	d.requests.ports[port] = true
	if d.requests.methods[method] == nil {
		d.requests.methods[method] = map[string]int{}
	}
	d.requests.methods[method][n]++
	return true
}

// urlPath is the path of a logged URL (scheme://authority/path).
func urlPath(u string) (string, bool) {
	i := strings.Index(u, "://")
	if i < 0 {
		return "", false
	}
	rest := u[i+3:]
	j := strings.IndexByte(rest, '/')
	if j < 0 {
		return "/", true
	}
	p := rest[j:]
	if k := strings.IndexAny(p, "?#"); k >= 0 {
		p = p[:k]
	}
	return p, true
}

// validMethod: an HTTP method as a request rule names it (RFC 9110 §9: a
// token, matched exactly; a rule's methods are upper case, so egress
// learns only upper-case letters and '-').
func validMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for _, c := range m {
		if !(c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// requestRule is one http: entry to write.
type requestRule struct {
	methods []string
	paths   []string
	seen    int // requests it stands for
}

// requestRules generalises each method's paths (generalizePaths) and
// groups the methods that share a path pattern into one entry.
func (r *requests) requestRules() []requestRule {
	byPattern := map[string][]string{} // pattern -> methods
	seen := map[string]int{}           // pattern -> requests
	for m, paths := range r.methods {
		for orig, pattern := range generalizePaths(paths) {
			if !slices.Contains(byPattern[pattern], m) {
				byPattern[pattern] = append(byPattern[pattern], m)
			}
			seen[pattern] += paths[orig]
		}
	}
	groups := map[string]*requestRule{}
	for pattern, ms := range byPattern {
		slices.Sort(ms)
		key := strings.Join(ms, ",")
		g := groups[key]
		if g == nil {
			g = &requestRule{methods: ms}
			groups[key] = g
		}
		g.paths = append(g.paths, pattern)
		g.seen += seen[pattern]
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]requestRule, 0, len(keys))
	for _, k := range keys {
		g := groups[k]
		slices.Sort(g.paths)
		out = append(out, *g)
	}
	return out
}

// generalizePaths maps each of one method's paths to the pattern that
// allows it: itself; PARENT/* when learnSiblings or more distinct last
// segments were seen under PARENT (a path at least two segments deep);
// /FIRST/** when more than learnSubtree distinct patterns remain under
// its first segment.
func generalizePaths(paths map[string]int) map[string]string {
	out := make(map[string]string, len(paths))
	siblings := map[string]int{}
	for p := range paths {
		out[p] = p
		if parent, ok := splitLast(p); ok {
			siblings[parent]++
		}
	}
	for p := range paths {
		if parent, ok := splitLast(p); ok && siblings[parent] >= learnSiblings {
			out[p] = parent + "/*"
		}
	}
	under := map[string]map[string]bool{} // first segment -> patterns
	for _, pattern := range out {
		if first, ok := firstSegment(pattern); ok {
			if under[first] == nil {
				under[first] = map[string]bool{}
			}
			under[first][pattern] = true
		}
	}
	for p, pattern := range out {
		if first, ok := firstSegment(pattern); ok && len(under[first]) > learnSubtree {
			out[p] = first + "/**"
		}
	}
	return out
}

// splitLast is /a/b of /a/b/c; ok only for a non-empty last segment
// under a parent that is not the root.
func splitLast(p string) (parent string, ok bool) {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 || i == len(p)-1 {
		return "", false
	}
	return p[:i], true
}

// firstSegment is /a of /a/..., for a path below it (not /a itself).
func firstSegment(p string) (string, bool) {
	i := strings.IndexByte(p[1:], '/')
	if i <= 0 {
		return "", false
	}
	return p[:i+1], true
}

// writeHTTP writes rules' http: entries under a rule, indented for it.
func writeHTTP(b *strings.Builder, rules []requestRule) {
	b.WriteString("    http:\n")
	for _, r := range rules {
		quoted := make([]string, len(r.paths))
		for i, p := range r.paths {
			q, _ := json.Marshal(p) // a JSON string is a YAML double-quoted scalar
			quoted[i] = string(q)
		}
		fmt.Fprintf(b, "      # %s\n", count(r.seen, "request"))
		fmt.Fprintf(b, "      - methods: [%s]\n        paths: [%s]\n", strings.Join(r.methods, ", "), strings.Join(quoted, ", "))
	}
}
