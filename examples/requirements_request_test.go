package examples

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRequirementsRequestThroughEgressServe: a manifest entry naming a
// URL and method (issue 20) is checked by making that request, here
// through `egress serve` with an http: rule in front of a loopback TLS
// origin, on python3 and python2.7: the allowed GET is answered (with the
// key egress injects), a refused POST and a refused path report egress's
// 403 with its explanation and the request rule to add, and a direct
// entry makes the request itself.
func TestRequirementsRequestThroughEgressServe(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	const key = "vendor-key-71c9"
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			api := startKeyedAPI(t, key)
			dir := t.TempDir()
			interceptDir(t, bin, dir, key)
			e := startServe(t, bin, keyedServePolicy(dir, api.caFile, apiDest(py, api)))
			// One bundle: egress's CA (through the proxy) and the
			// origin's (direct).
			caPEM, _ := os.ReadFile(filepath.Join(dir, "ca", "ca.crt"))
			upPEM, _ := os.ReadFile(api.caFile)
			bundle := filepath.Join(dir, "bundle.pem")
			os.WriteFile(bundle, append(caPEM, upPEM...), 0o644)

			base := fmt.Sprintf("https://%s:%d", py.apiHost, api.port)
			entries := []map[string]any{
				{"url": base + "/v1/status", "method": "GET", "purpose": "status", "via": "proxy"},
				{"url": base + "/v1/admin?x=1", "method": "POST", "purpose": "admin", "via": "proxy"},
				{"url": base + "/v1/other", "purpose": "other", "via": "proxy", "required": false},
				{"url": base + "/v1/status", "purpose": "direct", "via": "direct"},
			}
			b, _ := json.Marshal(map[string]any{"plugin": "vendor-plugin", "requirements": entries})
			manifest := filepath.Join(dir, "requirements.json")
			os.WriteFile(manifest, b, 0o644)

			args := helperArgs(py, manifest, bundle)
			r := run(t, 30*time.Second, append(py.env, "HTTPS_PROXY="+e.proxyURL), args[0], args[1:]...)
			if r.code != exitUnmet {
				t.Fatalf("exit %d, want %d (a required request refused)", r.code, exitUnmet)
			}
			line := func(purpose string) string {
				for _, l := range strings.Split(r.stdout, "\n") {
					if strings.Contains(l, "("+purpose+")") {
						return l
					}
				}
				t.Fatalf("no line for %s in:\n%s", purpose, r.stdout)
				return ""
			}
			for _, c := range []struct {
				purpose string
				want    []string
			}{
				{"status", []string{"ok ", "GET " + base + "/v1/status https (status): GET " + base + "/v1/status answered 200 OK through the proxy " + e.proxyURL}},
				{"admin", []string{"refused ", "POST " + base + "/v1/admin?x=1 https (admin): 403 egress denied POST " + base + "/v1/admin: no request rule matched (id ",
					`; to allow: add under http: of the rule at `, `.yaml:8: - {methods: [POST], paths: ["/v1/admin"]}`}},
				{"other", []string{"refused ", "[optional]", "403 egress denied GET " + base + "/v1/other: no request rule matched (id ",
					`; to allow: add under http: of the rule at `, `.yaml:8: - {methods: [GET], paths: ["/v1/other"]}`}},
				// Direct, not through egress: the origin itself answers,
				// without the key egress would have injected.
				{"direct", []string{"ok ", "GET " + base + "/v1/status answered 401 Unauthorized"}},
			} {
				l := line(c.purpose)
				for _, w := range c.want {
					if !strings.Contains(l, w) {
						t.Errorf("line %q lacks %q", l, w)
					}
				}
			}
			if api.withKey.Load() != 1 {
				t.Errorf("the origin got the injected key %d times, want once (the allowed GET through egress)", api.withKey.Load())
			}
			// Where egress's 403 says the request rule goes: under http:
			// of the host's rule, at its FILE:LINE.
			want := regexp.MustCompile(`ask the administrator to add under http: of the rule at \S+\.yaml:8 in the egress policy:\n` +
				regexp.QuoteMeta(`  - {methods: [POST], paths: ["/v1/admin"]}`))
			if !want.MatchString(r.stderr) {
				t.Errorf("the action lacks %q:\n%s", want, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, key) {
				t.Error("the key reached the helper")
			}
		})
	}
}
