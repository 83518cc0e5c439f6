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
	return fmt.Sprintf("ask your administrator to allow `- {cidr: %s/32, ports: [%d]}` in the egress policy", ip, port)
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
	for _, py := range pythons(t) {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel()
			testPluginDirect(t, py)
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

	t.Run("names each closed port and the rule to allow it", func(t *testing.T) {
		dbPort, apiPort := closedPort(t), closedPort(t)
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", dbPort, "https://127.0.0.1:"+strconv.Itoa(apiPort)+"/v1/status", "", timeout)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		want := []string{
			"plugin: 2 network requirements not met:",
			fmt.Sprintf("plugin:   - database 127.0.0.1:%d: cannot reach 127.0.0.1:%d (connection refused within 2s): %s", dbPort, dbPort, allowHint("127.0.0.1", dbPort)),
			fmt.Sprintf("plugin:   - REST API https://127.0.0.1:%d/v1/status: cannot reach 127.0.0.1:%d (connection refused within 2s): %s", apiPort, apiPort, allowHint("127.0.0.1", apiPort)),
		}
		if got := pluginLines(r.stderr); !slices.Equal(got, want) {
			t.Errorf("plugin's error:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
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
		for _, want := range []string{
			fmt.Sprintf("cannot reach 127.0.0.1:%d (connected, but then no answer within 1s before the database said a word)", db.port),
			fmt.Sprintf("(no answer within 1s): ask your administrator to allow `- {%s, ports: [%d]}`", ruleTarget(py.apiHost), api.port),
		} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
	})

	t.Run("says a connection closed before the database answered", func(t *testing.T) {
		// What a transparent proxy that denies the destination looks like
		// to a client: the connection opens, then closes.
		db, api := startDB(t, dbClosesAtOnce), startAPI(t, false)
		r := run(t, bound, py.env, py.path, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout)...)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		lines := pluginLines(r.stderr)
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "plugin: 1 network requirement not met") {
			t.Fatalf("want exactly one unmet requirement, got:\n%s", strings.Join(lines, "\n"))
		}
		// A reset instead of a clean close is as good: both say the
		// connection was cut and name the rule.
		if !strings.Contains(lines[1], "closed before the database answered") && !strings.Contains(lines[1], "connection reset") {
			t.Errorf("error does not say the connection was cut: %s", lines[1])
		}
		if !strings.HasSuffix(lines[1], allowHint("127.0.0.1", db.port)) {
			t.Errorf("error does not end with the rule to allow: %s", lines[1])
		}
	})

	t.Run("goes through HTTPS_PROXY and the DB proxy", func(t *testing.T) {
		db, api, proxy := startDB(t, dbAnswers), startAPI(t, false), startConnectProxy(t, false)
		args := append(pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout), "--db-proxy", proxy.url)
		r := run(t, bound, append(py.env, "HTTPS_PROXY="+proxy.url, "https_proxy="+proxy.url), py.path, args...)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
		got := proxy.seen()
		slices.Sort(got)
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
		proxyAddr := strings.TrimPrefix(proxy.url, "http://")
		for _, want := range []string{
			fmt.Sprintf("cannot reach 127.0.0.1:%d: the proxy %s answered \"HTTP/1.1 403 Forbidden\": %s", dbPort, proxyAddr, allowHint("127.0.0.1", dbPort)),
			fmt.Sprintf("cannot reach %s:%d through the proxy %s (the proxy refused: 403 Forbidden): ask your administrator to allow `- {%s, ports: [%d]}`",
				py.apiHost, apiPort, proxy.url, ruleTarget(py.apiHost), apiPort),
		} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
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
		if want := fmt.Sprintf("TLS with %s:%d failed", py.apiHost, api.port); !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
		if strings.Contains(r.stderr, "ask your administrator") {
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
