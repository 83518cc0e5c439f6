package policy

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Request paths are matched, and forwarded, in one normal form, so that a
// rule means the same thing to egress and to the origin (issue 20):
//
//   - percent-encoding of every character a path segment may carry raw
//     (pchar, RFC 3986 §3.3: unreserved, sub-delims, ':' and '@') is
//     decoded, as Go's ServeMux and most frameworks decode it ("1%3Apurge"
//     is "1:purge"); other percent-encoding ('%', '?', '#', a space, a
//     UTF-8 byte, ...) is kept with upper-case hex (§6.2.2.1), and a
//     character a path may not carry raw (a space, '|', a UTF-8 byte) is
//     percent-encoded;
//   - dot segments are removed (§5.2.4) and repeated slashes folded;
//   - a path whose meaning differs between servers is refused, not
//     normalised: an encoded '/' (%2F), '\' (%5C) or NUL (%00), a raw
//     backslash, invalid UTF-8 once decoded, a control character, and any
//     ';' (raw or encoded as %3B): Tomcat, Jetty and Spring strip ";x"
//     path parameters ("/admin;x/y" is "/admin/y", "..;/admin" is ".."),
//     other servers read them as part of the name.
//
// The query string is never part of the path: a '?' or '#' in the input
// is refused (callers pass the path alone).

// maxPathLen bounds a request path: far above real APIs, below what
// would make matching costly.
const maxPathLen = 8192

// Errors of NormalizePath; errors.Is tells them apart.
var (
	ErrPathEmpty      = errors.New("the path is empty or does not start with /")
	ErrPathTooLong    = errors.New("the path is longer than 8192 bytes")
	ErrPathEncodedSep = errors.New("the path holds an encoded slash, backslash or NUL (%2F, %5C, %00), which servers read differently")
	ErrPathBackslash  = errors.New("the path holds a backslash, which some servers read as a slash")
	ErrPathBadEscape  = errors.New("the path holds a % not followed by two hex digits")
	ErrPathUTF8       = errors.New("the path is not UTF-8 once decoded")
	ErrPathControl    = errors.New("the path holds a control character")
	ErrPathQuery      = errors.New("the path holds ? or #: pass the path without its query")
	ErrPathParams     = errors.New("the path holds a ; (path parameters such as /admin;x), which servers read differently")
)

// NormalizePath returns the normal form of a request path (the path of
// the request target, without the query), or an error saying why the
// path is refused. The normal form is what request rules are matched on
// and what egress forwards.
func NormalizePath(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", ErrPathEmpty
	}
	if len(p) > maxPathLen {
		return "", ErrPathTooLong
	}
	// Fast path: a path of plain characters with no dot segment, no
	// repeated slash and no escape is already normal.
	if isPlainPath(p) {
		return p, nil
	}
	var b strings.Builder
	b.Grow(len(p) + 8)
	// decoded collects the bytes the path stands for, to check UTF-8.
	decoded := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", ErrPathBadEscape
			}
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			i += 2
			switch {
			case v == '/' || v == '\\' || v == 0:
				return "", ErrPathEncodedSep
			case v < 0x20 || v == 0x7f:
				return "", ErrPathControl
			case v == ';':
				return "", ErrPathParams
			case isPathChar(v):
				b.WriteByte(v)
			default:
				writeEscape(&b, v)
			}
			decoded = append(decoded, v)
		case c == '\\':
			return "", ErrPathBackslash
		case c == '?' || c == '#':
			return "", ErrPathQuery
		case c == ';':
			return "", ErrPathParams
		case c < 0x20 || c == 0x7f:
			return "", ErrPathControl
		case c == '/' || isPathChar(c):
			b.WriteByte(c)
			decoded = append(decoded, c)
		default:
			writeEscape(&b, c)
			decoded = append(decoded, c)
		}
	}
	if !utf8.Valid(decoded) {
		return "", ErrPathUTF8
	}
	return removeDots(b.String())
}

// removeDots folds repeated slashes and removes dot segments from an
// escaped path whose only real separators are '/'.
func removeDots(p string) (string, error) {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "":
			trailing = last
		case ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	var b strings.Builder
	b.Grow(len(p))
	for _, s := range out {
		b.WriteByte('/')
		b.WriteString(s)
	}
	if trailing || len(out) == 0 {
		b.WriteByte('/')
	}
	return b.String(), nil
}

// isPlainPath reports whether p needs no rewriting: pchar characters
// other than ';' only, no "//", and no segment that starts with a dot.
func isPlainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			if i+1 < len(p) && (p[i+1] == '/' || p[i+1] == '.') {
				return false
			}
		case c == '%' || c == ';':
			return false
		case !isPathChar(c):
			return false
		}
	}
	return true
}

// isUnreserved: ALPHA DIGIT - . _ ~ (RFC 3986 §2.3).
func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar: what a path segment may carry raw (pchar, RFC 3986 §3.3):
// unreserved, sub-delims, ':' and '@'.
func isPathChar(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	switch c {
	case '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@':
		return true
	}
	return false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func writeEscape(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

// pathPattern is a compiled path pattern: literal segments, "*" for one
// non-empty segment, and a trailing "/**" for any number of segments.
type pathPattern struct {
	text  string
	segs  []string // "*" is a wildcard segment
	rest  bool     // ends in /**
	exact bool     // no wildcard at all
	lits  int      // literal segments
}

// rank orders patterns that match the same path: an exact path over more
// literal segments over '*' over '/**'.
func (pp *pathPattern) rank() int {
	v := pp.lits << 4
	switch {
	case pp.exact:
		v += 1<<30 + 2
	case !pp.rest:
		v++
	}
	return v
}

// compilePattern checks a path pattern and compiles it. A pattern must be
// in normal form (see NormalizePath); the error gives the normal form
// when that is all that is wrong.
func compilePattern(s string) (*pathPattern, string) {
	switch {
	case s == "":
		return nil, "a path pattern is empty: write \"/\" for the root or \"/**\" for every path"
	case strings.ContainsAny(s, "?#"):
		return nil, "the query string is never matched: remove ? and what follows from the pattern"
	case s[0] != '/':
		return nil, "a path pattern starts with /"
	}
	if n, err := NormalizePath(s); err != nil {
		return nil, err.Error()
	} else if n != s {
		return nil, "the pattern is not in normal form (requests are matched once normalised): write " + strconv.Quote(n)
	}
	pp := &pathPattern{text: s, exact: true}
	segs := strings.Split(s[1:], "/")
	for i, seg := range segs {
		switch {
		case seg == "**" && i == len(segs)-1:
			pp.rest, pp.exact = true, false
			continue
		case seg == "**":
			return nil, "** stands for any number of segments at the end only, as in /v1/**"
		case seg == "*":
			pp.exact = false
		case strings.Contains(seg, "*"):
			return nil, "'*' must be a whole segment, as in /v1/*/status"
		default:
			pp.lits++
		}
		pp.segs = append(pp.segs, seg)
	}
	return pp, ""
}

// match reports whether the normal path p matches.
func (pp *pathPattern) match(p string) bool {
	if pp.exact {
		return p == pp.text
	}
	rem, done := p[1:], false
	for _, seg := range pp.segs {
		if done {
			return false
		}
		part, next, more := strings.Cut(rem, "/")
		if seg == "*" {
			if part == "" {
				return false
			}
		} else if seg != part {
			return false
		}
		rem, done = next, !more
	}
	return pp.rest || done
}
