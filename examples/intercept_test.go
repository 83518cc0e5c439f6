package examples

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// keyedAPI is the DBMS REST API that answers only with the vendor's key:
// 401 without it.
type keyedAPI struct {
	*apiOrigin
	withKey atomic.Int32
}

func startKeyedAPI(t *testing.T, key string) *keyedAPI {
	t.Helper()
	caPEM, cert := testCertificates(t)
	a := &keyedAPI{apiOrigin: &apiOrigin{caFile: filepath.Join(t.TempDir(), "vendor-ca.pem")}}
	os.WriteFile(a.caFile, caPEM, 0o644)
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		if r.Header.Get("Authorization") != "Bearer "+key {
			http.Error(w, "no API key", http.StatusUnauthorized)
			return
		}
		a.withKey.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status": "ok", "version": "16.4"}`)
	}))
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	a.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	a.port = a.srv.Listener.Addr().(*net.TCPAddr).Port
	return a
}

// interceptDir makes egress's CA under dir/ca (egress ca init) and
// writes the vendor's key to dir/vendor-token, for keyedServePolicy.
func interceptDir(t *testing.T, bin, dir, key string) {
	t.Helper()
	if r := run(t, 30*time.Second, nil, bin, "ca", "init", filepath.Join(dir, "ca")); r.code != 0 {
		t.Fatalf("egress ca init: exit %d", r.code)
	}
	os.WriteFile(filepath.Join(dir, "vendor-token"), []byte(key+"\n"), 0o600)
}

// apiDest is the destination of the keyed API's rule as py reaches the
// API: Python 2.7 ignores IP SANs and reaches it by name (localhost),
// Python 3 as 127.0.0.1: a cidr rule may carry http: and inject: too.
func apiDest(py python, api *keyedAPI) string {
	if py.apiHost == "localhost" {
		return fmt.Sprintf("host: localhost\n    ports: [%d]", api.port)
	}
	return fmt.Sprintf("cidr: 127.0.0.1/32\n    ports: [%d]", api.port)
}

// keyedServePolicy is a policy for egress serve that intercepts with the
// CA interceptDir made under dir, trusts upstreamCA for the origins,
// allows the rules before (list items) and, at dest, the keyed API's GET
// /v1/status only, injecting the key from dir/vendor-token.
func keyedServePolicy(dir, upstreamCA, dest string, before ...string) string {
	var rules strings.Builder
	for _, r := range before {
		rules.WriteString("  " + r + "\n")
	}
	return fmt.Sprintf(`version: 1
default: deny
tls:
  ca_cert: %[1]s/ca/ca.crt
  ca_key: %[1]s/ca/ca.key
  upstream_ca: %[2]s
allow:
%[4]s  - %[3]s
    http:
      - methods: [GET]
        paths: ["/v1/status"]
    inject:
      - header: Authorization
        from_file: %[1]s/vendor-token
        prefix: "Bearer "
listen:
  admin: 127.0.0.1:0
`, dir, upstreamCA, dest, rules.String())
}

// wantAPIRead checks that the plugin read the keyed API (its stdout has
// the API's version), which it can only with the key egress injects.
func wantAPIRead(t *testing.T, api *keyedAPI, stdout string) {
	t.Helper()
	if api.withKey.Load() == 0 {
		t.Error("the API never got the injected key")
	}
	if !strings.Contains(stdout, `"version": "16.4"`) {
		t.Errorf("the plugin did not read the API: %s", stdout)
	}
}

// TestPluginCallsAPIWithInjectedKey: the plugin sends no key; behind
// `egress serve`, an http: rule allows GET /v1/status only and egress
// injects the vendor's key from a file the plugin never sees. The
// plugin trusts egress's CA the way an engine installs it
// (SSL_CERT_FILE), with no code change.
func TestPluginCallsAPIWithInjectedKey(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	const key = "vendor-key-5f3a"
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			const timeout = 3 * time.Second
			db, api := startDB(t, dbAnswers), startKeyedAPI(t, key)
			dir := t.TempDir()
			interceptDir(t, bin, dir, key)
			policy := keyedServePolicy(dir, api.caFile, apiDest(py, api), fmt.Sprintf("- cidr: 127.0.0.1/32\n    ports: [%d]", db.port))
			e := startServe(t, bin, policy)
			args := append(pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), "", timeout), "--db-proxy", e.proxyURL)
			env := append(py.env, "HTTPS_PROXY="+e.proxyURL, "SSL_CERT_FILE="+filepath.Join(dir, "ca", "ca.crt"))
			r := run(t, 4*timeout+5*time.Second, env, py.path, args...)
			if r.code != 0 {
				t.Fatalf("exit %d, want 0", r.code)
			}
			wantAPIRead(t, api, r.stdout)
			for _, l := range e.logLines() {
				if strings.Contains(fmt.Sprint(l), key) {
					t.Errorf("the key is in egress's log: %v", l)
				}
			}
			if strings.Contains(r.stdout+r.stderr, key) {
				t.Error("the key reached the plugin")
			}

			// A policy that allows another path: the plugin reports
			// egress's refusal with the request rule to add.
			e = startServe(t, bin, strings.Replace(policy, `paths: ["/v1/status"]`, `paths: ["/v1/other"]`, 1))
			args = append(pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), "", timeout), "--db-proxy", e.proxyURL)
			r = run(t, 4*timeout+5*time.Second, append(py.env, "HTTPS_PROXY="+e.proxyURL, "SSL_CERT_FILE="+filepath.Join(dir, "ca", "ca.crt")), py.path, args...)
			if r.code != exitUnmet {
				t.Fatalf("exit %d, want %d", r.code, exitUnmet)
			}
			wantOutcome(t, r.stderr, "DBMS REST API", "refused", "egress denied GET "+api.url(py.apiHost)+": no request rule matched",
				`.yaml:10: - {methods: [GET], paths: ["/v1/status"]}`, "; to allow: add under http: of the rule at ")
		})
	}
}

