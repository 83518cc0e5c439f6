package policy

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

const vendorPolicy = `version: 1
default: deny
tls:
  ca_cert: /etc/egress/ca.crt
  ca_key: /etc/egress/ca.key
allow:
  - host: api.vendor.example
    ports: [443]
    http:
      - methods: [GET]
        paths: ["/v1/license", "/v1/status/*"]
      - methods: [POST]
        paths: ["/v1/telemetry"]
        reason: "usage reports only"
      - paths: ["/v1/docs/**"]
    inject:
      - header: Authorization
        from_file: /run/secrets/vendor-token
        prefix: "Bearer "
  - host: "*.cdn.example"
  - host: files.cdn.example
    ports: [443]
  - cidr: 192.0.2.10/32
    ports: [5432]
    http:
      - methods: [GET]
        paths: ["/databases"]
deny:
  - host: files.cdn.example
    http:
      - methods: [POST, PUT]
        paths: ["/**"]
        reason: "the CDN is read-only"
  - host: api.vendor.example
    http:
      - methods: [POST]
        paths: ["/v1/admin/**"]
`

func loadHTTP(t testing.TB, text string) *Policy {
	t.Helper()
	p, err := Load("p.yaml", []byte(text))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return p
}

func TestDecideRequest(t *testing.T) {
	p := loadHTTP(t, vendorPolicy)
	ip := netip.MustParseAddr("93.184.216.34")
	for _, tc := range []struct {
		name         string
		host         string
		ip           string
		port         uint16
		method, path string
		verdict      Verdict
		reason       Reason
		ruleAt       string // the request rule's FILE:LINE, "" for none
		inject       bool
	}{
		{"an allowed GET on an exact path is allowed and injected", "api.vendor.example", "", 443, "GET", "/v1/license", Allow, ReasonAllowedByRule, "p.yaml:10", true},
		{"a star matches one segment", "api.vendor.example", "", 443, "GET", "/v1/status/db", Allow, ReasonAllowedByRule, "p.yaml:10", true},
		{"a star does not match two segments", "api.vendor.example", "", 443, "GET", "/v1/status/db/x", Deny, ReasonNoRequestRuleMatched, "", false},
		{"a method the rule does not name is refused", "api.vendor.example", "", 443, "POST", "/v1/license", Deny, ReasonNoRequestRuleMatched, "", false},
		{"HEAD is not implied by GET", "api.vendor.example", "", 443, "HEAD", "/v1/license", Deny, ReasonNoRequestRuleMatched, "", false},
		{"a lower-case method is refused, as some servers upper-case it", "api.vendor.example", "", 443, "get", "/v1/license", Deny, ReasonInvalidMethod, "", false},
		{"a path no rule lists is refused", "api.vendor.example", "", 443, "GET", "/v1/admin", Deny, ReasonNoRequestRuleMatched, "", false},
		{"a trailing slash is significant", "api.vendor.example", "", 443, "GET", "/v1/license/", Deny, ReasonNoRequestRuleMatched, "", false},
		{"dot segments are removed before matching", "api.vendor.example", "", 443, "GET", "/v1/status/../license", Allow, ReasonAllowedByRule, "p.yaml:10", true},
		{"a dot-dot walk out of an allowed path is refused", "api.vendor.example", "", 443, "GET", "/v1/license/../../admin", Deny, ReasonNoRequestRuleMatched, "", false},
		{"encoded dots walk no further than plain ones", "api.vendor.example", "", 443, "GET", "/v1/status/%2e%2e/%2e%2e/admin", Deny, ReasonNoRequestRuleMatched, "", false},
		{"an encoded slash is refused", "api.vendor.example", "", 443, "GET", "/v1/status/a%2Fb", Deny, ReasonInvalidPath, "", false},
		{"a dot-dot with parameters is refused", "api.vendor.example", "", 443, "GET", "/v1/license/..;/admin", Deny, ReasonInvalidPath, "", false},
		{"repeated slashes are folded before matching", "api.vendor.example", "", 443, "GET", "//v1//license", Allow, ReasonAllowedByRule, "p.yaml:10", true},
		{"a rule without methods matches any method", "api.vendor.example", "", 443, "DELETE", "/v1/docs/a/b", Allow, ReasonAllowedByRule, "p.yaml:15", true},
		{"a request deny on the same host refuses its paths, whatever the ports", "api.vendor.example", "", 443, "POST", "/v1/admin/users", Deny, ReasonRequestDenied, "p.yaml:36", false},
		{"an exact path wins over a star", "api.vendor.example", "", 443, "POST", "/v1/telemetry", Allow, ReasonAllowedByRule, "p.yaml:12", true},
		{"a host deny with http: denies only its requests on a tunnel host", "files.cdn.example", "", 443, "POST", "/upload", Deny, ReasonRequestDenied, "p.yaml:31", false},
		{"a host deny with http: lets the other requests through", "files.cdn.example", "", 443, "GET", "/upload", Allow, ReasonAllowedByRule, "", false},
		{"a tunnel host's requests are all allowed", "img.cdn.example", "", 443, "POST", "/upload", Allow, ReasonAllowedByRule, "", false},
		{"a cidr rule decides requests to its address", "", "192.0.2.10", 5432, "GET", "/databases", Allow, ReasonAllowedByRule, "p.yaml:26", false},
		{"a cidr rule refuses other requests to its address", "", "192.0.2.10", 5432, "DELETE", "/databases", Deny, ReasonNoRequestRuleMatched, "", false},
		{"a connection the policy denies stays denied", "other.example", "", 443, "GET", "/", Deny, ReasonNoRuleMatched, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Request{Host: tc.host, Port: tc.port, Method: tc.method, Path: tc.path}
			if tc.ip != "" {
				r.IP = netip.MustParseAddr(tc.ip)
			} else if tc.host != "" {
				r.IP = ip
			}
			d := p.Decide(r)
			at := ""
			if d.RequestRule != nil {
				at = d.RequestRule.Location()
			}
			if d.Verdict != tc.verdict || d.Reason != tc.reason || at != tc.ruleAt || (len(d.Inject) > 0) != tc.inject {
				t.Fatalf("Decide(%s %s %s) = %v %s rule %q inject %v (hint %q); want %v %s rule %q inject %v",
					tc.method, tc.host+tc.ip, tc.path, d.Verdict, d.Reason, at, d.Inject, d.Hint, tc.verdict, tc.reason, tc.ruleAt, tc.inject)
			}
		})
	}
}

