package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 20: learn proposes request rules (http:) from intercepted
// requests (proto https lines), never inject:.
func TestLearnProposesRequestRules(t *testing.T) {
	learned, summary := learnGolden(t, "requests")
	got := string(learned)
	if strings.Contains(got, "inject") {
		t.Errorf("learn proposed inject:\n%s", got)
	}
	if want := "egress learn: request rules (http:) for 1 destination from 19 intercepted requests; no inject: (add credentials by hand)\n"; !strings.Contains(summary, want) {
		t.Errorf("summary %q lacks %q", summary, want)
	}

	out := filepath.Join(t.TempDir(), "learned.yaml")
	if err := os.WriteFile(out, learned, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, method, url string
		code              int
	}{
		{"a path seen is allowed", "GET", "https://api.vendor.example/v1/license", exitOK},
		{"siblings seen make one segment allowed", "GET", "https://api.vendor.example/v1/status/d", exitOK},
		{"one segment, not two", "GET", "https://api.vendor.example/v1/status/d/e", exitDenied},
		{"many paths under /v2 make the subtree allowed", "GET", "https://api.vendor.example/v2/z/y/x", exitOK},
		{"a method is allowed only where it was seen", "POST", "https://api.vendor.example/v1/status/a", exitDenied},
		{"methods seen on one path are grouped", "DELETE", "https://api.vendor.example/v1/items/7", exitOK},
		{"a path not seen is refused", "GET", "https://api.vendor.example/v1/admin", exitDenied},
		{"a path that could not be learned is refused", "GET", "https://api.vendor.example/v1/a", exitDenied},
		{"a port without requests stays a tunnel", "GET", "https://api.vendor.example:8022/anything", exitOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			var o, e bytes.Buffer
			if code := run([]string{"check", "--config", out, "--method", c.method, c.url}, &o, &e); code != c.code {
				t.Errorf("check %s %s: exit %d, want %d\n%s%s", c.method, c.url, code, c.code, o.String(), e.String())
			}
		})
	}
}

// Log text is untrusted: a method or path a request rule cannot name is
// counted, never written.
func TestLearnSkipsRequestsARuleCannotName(t *testing.T) {
	l := newLearner()
	for _, c := range []struct{ method, url string }{
		{"get", "https://api.vendor.example/v1/x"},           // rules' methods are upper case
		{"GET /x", "https://api.vendor.example/v1/x"},        // not a token
		{"GET", "https://api.vendor.example/v1/a%2Fb"},       // refused by egress
		{"GET", "https://api.vendor.example/v1/*"},           // a wildcard in a pattern
		{"GET", "https://api.vendor.example/v1/\"x"},         // learned, percent-encoded
		{"GET", "api.vendor.example/v1/x"},                   // no scheme
		{"POST", "https://api.vendor.example/v1/../v2/./ok"}, // learned, normalised
	} {
		b, _ := json.Marshal(map[string]any{"event": "allow", "proto": "https", "host": "api.vendor.example", "port": 443, "ip": "93.184.215.14", "method": c.method, "url": c.url})
		l.line(b)
	}
	if l.badRequests != 5 || l.requestLines != 2 {
		t.Errorf("bad %d, learned %d: want 5 and 2", l.badRequests, l.requestLines)
	}
	d := l.dests["host api.vendor.example"]
	if d == nil || len(d.requests.methods) != 2 || d.requests.methods["POST"]["/v2/ok"] != 1 || d.requests.methods["GET"]["/v1/%22x"] != 1 {
		t.Errorf("learned %+v, want POST /v2/ok and GET /v1/%%22x", d.requests)
	}
}
