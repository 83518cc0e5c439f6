package policy

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		err            error
	}{
		{"a plain path is its own normal form", "/v1/license", "/v1/license", nil},
		{"the root stays the root", "/", "/", nil},
		{"a trailing slash is kept", "/v1/status/", "/v1/status/", nil},
		{"a dot-dot segment removes the one before it", "/ok/../admin", "/admin", nil},
		{"encoded dots are decoded and then removed", "/v1/%2e%2e/admin", "/admin", nil},
		{"upper-case encoded dots are removed too", "/v1/%2E%2E/admin", "/admin", nil},
		{"a single dot segment is removed", "/v1/./status", "/v1/status", nil},
		{"a trailing dot-dot leaves a trailing slash", "/v1/a/..", "/v1/", nil},
		{"dot-dot above the root stays at the root", "/../../etc", "/etc", nil},
		{"repeated slashes are folded", "//admin", "/admin", nil},
		{"repeated slashes inside are folded", "/v1///status//x", "/v1/status/x", nil},
		{"encoded unreserved letters are decoded", "/v1/%6Cicense", "/v1/license", nil},
		{"an encoded colon is decoded, as servers decode it", "/v1/jobs/1%3apurge", "/v1/jobs/1:purge", nil},
		{"encoded sub-delims and at signs are decoded", "/a%40b%2B%21%24%26%27%28%29%2A%2C%3D", "/a@b+!$&'()*,=", nil},
		{"an encoded percent sign stays encoded, in upper case", "/a%25zz", "/a%25zz", nil},
		{"an encoded question mark, hash and space stay encoded", "/a%3f%23%20", "/a%3F%23%20", nil},
		{"a raw character a path may not carry is encoded", "/a|b", "/a%7Cb", nil},
		{"raw UTF-8 is encoded", "/caf\u00e9", "/caf%C3%A9", nil},
		{"encoded UTF-8 is kept", "/caf%c3%a9", "/caf%C3%A9", nil},
		{"a dot segment inside a name is a name", "/v1/..a/x", "/v1/..a/x", nil},
		{"semicolon parameters on an ordinary segment are refused", "/v1/admin;x/y", "", ErrPathParams},
		{"an encoded semicolon is refused", "/v1/admin%3bx/y", "", ErrPathParams},
		{"an encoded slash is refused", "/v1/a%2fb", "", ErrPathEncodedSep},
		{"an encoded backslash is refused", "/v1/a%5Cb", "", ErrPathEncodedSep},
		{"an encoded NUL is refused", "/v1/a%00", "", ErrPathEncodedSep},
		{"a raw backslash is refused", "/v1\\..\\admin", "", ErrPathBackslash},
		{"invalid UTF-8 is refused", "/a%ff", "", ErrPathUTF8},
		{"an overlong UTF-8 dot is refused", "/%c0%ae%c0%ae/admin", "", ErrPathUTF8},
		{"dot-dot with parameters is refused", "/v1/..;/admin", "", ErrPathParams},
		{"encoded dot-dot with parameters is refused", "/v1/%2e%2e;x/admin", "", ErrPathParams},
		{"a single dot with parameters is refused", "/v1/.;x/admin", "", ErrPathParams},
		{"a bad escape is refused", "/v1/%zz", "", ErrPathBadEscape},
		{"a truncated escape is refused", "/v1/%4", "", ErrPathBadEscape},
		{"a control character is refused", "/v1/a\tb", "", ErrPathControl},
		{"an encoded control character is refused", "/v1/a%0d%0aX: y", "", ErrPathControl},
		{"a query is refused, not matched", "/v1/license?x=1", "", ErrPathQuery},
		{"a path must start with a slash", "v1/license", "", ErrPathEmpty},
		{"an empty path is refused", "", "", ErrPathEmpty},
		{"an asterisk-form target is refused", "*", "", ErrPathEmpty},
		{"a very long path is refused", "/" + strings.Repeat("a", maxPathLen), "", ErrPathTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NormalizePath(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("NormalizePath(%q) = %q, %v; want error %v", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestPathPatterns(t *testing.T) {
	for _, tc := range []struct {
		name, pattern string
		match, miss   []string
	}{
		{"an exact path matches itself only", "/v1/license", []string{"/v1/license"}, []string{"/v1/license/", "/v1/License", "/v1/licenses", "/v1"}},
		{"a trailing slash is significant", "/v1/", []string{"/v1/"}, []string{"/v1", "/v1/x"}},
		{"a star is exactly one non-empty segment", "/v1/status/*", []string{"/v1/status/a", "/v1/status/x.json"}, []string{"/v1/status", "/v1/status/", "/v1/status/a/b", "/v1/status/a/"}},
		{"a star in the middle", "/v1/*/status", []string{"/v1/db/status"}, []string{"/v1//status", "/v1/status", "/v1/a/b/status"}},
		{"a trailing double star is any number of segments, zero included", "/v1/**", []string{"/v1", "/v1/", "/v1/a", "/v1/a/b/c/"}, []string{"/v10", "/", "/v2/a"}},
		{"the root double star matches every path", "/**", []string{"/", "/a", "/a/b/"}, nil},
		{"the root matches the root only", "/", []string{"/"}, []string{"/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pp, msg := compilePattern(tc.pattern)
			if pp == nil {
				t.Fatalf("compilePattern(%q): %s", tc.pattern, msg)
			}
			for _, p := range tc.match {
				if !pp.match(p) {
					t.Errorf("%q does not match %q", tc.pattern, p)
				}
			}
			for _, p := range tc.miss {
				if pp.match(p) {
					t.Errorf("%q matches %q", tc.pattern, p)
				}
			}
		})
	}
	for _, tc := range []struct{ name, pattern, want string }{
		{"a query in a pattern is refused", "/v1/x?a=1", "query string is never matched"},
		{"a double star in the middle is refused", "/v1/**/x", "at the end only"},
		{"a star inside a segment is refused", "/v1/*.json", "whole segment"},
		{"a pattern not in normal form gives the normal form", "/v1//x", `write "/v1/x"`},
		{"a pattern with dot segments gives the normal form", "/v1/../x", `write "/x"`},
		{"a relative pattern is refused", "v1/x", "starts with /"},
		{"an encoded slash in a pattern is refused", "/a%2Fb", "encoded slash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if pp, msg := compilePattern(tc.pattern); pp != nil || !strings.Contains(msg, tc.want) {
				t.Fatalf("compilePattern(%q) = %v, %q; want an error with %q", tc.pattern, pp, msg, tc.want)
			}
		})
	}
}

// The normal form is a fixed point, carries no dot segment, no repeated
// slash, no backslash and no raw byte outside pchar, and decodes to
// UTF-8; anything else is refused.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/v1/license", "/ok/../admin", "/%2e%2e/x", "//admin", "/a%2Fb", "/..;/x",
		"/caf\u00e9", "/a%ff", "/a/./b/", "/%2E./x", "/.%2e/x", "/a;b/..", "/a\\b", "/~%7E%7e", "/1%3Apurge%40%25"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizePath(in)
		if err != nil {
			return
		}
		if again, err := NormalizePath(out); err != nil || again != out {
			t.Fatalf("NormalizePath(%q) = %q, and again %q, %v", in, out, again, err)
		}
		if out[0] != '/' || strings.Contains(out, "//") || strings.Contains(out, "\\") {
			t.Fatalf("NormalizePath(%q) = %q", in, out)
		}
		for _, seg := range strings.Split(out[1:], "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q) = %q keeps a dot segment", in, out)
			}
		}
		for i := 0; i < len(out); i++ {
			if c := out[i]; c != '/' && c != '%' && !isPathChar(c) || c == ';' {
				t.Fatalf("NormalizePath(%q) = %q holds byte %#x raw", in, out, c)
			}
			// What a segment may carry raw is never left encoded.
			if out[i] == '%' {
				if v := unhex(out[i+1])<<4 | unhex(out[i+2]); isPathChar(v) {
					t.Fatalf("NormalizePath(%q) = %q keeps %s encoded", in, out, out[i:i+3])
				}
			}
		}
		if !utf8.ValidString(out) {
			t.Fatalf("NormalizePath(%q) = %q is not UTF-8", in, out)
		}
		// The meaning is kept: a server that decodes and then cleans
		// the path (Go's, most frameworks) reads the same path in both.
		a, errA := url.PathUnescape(in)
		b, errB := url.PathUnescape(out)
		if errA != nil || errB != nil || path.Clean(a) != path.Clean(b) {
			t.Fatalf("NormalizePath(%q) = %q: decoded and cleaned, %q and %q (%v, %v)", in, out, path.Clean(a), path.Clean(b), errA, errB)
		}
	})
}
