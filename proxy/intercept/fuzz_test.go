package intercept_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/proxy/intercept"
)

// FuzzRequestPath: whatever request line net/http accepts, the path
// Decide decides on is the target's path as sent, without the query:
// what net/http itself reads as the path once unescaped.
func FuzzRequestPath(f *testing.F) {
	for _, s := range []string{"/v1/license", "/a?b=c", "https://h.test/x/y?z", "http://h.test", "*", "/%2e%2e/admin", "//admin", "/a;b/..;/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: h.test\r\n\r\n")))
		if err != nil {
			return
		}
		p := intercept.RequestPath(r)
		if strings.Contains(p, "?") {
			t.Fatalf("%q: path %q holds the query", target, p)
		}
		if strings.HasPrefix(r.RequestURI, "/") && !strings.HasPrefix(r.RequestURI, p) {
			t.Fatalf("%q: path %q is not what was sent", target, p)
		}
		if r.URL.Opaque == "" && p != "" && strings.HasPrefix(p, "/") && r.URL.EscapedPath() != p && r.URL.Path != "" {
			// net/http's own reading of the path must be the same
			// bytes once escaping is undone.
			if unesc := r.URL.Path; unescape(p) != unesc {
				t.Fatalf("%q: egress decides on %q, net/http reads %q", target, p, unesc)
			}
		}
	})
}

func unescape(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			var v byte
			ok := true
			for _, c := range []byte{p[i+1], p[i+2]} {
				switch {
				case c >= '0' && c <= '9':
					v = v<<4 | (c - '0')
				case c >= 'a' && c <= 'f':
					v = v<<4 | (c - 'a' + 10)
				case c >= 'A' && c <= 'F':
					v = v<<4 | (c - 'A' + 10)
				default:
					ok = false
				}
			}
			if ok {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