// TestPluginCallsAPIWithInjectedKeyUnderRun: the same under `egress run`,
// with no CA in the policy: egress makes one for the run and the plugin
// trusts it through SSL_CERT_FILE, which egress run sets; the key comes
// from egress's environment (from_env), which the plugin does not get.
func TestPluginCallsAPIWithInjectedKeyUnderRun(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	egressRunAvailable(t, bin)
	const key = "vendor-key-under-run"
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			const timeout = 3 * time.Second
			db, api := startDB(t, dbAnswers), startKeyedAPI(t, key)
			dest := apiDest(py, api)
			cfg := filepath.Join(t.TempDir(), "policy.yaml")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
default: deny
tls:
  upstream_ca: %[1]s
allow:
  - cidr: 127.0.0.1/32
    ports: [%[2]d]
  - %[3]s
    http:
      - methods: [GET]
        paths: ["/v1/status"]
    inject:
      - header: Authorization
        from_env: VENDOR_KEY
        prefix: "Bearer "
`, api.caFile, db.port, dest)), 0o644)
			args := append([]string{"run", "--config", cfg, "--", py.path}, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), "", timeout)...)
			r := run(t, 4*timeout+10*time.Second, append(py.env, "VENDOR_KEY="+key), bin, args...)
			if r.code != 0 {
				t.Fatalf("exit %d, want 0", r.code)
			}
			wantAPIRead(t, api, r.stdout)
			if strings.Contains(r.stdout+r.stderr, key) {
				t.Error("the key is in the output")
			}
		})
	}
}

// TestPluginRequestRuleRefusalUnderRun: under `egress run`, a request
// rule (http:) that allows another path refuses the plugin's GET. The
// rule to add goes under http: of the host's rule, as egress's own summary
// and 403 say (its body's hint: line), never under allow:, where a
// {methods, paths} line is no rule at all.
func TestPluginRequestRuleRefusalUnderRun(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	egressRunAvailable(t, bin)
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			const timeout = 3 * time.Second
			db, api := startDB(t, dbAnswers), startKeyedAPI(t, "unused")
			cfg := filepath.Join(t.TempDir(), "run-intercept.yaml")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
default: deny
tls:
  upstream_ca: %[1]s
allow:
  - %[3]s
    http:
      - methods: [GET]
        paths: ["/v1/other"]
  - cidr: 127.0.0.1/32
    ports: [%[2]d]
`, api.caFile, db.port, apiDest(py, api))), 0o644)
			args := append([]string{"run", "--config", cfg, "--", py.path}, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), "", timeout)...)
			r := run(t, 4*timeout+10*time.Second, py.env, bin, args...)
			if r.code != exitUnmet {
				t.Fatalf("exit %d, want %d", r.code, exitUnmet)
			}
			where := "under http: of the rule at " + cfg + ":6"
			const hint = `- {methods: [GET], paths: ["/v1/status"]}`
			wantOutcome(t, r.stderr, "DBMS REST API", "refused", "egress denied GET "+api.url(py.apiHost)+": no request rule matched",
				"; to allow: add "+where+": "+hint)
			if !egressSays(r.stderr, "add "+where+": "+hint) {
				t.Errorf("egress's summary does not say %q", "add "+where+": "+hint)
			}
			if strings.Contains(r.stderr, "under allow:") {
				t.Errorf("the plugin tells the administrator to paste a request rule under allow:")
			}
			if !strings.Contains(r.stderr, "plugin: ask the administrator to add "+where+" in the egress policy:\nplugin:   "+hint+"\n") {
				t.Errorf("the plugin's action does not say where the request rule goes")
			}
		})
	}
}
