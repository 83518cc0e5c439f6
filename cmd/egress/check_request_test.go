package main

import "testing"

// egress check decides requests to hosts with http: request rules: by
// method (--method, GET by default) and normalised path, naming the
// request rule and the injected headers (never their values).
func TestCheckRequestsGolden(t *testing.T) {
	const p = "testdata/check/requests.yaml"
	runGoldenCases(t, cmdCheck, "check", []goldenCase{
		{"request allowed", []string{"--config", p, "https://api.vendor.example/v1/license", "https://api.vendor.example/v1/status/db?verbose=1"}, exitOK},
		{"request refused by method", []string{"--config", p, "--method", "DELETE", "https://api.vendor.example/v1/license"}, exitDenied},
		{"request refused by path", []string{"--config", p, "https://api.vendor.example/v1/status/../../admin", "https://api.vendor.example//admin", "https://api.vendor.example/v1/license/..;/admin", "https://api.vendor.example/v1/status/a%2Fb"}, exitDenied},
		{"request refused by a deny rule", []string{"--config", p, "--method", "POST", "https://api.vendor.example/v1/admin/users"}, exitDenied},
		{"request json", []string{"--json", "--config", p, "--method", "POST", "https://api.vendor.example/v1/telemetry"}, exitOK},
		{"intercepted connection", []string{"--config", p, "api.vendor.example:443"}, exitOK},
		{"method needs a url", []string{"--config", p, "--method", "GET", "api.vendor.example:443"}, exitUsage},
	})
}
