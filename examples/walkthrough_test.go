package examples

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	readme := readmeRuns(t)
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			testWalkthrough(t, bin, py, readme)
		})
	}
}

// readmeRun is one run of the walkthrough as plugin-python/README.md
// pastes it: the "$ egress run --config configs/CONFIG.yaml ..." command's
// output lines and the exit code under "$ echo $?".
type readmeRun struct {
	line   int // of the command, in the README
	config string
	out    []string
	code   int
}

// readmeRuns reads the walkthrough's runs from the README, in order (full
// internet, a handful of hosts, no network).
func readmeRuns(t *testing.T) []readmeRun {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(pluginDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var runs []readmeRun
	var cur *readmeRun
	in, section, cont, code := false, false, false, false
	for i, l := range strings.Split(string(text), "\n") {
		switch {
		case strings.HasPrefix(l, "## "):
			section = strings.HasPrefix(l, "## Walkthrough")
		case !section:
		case strings.HasPrefix(l, "```"):
			in = !in
			cur = nil
		case !in:
		case strings.HasPrefix(l, "$ egress run --config configs/"):
			cfg, _, _ := strings.Cut(strings.TrimPrefix(l, "$ egress run --config configs/"), ".yaml")
			runs = append(runs, readmeRun{line: i + 1, config: cfg, code: -1})
			cur = &runs[len(runs)-1]
			cont = strings.HasSuffix(l, "\\")
		case cur == nil:
		case cont:
			cont = strings.HasSuffix(l, "\\")
		case l == "$ echo $?":
			code = true
		case code:
			cur.code, _ = strconv.Atoi(l)
			code, cur = false, nil
		default:
			cur.out = append(cur.out, l)
		}
	}
	if len(runs) != 3 {
		t.Fatalf("plugin-python/README.md's walkthrough shows %d runs, want 3 (did the parsing break?)", len(runs))
	}
	return runs
}

var (
	pastedPID  = regexp.MustCompile(`pid \d+`)
	pastedID   = regexp.MustCompile(`\b[0-9a-f]{16}\b`)
	pastedPort = regexp.MustCompile(`((?:127\.0\.0\.1|localhost):|127\.0\.0\.1/32, ports: \[|"port": |--db-port )\d+`)
	pastedGap  = regexp.MustCompile(`\s+`)
)

// pasted is a line of a run's output as the README pastes it: pids, ids
// and loopback ports (the stand-ins', egress's proxy's) stand for any,
// and runs of spaces (the summary's columns) are one.
func pasted(l string) string {
	l = pastedPID.ReplaceAllString(l, "pid N")
	l = pastedID.ReplaceAllString(l, "ID")
	l = pastedPort.ReplaceAllString(l, "${1}PORT")
	return strings.TrimSpace(pastedGap.ReplaceAllString(l, " "))
}

// wantPasted checks that the README's paste of a run shows what the run
// printed: its exit code, and the same lines (the plugin's refusals and
// advice, egress's live denials and its summary), each in both; order
// aside, since egress and the plugin write to one terminal at once.
func wantPasted(t *testing.T, want readmeRun, r result) {
	t.Helper()
	if r.code != want.code {
		t.Errorf("README.md:%d shows exit %d; the run exits %d", want.line, want.code, r.code)
	}
	count := func(lines []string) map[string]int {
		m := map[string]int{}
		for _, l := range lines {
			if l = pasted(l); l != "" {
				m[l]++
			}
		}
		return m
	}
	got := count(strings.Split(r.stdout+r.stderr, "\n"))
	shown := count(want.out)
	for l, n := range shown {
		if got[l] != n {
			t.Errorf("README.md:%d (%s) shows %d times a line the run prints %d times:\n  %s", want.line, want.config, n, got[l], l)
		}
	}
	for l, n := range got {
		if shown[l] == 0 {
			t.Errorf("README.md:%d (%s) lacks a line the run prints %d times:\n  %s", want.line, want.config, n, l)
		}
	}
}

func configPath(name string) string { return filepath.Join("..", "configs", name+".yaml") }

// testWalkthrough runs the walkthrough on py; on python3, the one the
// README shows, each run's output is held to the README's paste.
func testWalkthrough(t *testing.T, bin string, py python, readme []readmeRun) {
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
	// README shows r as the paste readme[i], on python3.
	shows := func(t *testing.T, i int, r result) {
		if py.name != "python3" {
			t.Logf("README.md pastes python3's runs: %s's output is not compared with it", py.name)
			return
		}
		wantPasted(t, readme[i], r)
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
		// The summary tells the author, as information, that the DB
		// connection went out directly (a raw socket, as its driver's
		// would: via: direct), caught by the transparent path.
		var flagged bool
		for _, l := range egressLines(r.stderr) {
			if strings.Contains(l, "127.0.0.1:"+strconv.Itoa(db.port)) && strings.Contains(l, "raw socket") {
				flagged = true
			}
		}
		if !flagged {
			t.Errorf("egress's summary does not say the DB connection was a raw socket")
		}
		if !egressSays(r.stderr, "went out directly (raw sockets or clients that ignore HTTP_PROXY), caught by the transparent path") {
			t.Errorf("egress's summary does not say that connections went out directly")
		}
		if egressSays(r.stderr, "would not get out") {
			t.Errorf("egress's summary blames the plugin for its direct connections")
		}
		shows(t, 0, r)
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
		shows(t, 1, r)
	})

	t.Run("handful of hosts with the DB: the plugin works", func(t *testing.T) {
		r := egressRun(t, "handful-of-hosts", allowAPI, allowDB)
		if r.code != 0 {
			t.Fatalf("exit %d, want 0", r.code)
		}
	})

	t.Run("no network: the plugin fails fast and egress lists the denials", func(t *testing.T) {
		// The README's command: the plugin's defaults, names egress's
		// DNS refuses before any lookup (no-network has no rule), so no
		// query leaves the host.
		r := run(t, bound, py.env, bin, "run", "--config", configPath("no-network"), "--", py.path, filepath.Join(pluginDir, "plugin.py"),
			"--timeout", strconv.FormatFloat(timeout.Seconds(), 'g', -1, 64))
		if r.code != exitUnmet {
			t.Fatalf("exit %d, want %d", r.code, exitUnmet)
		}
		if !strings.Contains(r.stderr, "plugin: example-dbms cannot reach 2 of 2 required network destinations") {
			t.Errorf("stderr lacks the plugin's error naming both the DB and the API")
		}
		// The database (via: direct) is refused by egress's DNS, the API
		// by its proxy.
		wantOutcome(t, r.stderr, "PostgreSQL", "refused", "egress's DNS refused db.corp.example")
		wantOutcome(t, r.stderr, "DBMS REST API", "refused")
		for _, want := range []string{"- {host: db.corp.example, ports: [5432]}", "- {host: api.example.com, ports: [443]}"} {
			if !strings.Contains(r.stderr, "plugin:   "+want+"\n") {
				t.Errorf("the plugin's error does not give the rule %q", want)
			}
		}
		// egress's summary: the API's rule; for the name its DNS refused,
		// no port (a lookup names none): the README says to paste the
		// plugin's, which knows it.
		for _, want := range []string{"to allow: - {host: api.example.com, ports: [443]}", "to allow: - {host: db.corp.example}"} {
			if !egressSays(r.stderr, want) {
				t.Errorf("egress's summary does not say %q", want)
			}
		}
		shows(t, 2, r)
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
