package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// healthzServer answers /healthz with 200 ok, anything else 404.
func healthzServer(t *testing.T) *httptest.Server {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("ok\n"))
	}))
	t.Cleanup(ok.Close)
	return ok
}

func TestHealth(t *testing.T) {
	ok := healthzServer(t)
	unhealthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	defer unhealthy.Close()
	hang := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer hanging.Close()
	defer close(hang)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/healthz"
	ln.Close()

	tests := []struct {
		name     string
		args     []string
		want     int
		inStderr string
	}{
		{"a 200 from /healthz is healthy", []string{ok.URL + "/healthz"}, 0, ""},
		{"a 404 is unhealthy", []string{ok.URL + "/nope"}, 1, "404 Not Found"},
		{"a 503 is unhealthy", []string{unhealthy.URL + "/healthz"}, 1, "503 Service Unavailable"},
		{"a closed port is unhealthy", []string{closed}, 1, "connection refused"},
		{"a server that never answers is unhealthy within the timeout", []string{"-timeout", "200ms", hanging.URL + "/healthz"}, 1, "deadline exceeded"},
		{"host:port alone means its /healthz", []string{strings.TrimPrefix(ok.URL, "http://")}, 0, ""},
		{"a URL without a path means its /healthz", []string{ok.URL}, 0, ""},
		{"two URLs are a usage error", []string{ok.URL, ok.URL}, 1, "egress health: one URL at most\n\nusage"},
		{"--config and a URL are a usage error", []string{"--config", "policy.yaml", ok.URL}, 1, "egress health: --config FILE or a URL, not both\n\nusage"},
		{"a closed port says nothing listens there", []string{closed}, 1, "egress health: " + closed + ": connection refused: nothing listens there"},
		{"a silent server says how long it waited", []string{"-timeout", "200ms", hanging.URL + "/healthz"}, 1, "no answer within 200ms"},
		{"a bad URL is a usage error", []string{"http://[::1"}, 1, "egress health"},
		{"a bad flag exits 1, not Docker's reserved 2", []string{"--nope"}, 1, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			start := time.Now()
			if got := probe(tt.args, &stdout, &stderr); got != tt.want {
				t.Errorf("exit %d, want %d (stderr %q)", got, tt.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.inStderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.inStderr)
			}
			// A healthy check says so in one line; an unhealthy one on stderr.
			if lines := strings.Count(stdout.String(), "\n"); (tt.want == 0) != (lines == 1) || lines > 1 {
				t.Errorf("stdout %q: want one line when healthy, none otherwise", stdout.String())
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v: the probe must give up on its own", d)
			}
		})
	}
}

func TestHealthHelpShowsURL(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"health", "-h"}, &stdout, &stderr); code != exitOK {
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{"[--config FILE | URL]", "Default URL: http://127.0.0.1:9090/healthz", "listen.admin"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("egress health -h lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestHealthConfig: with --config, egress health asks the admin listener
// the policy names, as the image's HEALTHCHECK does.
func TestHealthConfig(t *testing.T) {
	ok := healthzServer(t)
	port := ok.URL[strings.LastIndex(ok.URL, ":")+1:]
	tests := []struct {
		name, admin string
		want        int
		out         string
	}{
		{"listen.admin on loopback is asked there", "127.0.0.1:" + port, 0, "http://127.0.0.1:" + port + "/healthz answered 200 OK"},
		{"listen.admin on every address is asked on loopback", "0.0.0.0:" + port, 0, "http://127.0.0.1:" + port + "/healthz answered 200 OK"},
		{"listen.admin off is an error", `""`, 1, "listen.admin is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeConfig(t, "version: 1\ndefault: deny\nlisten:\n  admin: "+tt.admin+"\n")
			var stdout, stderr bytes.Buffer
			if code := probe([]string{"--config", cfg}, &stdout, &stderr); code != tt.want {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.want, stderr.String())
			}
			if got := stdout.String() + stderr.String(); !strings.Contains(got, tt.out) {
				t.Errorf("output %q lacks %q", got, tt.out)
			}
		})
	}
}

// TestHealthConfigBroken (issue 21): a policy file broken since egress
// started (egress serves its last good policy) must not make a healthy
// egress unhealthy: listen.admin is read leniently, or the default asked,
// and a line says so; the exit is 0 or 1, never Docker's reserved 2.
func TestHealthConfigBroken(t *testing.T) {
	ok := healthzServer(t)
	admin := strings.TrimPrefix(ok.URL, "http://")
	tests := []struct {
		name  string
		files map[string]string
		want  int
		note  string
	}{
		{"a policy with an error still names its admin listener", map[string]string{
			"policy.yaml": "version: 1\ndefault: deny\nallow:\n  - hots: a.example.com\nlisten:\n  admin: " + admin + "\n"},
			0, "policy.yaml:4:5: unknown field \"hots\""},
		{"listen of another shape elsewhere still yields listen.admin", map[string]string{
			"policy.yaml": "version: 1\ndefault: maybe\nlog: [x]\nlisten: {admin: " + admin + ", http: 3128}\n"},
			0, "asking the listen.admin the file writes, \"" + admin + "\""},
		{"an included file's listen.admin counts", map[string]string{
			"policy.yaml": "version: 1\ninclude: [base.yaml]\ndefault: sometimes\n",
			"base.yaml":   "version: 1\nlisten:\n  admin: " + admin + "\n"},
			0, "asking the listen.admin the file writes"},
		{"a file that is not YAML asks the default", map[string]string{"policy.yaml": "version: [1\n"},
			-1, "asking the default 127.0.0.1:9090"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, text := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var stdout, stderr bytes.Buffer
			code := probe([]string{"--timeout", "500ms", "--config", filepath.Join(dir, "policy.yaml")}, &stdout, &stderr)
			if tt.want >= 0 && code != tt.want || code != 0 && code != 1 {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), "does not load") || !strings.Contains(stderr.String(), tt.note) {
				t.Errorf("stderr %q: want it to say the file does not load, and %q", stderr.String(), tt.note)
			}
		})
	}
}