func TestInterceptedDestinations(t *testing.T) {
	p := loadHTTP(t, vendorPolicy)
	for _, tc := range []struct {
		name      string
		host      string
		intercept bool
	}{
		{"a host rule with http: is intercepted", "api.vendor.example", true},
		{"a host deny with http: forces interception where the broader allow would tunnel", "files.cdn.example", true},
		{"a host the deny with http: does not name stays a tunnel", "img.cdn.example", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(Request{Host: tc.host, IP: netip.MustParseAddr("93.184.216.34"), Port: 443})
			if !d.Allowed() || d.Intercept != tc.intercept {
				t.Fatalf("Decide(%s) = %v %s intercept %v; want allowed, intercept %v", tc.host, d.Verdict, d.Reason, d.Intercept, tc.intercept)
			}
		})
	}
	hosts, cidrs := p.InterceptedHosts()
	if strings.Join(hosts, " ") != "api.vendor.example files.cdn.example" || len(cidrs) != 1 || cidrs[0].String() != "192.0.2.10/32" {
		t.Fatalf("InterceptedHosts = %v %v", hosts, cidrs)
	}
}

func TestRequestPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rules   string
		method  string
		path    string
		verdict Verdict
	}{
		{"a rule naming methods wins over one that does not", `
allow:
  - host: a.example
    http: [{methods: [GET], paths: ["/x"]}]
deny:
  - host: a.example
    http: [{paths: ["/x"]}]
`, "GET", "/x", Allow},
		{"deny wins a tie between equal request rules", `
allow:
  - host: a.example
    http: [{methods: [GET], paths: ["/x"]}]
deny:
  - host: a.example
    http: [{methods: [GET], paths: ["/x"]}]
`, "GET", "/x", Deny},
		{"more literal segments win over fewer", `
allow:
  - host: a.example
    http: [{paths: ["/v1/public/**"]}]
deny:
  - host: a.example
    http: [{paths: ["/v1/**"]}]
`, "GET", "/v1/public/a", Allow},
		{"a star wins over a double star of as many literal segments", `
allow:
  - host: a.example
    http: [{paths: ["/v1/*"]}]
deny:
  - host: a.example
    http: [{paths: ["/v1/**"]}]
`, "GET", "/v1/a", Allow},
		{"an exact host allow beats a wildcard request deny", `
allow:
  - host: a.example
    http: [{paths: ["/**"]}]
deny:
  - host: "*.example"
    http: [{methods: [POST], paths: ["/**"]}]
`, "POST", "/x", Allow},
		{"a request deny as specific as the allow takes part", `
allow:
  - host: a.example
deny:
  - host: a.example
    http: [{methods: [POST], paths: ["/**"]}]
`, "POST", "/x", Deny},
		{"default allow with a request deny decides per request", `
deny:
  - host: a.example
    http: [{methods: [DELETE], paths: ["/**"]}]
`, "DELETE", "/x", Deny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			def := "deny"
			if !strings.Contains(tc.rules, "allow:") {
				def = "allow"
			}
			p := loadHTTP(t, "version: 1\ndefault: "+def+"\n"+tc.rules)
			d := p.Decide(Request{Host: "a.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443, Method: tc.method, Path: tc.path})
			if d.Verdict != tc.verdict || !d.Intercept {
				t.Fatalf("Decide = %v %s intercept %v; want %v, intercepted", d.Verdict, d.Reason, d.Intercept, tc.verdict)
			}
		})
	}
}

