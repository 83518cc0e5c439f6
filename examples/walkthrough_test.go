package examples

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

var (
	buildOnce sync.Once
	egressBin string
	buildErr  error
	buildOut  []byte
	buildDir  string
)

// TestMain runs more parallel tests at once than CPUs (they wait on
// egress and Python processes), then removes the egress binary the tests
// built.
func TestMain(m *testing.M) {
	code := testwait.RunParallel(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// egress builds cmd/egress once per test binary.
func egress(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the go tool is not on PATH: %w", err)
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "egress-examples-"); buildErr != nil {
			return
		}
		egressBin = filepath.Join(buildDir, "egress")
		// -buildvcs=false: under a uid other than the checkout's owner,
		// Git's safe.directory check fails the VCS stamping, and the test
		// with it.
		cmd := exec.Command(goTool, "build", "-buildvcs=false", "-o", egressBin, "github.com/egress-proxy/egress/cmd/egress")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build egress: %v\n%s", buildErr, buildOut)
	}
	return egressBin
}

// egressRunAvailable skips t unless `egress run` can run a command here: it
// is not implemented yet, or network namespaces are not available.
func egressRunAvailable(t *testing.T, bin string) {
	t.Helper()
	r := run(t, 30*time.Second, nil, bin, "run", "--", "true")
	if r.code != 0 {
		t.Skipf("egress run cannot run a command here (not implemented yet, or no network namespaces): exit %d: %s",
			r.code, strings.TrimSpace(r.stderr))
	}
}

// egressLines are the lines of output that are not the plugin's: egress's
// own, including its summary of destinations.
func egressLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, "plugin: ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// egressSays reports whether a line of egress's own output (its live
// denials and its summary) contains text.
func egressSays(out, text string) bool {
	for _, l := range egressLines(out) {
		if strings.Contains(l, text) {
			return true
		}
	}
	return false
}

// rule is the policy rule, as the plugin and egress both write it, that
// allows host:port.
func rule(host string, port int) string {
	if host == "localhost" {
		return fmt.Sprintf("- {host: localhost, ports: [%d]}", port)
	}
	return fmt.Sprintf("- {cidr: %s/32, ports: [%d]}", host, port)
}

// TestWalkthrough runs the three runs of plugin-python/README.md under
// `egress run` against loopback origins, allowed explicitly with --allow
// (every config guards loopback, as it should).
func TestWalkthrough(t *testing.T) {
	t.Parallel()
	pys := pythons(t)
	bin := egress(t)
	egressRunAvailable(t, bin)
	for _, cfg := range []string{"full-internet", "handful-of-hosts", "no-network"} {
		if _, err := os.Stat(configPath(cfg)); err != nil {
			t.Fatalf("the walkthrough's config is missing: %v", err)
		}
	}
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			testWalkthrough(t, bin, py)
		})
	}
}

func configPath(name string) string { return filepath.Join("..", "configs", name+".yaml") }

func testWalkthrough(t *testing.T, bin string, py python) {
	// A long timeout per step, so that "fails fast" below can tell a
	// denial answered at once from a step that waited for its timeout.
	const timeout = 5 * time.Second
	const bound = 4*timeout + 10*time.Second

	db, api := startDB(t, dbAnswers), startAPI(t, false)
	allowDB := []string{"--allow", "127.0.0.1:" + strconv.Itoa(db.port)}
	allowAPI := []string{"--allow", py.apiHost + ":" + strconv.Itoa(api.port)}
	egressRun := func(t *testing.T, cfg string, allows ...[]string) result {
		args := []string{"run", "--config", configPath(cfg)}
		for _, a := range allows {
			args = append(args, a...)
		}
		args = append(args, "--", py.path)
		args = append(args, pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout)...)
		return run(t, bound, py.env, bin, args...)
	}

	t.Run("full internet with the origins allowed: the plugin works", func(t *testing.T) {
		before := db.answered.Load()
		r := egressRun(t, "full-internet", allowDB, allowAPI)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0 (the plugin's exit code passes through)", r.code)
		}
		if !strings.Contains(r.stdout, `"version": "16.4"`) {
			t.Errorf("stdout lacks the discovered repository: %q", r.stdout)
		}
		if db.answered.Load() == before {
			t.Errorf("the DB origin never answered: the plugin did not reach it through egress")
		}
		// The summary tells the author that the DB connection ignored the
		// proxy settings (a raw socket, caught by the transparent path).
		var flagged bool
		for _, l := range egressLines(r.stderr) {
			if strings.Contains(l, "127.0.0.1:"+strconv.Itoa(db.port)) && strings.Contains(strings.ToLower(l), "ignored http_proxy") {
				flagged = true
			}
		}
		if !flagged {
			t.Errorf("egress's summary does not say the DB connection ignored HTTP_PROXY")
		}
	})

	t.Run("handful of hosts without the DB: the plugin names the DB", func(t *testing.T) {
		r := egressRun(t, "handful-of-hosts", allowAPI)
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		wantOutcome(t, r.stderr, "PostgreSQL", "refused", "; to allow: "+allowHint("127.0.0.1", db.port))
		wantOutcome(t, r.stderr, "DBMS REST API", "ok")
		// egress's summary gives the same rule as the plugin's error.
		if !egressSays(r.stderr, rule("127.0.0.1", db.port)) {
			t.Errorf("egress's summary does not give the rule %q for the denied DB", rule("127.0.0.1", db.port))
		}
		if egressSays(r.stderr, rule(py.apiHost, api.port)) {
			t.Errorf("egress's summary gives a rule for the API, which is allowed")
		}
	})

	t.Run("handful of hosts with the DB: the plugin works", func(t *testing.T) {
		r := egressRun(t, "handful-of-hosts", allowAPI, allowDB)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
	})

	t.Run("no network: the plugin fails fast and egress lists the denials", func(t *testing.T) {
		r := egressRun(t, "no-network")
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		if !strings.Contains(r.stderr, "plugin: example-dbms cannot reach 2 of 2 required network destinations") {
			t.Errorf("stderr lacks the plugin's error naming both the DB and the API")
		}
		wantOutcome(t, r.stderr, "PostgreSQL", "refused")
		wantOutcome(t, r.stderr, "DBMS REST API", "refused")
		for _, want := range []string{rule("127.0.0.1", db.port), rule(py.apiHost, api.port)} {
			if !egressSays(r.stderr, want) {
				t.Errorf("egress's summary does not give the rule %q", want)
			}
			if !strings.Contains(r.stderr, "plugin:   "+want+"\n") {
				t.Errorf("the plugin's error does not give the rule %q", want)
			}
		}
		// Denials are answered at once (refused, reset or 403), so the plugin
		// never waits for its timeouts.
		if r.elapsed >= timeout {
			t.Errorf("took %v: the plugin waited for a timeout instead of failing fast", r.elapsed)
		}
	})
}

