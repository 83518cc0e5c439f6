package examples

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// allowHint is the rule the plugin asks the customer to add for an IP.
func allowHint(ip string, port int) string {
	return fmt.Sprintf("- {cidr: %s/32, ports: [%d]}", ip, port)
}

// outcomeOf is the plugin's line for the requirement with purpose (the
// database's "PostgreSQL", the API's "DBMS REST API"), without "plugin: ".
func outcomeOf(out, purpose string) string {
	for _, l := range pluginLines(out) {
		if strings.Contains(l, " ("+purpose+"): ") {
			return strings.TrimPrefix(l, "plugin: ")
		}
	}
	return ""
}

// wantOutcome checks the outcome of one requirement and that a policy rule
// comes with a refusal only.
func wantOutcome(t *testing.T, out, purpose, outcome string, contains ...string) {
	t.Helper()
	l := outcomeOf(out, purpose)
	if !strings.HasPrefix(l, outcome+" ") {
		t.Errorf("%s: want %s, got %q", purpose, outcome, l)
		return
	}
	if outcome != "refused" && strings.Contains(l, "to allow:") {
		t.Errorf("%s: a policy rule for what is no policy refusal: %s", purpose, l)
	}
	for _, c := range contains {
		if !strings.Contains(l, c) {
			t.Errorf("%s: line lacks %q: %s", purpose, c, l)
		}
	}
}

// pluginLines are the lines plugin.py wrote (each starts with "plugin: ").
func pluginLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "plugin: ") {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestPluginDirect(t *testing.T) {
	t.Parallel()
	for _, py := range pythons(t) {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel()
			testPluginDirect(t, py)
		})
	}
}

// TestPluginAPIVersion: the plugin prints the API's version whether the
// status document has it at the top (the vendor's) or nested under info
// (PyPI's JSON API, which docker-compose.yml's plugin asks).
func TestPluginAPIVersion(t *testing.T) {
	t.Parallel()
	const script = `import json, sys
sys.path.insert(0, "plugin-python")
import discovery
print(json.dumps([discovery.api_version({"version": "16.4"}),
                  discovery.api_version({"info": {"version": "24.0"}, "releases": {}}),
                  discovery.api_version({"info": {}})]))`
	for _, py := range pythons(t) {
		t.Run(py.name, func(t *testing.T) {
			r := run(t, 30*time.Second, py.env, py.path, "-c", script)
			if r.code != 0 || strings.TrimSpace(r.stdout) != `["16.4", "24.0", null]` {
				t.Errorf("exit %d, stdout %q; want [\"16.4\", \"24.0\", null]", r.code, r.stdout)
			}
		})
	}
}

