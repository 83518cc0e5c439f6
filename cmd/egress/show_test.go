package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// TestShow (issue 21): egress show prints the policy in force after
// include:, every rule and setting with the FILE:LINE it comes from.
func TestShow(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"base.yaml": "version: 1\ndefault: deny\nlisten:\n  http: 127.0.0.1:3128\n  admin: 127.0.0.1:9191\ndeny:\n  - host: paste.example.org\n    reason: \"no paste sites\"\n",
		"site.yaml": "version: 1\ninclude: [base.yaml]\nlisten:\n  admin: 127.0.0.1:9292\ntimeouts:\n  dial: 90s\nallow:\n  - {host: api.example.com, ports: [443]}\nclients:\n  - name: ci\n    users: [ci]\n    allow:\n      - {cidr: 10.0.0.0/8, ports: [5432]}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	site, base := filepath.Join(dir, "site.yaml"), filepath.Join(dir, "base.yaml")
	code, out := runCommand(cmdShow, "--config", site)
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"# the policy in force: " + site + ", including " + base + "\n",
		"default: deny", "# " + base + ":2\n",
		"mode: enforce", "# default\n",
		"  http: \"127.0.0.1:3128\"", // set by base, as the default says
		"  admin: \"127.0.0.1:9292\"", "# " + site + ":4\n",
		"  dial: 1m30s", "# " + site + ":6\n",
		"  drain: 30s",
		"allow:\n  - {host: api.example.com, ports: [443]}", "# " + site + ":8\n",
		"deny:\n  - {host: paste.example.org, reason: \"no paste sites\"}", "# " + base + ":7\n",
		"clients:\n  - name: \"ci\"\n    users: [\"ci\"]\n    default: deny\n    mode: enforce\n    allow:\n      - {cidr: 10.0.0.0/8, ports: [5432]}",
		"# and, from the other files (between files a deny wins):\n    #   deny {host: paste.example.org, reason: \"no paste sites\"} at " + base + ":7\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The admin listener's line names the file read last that sets it:
	// the site, not the baseline it overrides.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "admin:") && !strings.HasSuffix(l, "# "+site+":4") {
			t.Errorf("admin line %q; want the site's FILE:LINE", l)
		}
	}
	t.Run("a policy that does not load is exit 2", func(t *testing.T) {
		code, out := runCommand(cmdShow, "--config", writeConfig(t, "version: 1\ndefualt: deny\n"))
		if code != exitUsage || !strings.Contains(string(out), `unknown field "defualt"`) {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
	t.Run("a file without --config is a usage error", func(t *testing.T) {
		code, out := runCommand(cmdShow, "policy.yaml")
		if code != exitUsage || !strings.Contains(string(out), "did you mean --config policy.yaml?") {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
}

// A secret setting is printed redacted, whatever its value; none exists in
// version 1, so the one function every setting's value passes is checked.
func TestShowRedactsSecrets(t *testing.T) {
	if got := settingValue(policy.Setting{Key: "x.token", Value: "s3cret", Secret: true}); got != redacted {
		t.Errorf("secret printed as %q", got)
	}
	if got := settingValue(policy.Setting{Key: "log.level", Value: "info"}); got != "info" {
		t.Errorf("plain setting printed as %q", got)
	}
}

// TestShowInjectIsRedacted: an inject: entry is shown with its header and
// where its value comes from, never the value, whether it comes from a
// file or the environment.
func TestShowInjectIsRedacted(t *testing.T) {
	dir := t.TempDir()
	const fileSecret, envSecret = "file-s3cret-9f1c", "env-s3cret-77ab"
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VENDOR_TOKEN", envSecret)
	cfg := filepath.Join(dir, "policy.yaml")
	text := "version: 1\ndefault: deny\nallow:\n  - host: api.vendor.example\n    ports: [443]\n    http:\n      - {methods: [GET], paths: [\"/v1/**\"]}\n    inject:\n      - {header: Authorization, from_file: token, prefix: \"Bearer \"}\n      - {header: X-Key, from_env: VENDOR_TOKEN}\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runCommand(cmdShow, "--config", cfg)
	if code != exitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, secret := range []string{fileSecret, envSecret} {
		if strings.Contains(string(out), secret) {
			t.Errorf("egress show prints a secret:\n%s", out)
		}
	}
	for _, want := range []string{
		"  - host: api.vendor.example", "    ports: [443]\n    http:\n      - {methods: [GET], paths: [\"/v1/**\"]}",
		"      - {header: Authorization, from_file: \"" + filepath.Join(dir, "token") + "\", prefix: \"Bearer \"}", cfg + ":9, value [redacted]\n",
		"      - {header: X-Key, from_env: VENDOR_TOKEN}", cfg + ":10, value [redacted]\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