// TestWalkthroughConfigs checks that the configs the README runs the plugin
// under decide on the plugin's default destinations as the README says:
// full internet and handful of hosts let both through, no network neither.
func TestWalkthroughConfigs(t *testing.T) {
	t.Parallel()
	py := pythons(t)[0]
	r := run(t, 20*time.Second, py.env, py.path, "-c",
		"import json, sys; sys.path.insert(0, 'plugin-python'); import discovery; print(json.dumps(discovery.DEFAULTS))")
	var defaults struct {
		DBHost string `json:"db_host"`
		DBPort int    `json:"db_port"`
		APIURL string `json:"api_url"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &defaults) != nil {
		t.Fatalf("cannot read the plugin's defaults: exit %d, %q", r.code, r.stdout)
	}
	api, err := url.Parse(defaults.APIURL)
	if err != nil || api.Scheme != "https" || api.Port() != "" {
		t.Fatalf("the plugin's default API %q is not an https URL on port 443", defaults.APIURL)
	}
	targets := []policy.Request{
		{Host: defaults.DBHost, Port: uint16(defaults.DBPort)},
		{Host: api.Hostname(), Port: 443},
	}
	for _, tt := range []struct {
		config string
		want   policy.Verdict
	}{
		{"full-internet", policy.Allow},
		{"handful-of-hosts", policy.Allow},
		{"no-network", policy.Deny},
	} {
		t.Run(tt.config+" decides "+tt.want.String(), func(t *testing.T) {
			data, err := os.ReadFile(configPath(tt.config))
			if err != nil {
				t.Fatal(err)
			}
			p := loadPolicy(t, configPath(tt.config), data)
			if p == nil {
				return
			}
			for _, req := range targets {
				if d := p.Decide(req); d.Verdict != tt.want || d.Audit {
					t.Errorf("%s:%d: %s (%s), want %s: plugin-python/README.md says otherwise", req.Host, req.Port, d.Event(), d.Reason, tt.want)
				}
			}
		})
	}
	t.Run("handful-of-hosts lets only its database through", func(t *testing.T) {
		data, err := os.ReadFile(configPath("handful-of-hosts"))
		if err != nil {
			t.Fatal(err)
		}
		p := loadPolicy(t, configPath("handful-of-hosts"), data)
		if p == nil {
			return
		}
		// The second step, on the address about to be dialled: the listed
		// database at its address, and another one next to it.
		listed := policy.Request{Host: defaults.DBHost, IP: netip.MustParseAddr("10.20.0.5"), Port: uint16(defaults.DBPort)}
		other := policy.Request{Host: "db2.corp.example", IP: netip.MustParseAddr("10.20.0.6"), Port: uint16(defaults.DBPort)}
		if d := p.Decide(listed); !d.Allowed() {
			t.Errorf("%s at %s is denied (%s); the README's second run expects it allowed", listed.Host, listed.IP, d.Reason)
		}
		if d := p.Decide(other); d.Allowed() {
			t.Errorf("%s at %s is allowed; the README's second run expects a denial", other.Host, other.IP)
		}
	})
}