func testPluginDirect(t *testing.T, py python) {
	const timeout = 2 * time.Second
	// Python's start plus one timeout per step, with room for a slow
	// machine; a plugin that hangs exceeds it by far.
	const bound = 4*timeout + 5*time.Second

	t.Run("discovers the repository when the DB and the API answer", func(t *testing.T) {
		db, api := startDB(t, dbAnswers), startAPI(t, false)
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout)...)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		var repo map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &repo); err != nil {
			t.Fatalf("stdout is not the repository as JSON: %v", err)
		}
		if repo["version"] != "16.4" || repo["port"] != float64(db.port) {
			t.Errorf("repository = %v, want version 16.4 from the API and port %d", repo, db.port)
		}
		if db.answered.Load() != 1 || api.hits.Load() != 1 {
			t.Errorf("DB answered %d times, API hit %d times; want 1 each", db.answered.Load(), api.hits.Load())
		}
		if !strings.Contains(r.stderr, "plugin: network requirements met") {
			t.Errorf("stderr does not say the requirements are met")
		}
	})

	t.Run("names each closed port, without a rule to add", func(t *testing.T) {
		dbPort, apiPort := closedPort(t), closedPort(t)
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", dbPort, "https://127.0.0.1:"+strconv.Itoa(apiPort)+"/v1/status", "", timeout)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		wantOutcome(t, r.stderr, "PostgreSQL", "unreachable", fmt.Sprintf("cannot connect to 127.0.0.1:%d (connection refused)", dbPort))
		wantOutcome(t, r.stderr, "DBMS REST API", "unreachable", fmt.Sprintf("cannot connect to 127.0.0.1:%d (connection refused)", apiPort))
		if !strings.Contains(r.stderr, "plugin: example-dbms cannot reach 2 of 2 required network destinations") ||
			strings.Contains(r.stderr, "add under allow") {
			t.Errorf("want both named, and no rule to add: a closed port is no policy matter")
		}
		if r.stdout != "" {
			t.Errorf("stdout = %q, want nothing on failure", r.stdout)
		}
	})

	t.Run("gives up on origins that accept and never answer", func(t *testing.T) {
		const short = time.Second
		db, api := startDB(t, dbSilent), startAPI(t, true)
		r := run(t, 3*short+5*time.Second, py.env, py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, short)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		// The port opens: the driver's SSLRequest is what gets no answer.
		wantOutcome(t, r.stderr, "PostgreSQL", "unreachable", "did not answer a PostgreSQL SSLRequest (timed out)")
	})

	t.Run("says a connection closed before the database answered", func(t *testing.T) {
		// What a transparent proxy that denies the destination looks like
		// to a client: the connection opens, then closes.
		db, api := startDB(t, dbClosesAtOnce), startAPI(t, false)
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		// A reset instead of a clean close is as good: both say the
		// connection was cut, and neither is the policy.
		l := outcomeOf(r.stderr, "PostgreSQL")
		if !strings.Contains(l, "closed before the database answered") && !strings.Contains(l, "connection reset") {
			t.Errorf("error does not say the connection was cut: %s", l)
		}
		wantOutcome(t, r.stderr, "PostgreSQL", "unreachable")
		wantOutcome(t, r.stderr, "DBMS REST API", "ok")
	})

	t.Run("goes through HTTPS_PROXY and the DB proxy", func(t *testing.T) {
		db, api, proxy := startDB(t, dbAnswers), startAPI(t, false), startConnectProxy(t, false)
		args := append(pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout), "--db-proxy", proxy.url)
		r := run(t, bound, append(py.env, "HTTPS_PROXY="+proxy.url, "https_proxy="+proxy.url), py.path, args...)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		got := slices.Compact(slices.Sorted(slices.Values(proxy.seen())))
		want := []string{
			"CONNECT " + api.url(py.apiHost)[len("https://"):len(api.url(py.apiHost))-len("/v1/status")],
			fmt.Sprintf("CONNECT 127.0.0.1:%d", db.port),
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("proxy saw %q, want %q", got, want)
		}
	})

	t.Run("reports a proxy's refusal with the rule to allow", func(t *testing.T) {
		proxy := startConnectProxy(t, true)
		dbPort, apiPort := closedPort(t), closedPort(t)
		args := append(pluginArgs(py, "127.0.0.1", dbPort, fmt.Sprintf("https://%s:%d/v1/status", py.apiHost, apiPort), "", timeout), "--db-proxy", proxy.url)
		r := run(t, bound, append(py.env, "HTTPS_PROXY="+proxy.url), py.path, args...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		wantOutcome(t, r.stderr, "PostgreSQL", "refused", "; to allow: "+allowHint("127.0.0.1", dbPort))
		wantOutcome(t, r.stderr, "DBMS REST API", "refused", fmt.Sprintf("; to allow: - {%s, ports: [%d]}", ruleTarget(py.apiHost), apiPort))
		if !strings.Contains(r.stderr, "plugin: ask the administrator to add under allow: in the egress policy:\nplugin:   "+allowHint("127.0.0.1", dbPort)) {
			t.Errorf("the action does not ask for the rules")
		}
	})

	t.Run("trusts the CA in SSL_CERT_FILE", func(t *testing.T) {
		db, api := startDB(t, dbAnswers), startAPI(t, false)
		r := run(t, bound, append(py.env, "SSL_CERT_FILE="+api.caFile), py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), "", timeout)...)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
	})

	t.Run("says TLS failed rather than the network when the CA is unknown", func(t *testing.T) {
		db, api := startDB(t, dbAnswers), startAPI(t, false)
		other := startAPI(t, false) // a CA that did not sign api's certificate
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), other.caFile, timeout)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		wantOutcome(t, r.stderr, "DBMS REST API", "tls_failure", fmt.Sprintf("TLS with %s:%d failed", py.apiHost, api.port))
		if strings.Contains(r.stderr, "add under allow") {
			t.Errorf("a TLS failure is not a policy matter, yet the plugin asks for a rule")
		}
	})

	t.Run("refuses bad arguments", func(t *testing.T) {
		r := run(t, bound, py.env, py.path, pluginDir+"/plugin.py", "--db-port", "0")
		if r.code != 2 || !strings.Contains(r.stderr, "--db-port must be 1-65535") {
			t.Errorf("exit %d, stderr %q; want 2 and the reason", r.code, r.stderr)
		}
	})
}

// ruleTarget is how the plugin's rule names host: host: for a name,
// cidr: for an IP.
func ruleTarget(host string) string {
	if host == "localhost" {
		return "host: localhost"
	}
	return "cidr: " + host + "/32"
}
