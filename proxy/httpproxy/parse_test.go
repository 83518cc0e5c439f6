package httpproxy

import (
	"net/http"
	"testing"
)

// Fuzz the parsers of untrusted input egress adds on top of net/http.
func FuzzSplitTarget(f *testing.F) {
	for _, s := range []string{"db.example.com:5432", "[::1]:443", "0x7f.1:80", "host", "host:0", "host:65536", ":80", "[::1]", "a:b:c", "h:-1", "h:+80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := splitTarget(s)
		if err == nil && (host == "" || port == 0) {
			t.Fatalf("splitTarget(%q) = %q, %d without error", s, host, port)
		}
	})
}

func FuzzProxyUser(f *testing.F) {
	for _, s := range []string{"Basic dmVuZG9yLWE6c2VjcmV0", "basic dmVuZG9yLWE=", "Bearer x", "Basic !!!", "", "Basic"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		proxyUser(http.Header{"Proxy-Authorization": {v}})
	})
}