func TestAuditModeInjectsNothing(t *testing.T) {
	p := loadHTTP(t, strings.Replace(vendorPolicy, "default: deny\n", "default: deny\nmode: audit\n", 1))
	r := Request{Host: "api.vendor.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443, Method: "GET", Path: "/v1/license"}
	if d := p.Decide(r); !d.Allowed() || d.Audit || len(d.Inject) == 0 {
		t.Fatalf("allowed request in audit mode = %+v; want allowed with inject", d)
	}
	r.Path = "/v1/admin"
	if d := p.Decide(r); !d.Allowed() || !d.Audit || d.Reason != ReasonNoRequestRuleMatched || d.Inject != nil {
		t.Fatalf("would-be denial in audit mode = %v audit %v %s inject %v; want let through, audit, no inject", d.Verdict, d.Audit, d.Reason, d.Inject)
	}
}

func TestRequestHint(t *testing.T) {
	p := loadHTTP(t, vendorPolicy)
	d := p.Decide(Request{Host: "api.vendor.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443, Method: "PUT", Path: "/v1/x"})
	want := `add under http: of the rule at p.yaml:7: - {methods: [PUT], paths: ["/v1/x"]}`
	if d.Hint != want {
		t.Fatalf("Hint = %q; want %q", d.Hint, want)
	}
}

func secretSource(files, env map[string]string) SecretSource {
	return SecretSource{
		ReadFile: func(name string) ([]byte, error) {
			if v, ok := files[name]; ok {
				return []byte(v), nil
			}
			return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
		},
		LookupEnv: func(name string) (string, bool) { v, ok := env[name]; return v, ok },
	}
}

const secretValueText = "s3cr3t-VALUE-42"

func TestResolveSecrets(t *testing.T) {
	const text = `version: 1
default: deny
allow:
  - host: api.vendor.example
    http: [{paths: ["/**"], methods: [GET]}]
    inject:
      - header: Authorization
        from_file: /run/secrets/token
        prefix: "Bearer "
      - header: X-Api-Key
        from_env: VENDOR_KEY
`
	for _, tc := range []struct {
		name       string
		file, env  *string
		want       string // the error, "" for none
		wantHeader string
	}{
		{"a file with one trailing newline is read without it", ptr(secretValueText + "\n"), ptr("k"), "", "Bearer " + secretValueText},
		{"a missing file refuses the policy at from_file", nil, ptr("k"), "p.yaml:8:20: inject Authorization: cannot read the file: open /run/secrets/token: file does not exist", ""},
		{"a missing variable refuses the policy at from_env", ptr(secretValueText), nil, "p.yaml:11:19: inject X-Api-Key: the variable VENDOR_KEY is not set", ""},
		{"a CR refuses the value", ptr(secretValueText + "\r\n"), ptr("k"), "p.yaml:8:20: inject Authorization: the value from file /run/secrets/token holds a control character at byte 16", ""},
		{"a second newline refuses the value", ptr(secretValueText + "\n\n"), ptr("k"), "holds a control character", ""},
		{"an LF inside refuses the value", ptr("a\nX-Evil: 1"), ptr("k"), "holds a control character at byte 2", ""},
		{"an empty value refuses the policy", ptr("\n"), ptr("k"), "is empty", ""},
		{"an empty variable refuses the policy", ptr("x"), ptr(""), "p.yaml:11:19: inject X-Api-Key: the value from env VENDOR_KEY is empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadHTTP(t, text)
			files, env := map[string]string{}, map[string]string{}
			if tc.file != nil {
				files["/run/secrets/token"] = *tc.file
			}
			if tc.env != nil {
				env["VENDOR_KEY"] = *tc.env
			}
			err := p.ResolveSecrets(secretSource(files, env))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ResolveSecrets: %v", err)
				}
				if v, ok := p.Injects()[0].Value(); !ok || v != tc.wantHeader {
					t.Fatalf("Value = %q, %v; want %q", v, ok, tc.wantHeader)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ResolveSecrets = %v; want an error with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secretValueText) || strings.Contains(err.Error(), "X-Evil") {
				t.Fatalf("the error quotes the value: %v", err)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// No way of printing a decision, a rule or the policy shows an injected
// value.
func TestSecretsNeverPrinted(t *testing.T) {
	p := loadHTTP(t, vendorPolicy)
	if err := p.ResolveSecrets(secretSource(map[string]string{"/run/secrets/vendor-token": secretValueText}, nil)); err != nil {
		t.Fatal(err)
	}
	d := p.Decide(Request{Host: "api.vendor.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443, Method: "GET", Path: "/v1/license"})
	if v, ok := d.Inject[0].Value(); !ok || v != "Bearer "+secretValueText {
		t.Fatalf("Value = %q, %v", v, ok)
	}
	js, _ := json.Marshal(d)
	outputs := map[string]string{
		"%v": fmt.Sprintf("%v", d), "%+v": fmt.Sprintf("%+v", d), "%#v": fmt.Sprintf("%#v", d),
		"rule %+v": fmt.Sprintf("%+v", *d.Rule), "inject %+v": fmt.Sprintf("%+v", *d.Inject[0]),
		"json": string(js), "warnings": fmt.Sprint(p.Warnings()), "rule text": d.Rule.Text,
	}
	for how, out := range outputs {
		if strings.Contains(out, secretValueText) {
			t.Errorf("%s shows the secret: %s", how, out)
		}
	}
	if !strings.Contains(outputs["%v"], "Authorization from file /run/secrets/vendor-token (value redacted)") {
		t.Errorf("%%v does not name the header: %s", outputs["%v"])
	}
}

func TestHTTPLintWarnings(t *testing.T) {
	p := loadHTTP(t, `version: 1
default: deny
allow:
  - host: "*.vendor.example"
    http:
      - paths: ["/**"]
    inject:
      - header: X-Key
        from_env: KEY
  - cidr: 192.0.2.0/24
    http:
      - methods: [GET]
        paths: ["/**"]
    inject:
      - header: X-Key
        from_env: KEY
`)
	var got []string
	for _, w := range p.Warnings() {
		got = append(got, w.String())
	}
	want := []string{
		"p.yaml:4:5: *.vendor.example does not match vendor.example itself",
		"p.yaml:6:9: this request rule allows every method and path",
		"p.yaml:6:9: http: request rules need tls.ca_cert and tls.ca_key",
		"p.yaml:9:19: inject: under a wildcard rule sends the X-Key value to every name *.vendor.example matches",
		"p.yaml:16:19: inject: under a cidr rule sends the X-Key value to any server at 192.0.2.0/24",
	}
	if len(got) != len(want) {
		t.Fatalf("warnings:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %d = %q; want it to start %q", i, got[i], want[i])
		}
	}
}

// Errors in request rules, inject: and tls: are reported at FILE:LINE:COL,
// all at once; testdata/http_errors.golden holds them (-update rewrites).
func TestHTTPLoadErrorsGolden(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "http_errors.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Load("http_errors.yaml", data)
	if err == nil {
		t.Fatal("Load accepted testdata/http_errors.yaml")
	}
	got := err.Error() + "\n"
	golden := filepath.Join("testdata", "http_errors.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("errors:\n%s\nwant (testdata/http_errors.golden):\n%s", got, want)
	}
}

func TestTLSSection(t *testing.T) {
	p, err := LoadWith("/etc/egress/policy.yaml", []byte("version: 1\ndefault: deny\ntls:\n  ca_cert: ca.crt\n  ca_key: /keys/ca.key\n  upstream_ca: roots.pem\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.TLS != (TLS{CACert: "/etc/egress/ca.crt", CAKey: "/keys/ca.key", UpstreamCA: "/etc/egress/roots.pem"}) {
		t.Fatalf("TLS = %+v; want paths relative to the policy file", p.TLS)
	}
}

func BenchmarkDecideRequest(b *testing.B) {
	p := loadHTTP(b, vendorPolicy)
	r := Request{Host: "api.vendor.example", IP: netip.MustParseAddr("93.184.216.34"), Port: 443, Method: "GET", Path: "/v1/status/db"}
	b.ReportAllocs()
	for b.Loop() {
		if d := p.Decide(r); !d.Allowed() {
			b.Fatal(d.Reason)
		}
	}
}

// TestRuleReasonOfARequestNoRequestRuleMatched: a request no request rule
// matched is refused for that; the host rule's reason says why the host
// is reachable, and is not given as why the request was refused.
func TestRuleReasonOfARequestNoRequestRuleMatched(t *testing.T) {
	p := loadHTTP(t, `version: 1
default: deny
tls:
  ca_cert: /etc/egress/ca.crt
  ca_key: /etc/egress/ca.key
allow:
  - host: api.vendor.example
    reason: "CI reads the vendor licence"
    http:
      - methods: [GET]
        paths: ["/v1/license"]
      - methods: [POST]
        paths: ["/v1/telemetry"]
        reason: "usage reports only"
`)
	ip := netip.MustParseAddr("93.184.216.34")
	for _, tc := range []struct {
		method, path, want string
	}{
		{"GET", "/v1/other", ""},
		{"GET", "/v1/license", "CI reads the vendor licence"},
		{"POST", "/v1/telemetry", "usage reports only"},
	} {
		d := p.Decide(Request{Host: "api.vendor.example", IP: ip, Port: 443, Method: tc.method, Path: tc.path})
		if got := d.RuleReason(); got != tc.want {
			t.Errorf("%s %s (%s): RuleReason %q, want %q", tc.method, tc.path, d.Reason, got, tc.want)
		}
	}
}
