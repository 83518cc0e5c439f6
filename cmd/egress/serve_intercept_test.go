//go:build linux

package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/internal/testwait"
)

// TestServeIntercepts: egress serve with a CA from egress ca init, an
// origin verified against tls.upstream_ca, curl through CONNECT with
// --cacert; a reload changes the request rules and the secret while
// serving.
func TestServeIntercepts(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	const secret, rotated = "serve-secret-42", "serve-secret-rotated"
	dir := t.TempDir()
	caCert, _, err := certs.Init(filepath.Join(dir, "ca"), certs.Options{Names: []string{"api.vendor.test"}})
	if err != nil {
		t.Fatal(err)
	}
	upCA, upPEM, _, _ := certs.Create(certs.Options{})
	os.WriteFile(filepath.Join(dir, "upstream.pem"), upPEM, 0o644)
	var mu sync.Mutex
	var auth []string
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		fmt.Fprintf(w, "origin saw %s %s", r.Method, r.URL.Path)
	}))
	leaf, _ := upCA.Leaf("api.vendor.test")
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	origin.Config.ErrorLog = log.New(io.Discard, "", 0) // CONNECT dials ahead: unused connections close unread
	origin.StartTLS()
	defer origin.Close()
	port := origin.Listener.Addr().(*net.TCPAddr).Port
	upstream := dnsUpstream(t, map[string]string{"api.vendor.test": "127.0.0.1"})
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte(secret+"\n"), 0o600)

	policyFor := func(paths string) string {
		return fmt.Sprintf(`version: 1
default: deny
listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
log:
  allowed: true
tls:
  ca_cert: ca/ca.crt
  ca_key: ca/ca.key
  upstream_ca: upstream.pem
allow:
  - host: api.vendor.test
    ports: [%[1]d]
    http:
      - methods: [GET]
        paths: [%[3]s]
    inject:
      - header: Authorization
        from_file: token
        prefix: "Bearer "
  - cidr: 127.0.0.1/32
    ports: [%[1]d]
dns:
  upstreams: [%[2]q]
`, port, upstream, paths)
	}
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(policyFor(`"/v1/license"`)), 0o600)
	child := startChild(t, "serve", "--config", config)
	proxy := "http://" + child.addr(t, "http")
	url := fmt.Sprintf("https://api.vendor.test:%d", port)

	curl := func(args ...string) string {
		out, _ := exec.Command("curl", append([]string{"-sS", "--path-as-is", "--proxy", proxy, "--cacert", caCert, "-o", "/dev/null", "-w", "%{http_code}"}, args...)...).CombinedOutput()
		return string(out)
	}
	if got := curl(url + "/v1/license"); got != "200" {
		t.Fatalf("allowed: %s", got)
	}
	if got := curl("-X", "POST", url+"/v1/license"); got != "403" {
		t.Errorf("refused by method: %s", got)
	}
	if got := curl(url + "/v1/other"); got != "403" {
		t.Errorf("refused by path: %s", got)
	}
	if got := curl(url + "/v1/license/../other"); got != "403" {
		t.Errorf("a dot segment: %s", got)
	}
	// The status line explains, as every refusal of egress's does.
	head, _ := exec.Command("curl", "-sS", "-i", "--proxy", proxy, "--cacert", caCert, "-X", "POST", url+"/v1/license").CombinedOutput()
	if want := fmt.Sprintf("403 egress denied POST %s/v1/license: no request rule matched; to allow: - {methods: [POST], paths: [\"/v1/license\"]} (id ", url); !strings.Contains(string(head), want) {
		t.Errorf("answer:\n%s\nwant %q", head, want)
	}
	// A client without the CA refuses egress's certificate.
	if out, err := exec.Command("curl", "-sS", "--proxy", proxy, "--capath", t.TempDir(), "--cacert", filepath.Join(dir, "upstream.pem"), url+"/v1/license").CombinedOutput(); err == nil {
		t.Errorf("curl trusted egress without its CA: %s", out)
	}

	// Reload: /v1/other allowed, the secret rotated.
	os.WriteFile(token, []byte(rotated+"\n"), 0o600)
	replaceFile(t, config, policyFor(`"/v1/license", "/v1/other"`))
	testwait.Until(t, 10*time.Second, "the reload to allow /v1/other", func() bool { return curl(url+"/v1/other") == "200" })
	mu.Lock()
	last := auth[len(auth)-1]
	first := auth[0]
	mu.Unlock()
	if first != "Bearer "+secret || last != "Bearer "+rotated {
		t.Errorf("the origin saw %q then %q", first, last)
	}
	logs := child.logText()
	if strings.Contains(logs, secret) || strings.Contains(logs, rotated) {
		t.Error("a secret is in serve's log")
	}
	for _, want := range []string{`"reason":"client_rejected_ca"`, `"reason":"no_request_rule_matched"`, `"injected":["Authorization"]`, `"proto":"https"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve's log lacks %s:\n%s", want, logs)
		}
	}
}
