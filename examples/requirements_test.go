package examples

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"

	"github.com/egress-proxy/egress/policy"
)

// helperPath is the vendorable requirements check, relative to this package.
var helperPath = filepath.Join(pluginDir, "egress_requirements.py")

// Test names: the test's DNS upstream answers SERVFAIL for servfailName
// and NXDOMAIN for every other name, so no lookup ever leaves the machine.
const (
	servfailName = "servfail.test"
	nxName       = "nx.test"      // allowed by every policy below; does not exist
	blockedName  = "blocked.test" // allowed by no rule
)

// testDNS is a miekg/dns server on loopback standing for the policy's
// dns.upstreams: SERVFAIL for servfailName, NXDOMAIN for the rest.
func testDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Rcode = dns.RcodeNameError
		if len(q.Question) == 1 && strings.EqualFold(strings.TrimSuffix(q.Question[0].Name, "."), servfailName) {
			m.Rcode = dns.RcodeServerFailure
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// reqCase is one requirement of the manifest and the outcome it must get.
type reqCase struct {
	key      string // the purpose, unique: it finds the line in the output
	host     string
	port     int
	protocol string
	want     string // outcome
	rule     string // for refused: the rule the helper must give
	via      string // the manifest's via: "direct", "proxy" or ""
}

// via returns cases with every requirement's via set to v.
func via(cases []reqCase, v string) []reqCase {
	out := append([]reqCase(nil), cases...)
	for i := range out {
		out[i].via = v
	}
	return out
}

// origins are the loopback destinations every outcome is made from.
type origins struct {
	tcp, silent    *dbOrigin
	tls, untrusted *apiOrigin
	http           int
	closed, denied int
	dnsAddr        string
}

func startOrigins(t *testing.T) *origins {
	t.Helper()
	o := &origins{
		tcp:       startDB(t, dbAnswers),
		silent:    startDB(t, dbSilent),
		tls:       startAPI(t, false),
		untrusted: startAPI(t, false), // its CA is not the one the helper trusts
		closed:    closedPort(t),
		denied:    closedPort(t), // never dialled: every policy refuses it
		dnsAddr:   testDNS(t),
	}
	h := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(h.Close)
	o.http = h.Listener.Addr().(*net.TCPAddr).Port
	return o
}

// allowed are the destinations the policies below allow, as HOST:PORT.
func (o *origins) allowed() []string {
	var a []string
	for _, p := range []int{o.tcp.port, o.silent.port, o.tls.port, o.untrusted.port, o.http, o.closed} {
		a = append(a, "127.0.0.1:"+strconv.Itoa(p))
	}
	return append(a, servfailName+":5432", nxName+":5432")
}

// cases is the manifest: one requirement per outcome and way to get it.
// nameAllowed says whether the policy lets blockedName through (default
// allow, or audit mode), raw whether the helper connects without a proxy
// through egress's DNS, which resolves names no rule lists (because a cidr
// rule, the origins', could allow some address of them) unless the policy
// says dns.resolve_unlisted: false.
func (o *origins) cases(nameAllowed, raw bool) []reqCase {
	cidr := func(p int) string { return fmt.Sprintf("- {cidr: 127.0.0.1/32, ports: [%d]}", p) }
	c := []reqCase{
		{key: "plain tcp origin", host: "127.0.0.1", port: o.tcp.port, protocol: "tcp", want: "ok"},
		{key: "tls origin", host: "127.0.0.1", port: o.tls.port, protocol: "tls", want: "ok"},
		{key: "https origin", host: "127.0.0.1", port: o.tls.port, protocol: "https", want: "ok"},
		{key: "http origin", host: "127.0.0.1", port: o.http, protocol: "http", want: "ok"},
		{key: "denied tcp", host: "127.0.0.1", port: o.denied, protocol: "tcp", want: "refused", rule: cidr(o.denied)},
		{key: "denied http", host: "127.0.0.1", port: o.denied, protocol: "http", want: "refused", rule: cidr(o.denied)},
		{key: "denied name", host: blockedName, port: 443, protocol: "tcp", want: "refused", rule: "- {host: blocked.test, ports: [443]}"},
		{key: "servfail name", host: servfailName, port: 5432, protocol: "tcp", want: "dns_failure"},
		{key: "nonexistent name", host: nxName, port: 5432, protocol: "tcp", want: "dns_failure"},
		{key: "refusing origin", host: "127.0.0.1", port: o.closed, protocol: "tcp", want: "unreachable"},
		{key: "silent tls origin", host: "127.0.0.1", port: o.silent.port, protocol: "tls", want: "unreachable"},
		{key: "untrusted certificate", host: "127.0.0.1", port: o.untrusted.port, protocol: "https", want: "tls_failure"},
	}
	for i := range c {
		switch {
		case c[i].key == "denied name" && (nameAllowed || raw):
			// Allowed, so resolved: the test upstream says NXDOMAIN. In raw
			// mode egress's DNS answers every name while a cidr rule (the
			// origins') could allow some address of it, and the name does
			// not exist: TestRequirementsDNSRefusal has no cidr rules.
			c[i].want, c[i].rule = "dns_failure", ""
		}
	}
	return c
}

func writeManifest(t *testing.T, cases []reqCase) string {
	t.Helper()
	type req struct {
		Host     string `json:"host"`
		Port     int    `json:"port"`
		Protocol string `json:"protocol"`
		Purpose  string `json:"purpose"`
		Required bool   `json:"required"`
		Via      string `json:"via,omitempty"`
	}
	m := struct {
		Plugin       string `json:"plugin"`
		Requirements []req  `json:"requirements"`
	}{Plugin: "requirements-test"}
	for _, c := range cases {
		m.Requirements = append(m.Requirements, req{c.host, c.port, c.protocol, c.key, true, c.via})
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "requirements.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// helperLine is one line of the CLI's output: outcome, target, protocol,
// purpose, and the rest.
var helperLine = regexp.MustCompile(`^(\S+) +(\S+) (\S+) \(([^)]*)\)(?: \[optional\])?: (.*)$`)

// checkOutcomes asserts every case's outcome in the CLI's stdout, and that
// a rule is given for refusals only.
func checkOutcomes(t *testing.T, r result, cases []reqCase) {
	t.Helper()
	lines := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if m := helperLine.FindStringSubmatch(l); m != nil {
			lines[m[4]] = m
		}
	}
	for _, c := range cases {
		t.Run(c.key+" is "+c.want, func(t *testing.T) {
			m := lines[c.key]
			if m == nil {
				t.Fatalf("no line for %q in:\n%s", c.key, r.stdout)
			}
			if m[1] != c.want {
				t.Fatalf("outcome %s, want %s: %s", m[1], c.want, m[0])
			}
			hasRule := strings.Contains(m[5], "to allow: ")
			switch {
			case strings.Count(m[5], "to allow: ") > 1:
				t.Errorf("two rules on one line: %s", m[0])
			case c.want == "refused" && !strings.HasSuffix(m[5], "; to allow: "+c.rule):
				t.Errorf("a refusal without the rule %q: %s", c.rule, m[0])
			case c.want != "refused" && hasRule:
				t.Errorf("a policy rule for what is no policy refusal: %s", m[0])
			}
		})
	}
	var wantCode int
	for _, c := range cases {
		if c.want != "ok" {
			wantCode = exitUnmet
		}
	}
	if r.code != wantCode {
		t.Errorf("exit %d, want %d", r.code, wantCode)
	}
}

// helperTimeout bounds every run of the helper below; a silent origin
// takes all of it, never much more.
const helperTimeout = 3 * time.Second

// assertBounded checks, loosely, that the check kept to its time bound:
// Python's start and the bound, with two seconds to spare.
func assertBounded(t *testing.T, r result, extra time.Duration) {
	t.Helper()
	if limit := helperTimeout + extra + 2*time.Second; r.elapsed > limit {
		t.Errorf("took %v, want well under %v: the total-time bound does not hold", r.elapsed, limit)
	}
}

func helperArgs(py python, manifest, caFile string) []string {
	args := []string{py.path, helperPath, "--timeout", strconv.FormatFloat(helperTimeout.Seconds(), 'g', -1, 64)}
	if caFile != "" {
		args = append(args, "--ca-file", caFile)
	}
	return append(args, manifest)
}

// TestRequirementsThroughEgressServe runs the helper against `egress
// serve`, through HTTPS_PROXY and HTTP_PROXY, on python3 and python2.7.
func TestRequirementsThroughEgressServe(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	o := startOrigins(t)
	var rules []string
	for _, a := range o.allowed() {
		host, port, _ := net.SplitHostPort(a)
		if net.ParseIP(host) != nil {
			rules = append(rules, fmt.Sprintf("{cidr: %s, ports: [%s]}", host, port))
		} else {
			rules = append(rules, fmt.Sprintf("{host: %s, ports: [%s]}", host, port))
		}
	}
	e := startServe(t, bin, "version: 1\ndefault: deny\nallow:\n  - "+strings.Join(rules, "\n  - ")+
		"\ndns:\n  upstreams: [\""+o.dnsAddr+"\"]\nlisten:\n  admin: 127.0.0.1:0\n")
	// via: proxy, or the IP literals would be checked directly.
	cases := via(o.cases(false, false), "proxy")
	manifest := writeManifest(t, cases)
	env := []string{"HTTPS_PROXY=" + e.proxyURL, "HTTP_PROXY=" + e.proxyURL}
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, 30*time.Second, append(py.env, env...), helperArgs(py, manifest, o.tls.caFile)[0], helperArgs(py, manifest, o.tls.caFile)[1:]...)
			checkOutcomes(t, r, cases)
			assertBounded(t, r, 0)
			// The action asks for exactly the refused rules, nothing else.
			action := r.stderr
			for _, c := range cases {
				if c.rule != "" && !strings.Contains(action, "\n  "+c.rule) {
					t.Errorf("the action lacks the rule %q:\n%s", c.rule, action)
				}
			}
			if n := strings.Count(action, "  - {"); n != 2 {
				t.Errorf("the action gives %d rules, want 2 (the refusals', once each):\n%s", n, action)
			}
		})
	}
}

// TestRequirementsUnderEgressRun runs the helper inside `egress run` under
// every ready config, through the proxy variables egress run sets and in
// raw mode (the variables unset: the transparent path and egress's DNS).
func TestRequirementsUnderEgressRun(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	egressRunAvailable(t, bin)
	o := startOrigins(t)
	configs, err := filepath.Glob(filepath.Join("..", "configs", "*.yaml"))
	if err != nil || len(configs) == 0 {
		t.Fatalf("no ready configs: %v", err)
	}
	// Each run mostly waits (the silent origin takes the helper's whole
	// time bound): they run runsAtOnce at a time, each in its own
	// network namespace, and each is then checked in a subtest of its own.
	type job struct {
		name  string
		env   []string
		args  []string
		cases []reqCase
		r     result
		err   error
	}
	var jobs []*job
	for _, cfg := range configs {
		name := strings.TrimSuffix(filepath.Base(cfg), ".yaml")
		policyFile, nameAllowed, resolvesUnlisted := withUpstream(t, cfg, o.dnsAddr)
		for _, raw := range []bool{false, true} {
			mode := "through the proxy"
			if raw {
				mode = "raw"
			}
			cases := o.cases(nameAllowed, raw && resolvesUnlisted)
			if !raw {
				cases = via(cases, "proxy") // IP literals default to direct
			}
			manifest := writeManifest(t, cases)
			for _, py := range pys {
				args := []string{"run", "--config", policyFile}
				for _, a := range o.allowed() {
					args = append(args, "--allow", a)
				}
				args = append(args, "--")
				if raw {
					args = append(args, "env", "-u", "HTTP_PROXY", "-u", "HTTPS_PROXY", "-u", "http_proxy", "-u", "https_proxy")
				}
				args = append(args, helperArgs(py, manifest, o.tls.caFile)...)
				jobs = append(jobs, &job{name: name + "/" + mode + "/" + py.name, env: py.env, args: args, cases: cases})
			}
		}
	}
	const runsAtOnce = 6
	sem := make(chan struct{}, runsAtOnce)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			j.r, j.err = runCmd(60*time.Second, j.env, bin, j.args...)
		})
	}
	wg.Wait()
	for _, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			if j.err != nil {
				t.Fatal(j.err)
			}
			t.Log(j.r.log)
			checkOutcomes(t, j.r, j.cases)
			// egress run's own start and summary on top.
			assertBounded(t, j.r, 3*time.Second)
		})
	}
}

// withUpstream copies a ready config with dns.upstreams set to the test's
// DNS server, so that no name is ever asked of the machine's resolver. It
// also reports whether the config lets a name no rule lists through, and
// whether it leaves dns.resolve_unlisted at its default, true.
func withUpstream(t *testing.T, path, upstream string) (copyPath string, nameAllowed, resolvesUnlisted bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	d, _ := doc["dns"].(map[string]any)
	if d == nil {
		d = map[string]any{}
	}
	d["upstreams"] = []string{upstream}
	doc["dns"] = d
	// The copy includes what the config includes, where it is.
	if inc, ok := doc["include"].([]any); ok {
		for i, f := range inc {
			if s, ok := f.(string); ok && !filepath.IsAbs(s) {
				abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), s))
				if err != nil {
					t.Fatal(err)
				}
				inc[i] = abs
			}
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	copyPath = filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(copyPath, out, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := policy.LoadWith(copyPath, out, os.ReadFile)
	if err != nil {
		t.Fatalf("%s: %v", copyPath, err)
	}
	return copyPath, p.Default == policy.Allow || p.Mode == policy.Audit, p.DNS.ResolveUnlisted
}

// TestRequirementsDNSRefusal runs the helper in raw mode inside `egress
// run` with names only, so that egress's DNS decides on them: a name no
// rule allows gets NXDOMAIN with egress's Extended DNS Error (refused, with
// the rule), a name allowed but absent upstream a plain NXDOMAIN, and one
// whose upstream fails SERVFAIL (both dns_failure, no rule).
func TestRequirementsDNSRefusal(t *testing.T) {
	pys := pythons(t)
	bin := egress(t)
	egressRunAvailable(t, bin)
	dnsAddr := testDNS(t)
	for _, cfg := range []string{"full-internet", "handful-of-hosts", "no-network", "audit"} {
		policyFile, nameAllowed, _ := withUpstream(t, configPath(cfg), dnsAddr)
		cases := []reqCase{
			{key: "denied name", host: blockedName, port: 443, protocol: "tcp", want: "refused", rule: "- {host: blocked.test, ports: [443]}"},
			{key: "nonexistent name", host: nxName, port: 5432, protocol: "tcp", want: "dns_failure"},
			{key: "servfail name", host: servfailName, port: 5432, protocol: "tls", want: "dns_failure"},
		}
		if nameAllowed {
			// Let through: the upstream's NXDOMAIN is then the truth, no
			// refusal. (handful-of-hosts has a cidr rule that could allow
			// some address of any name on 5432, but its
			// dns.resolve_unlisted: false refuses the name unresolved.)
			cases[0].want, cases[0].rule = "dns_failure", ""
		}
		manifest := writeManifest(t, cases)
		for _, py := range pys {
			t.Run(cfg+"/"+py.name, func(t *testing.T) {
				args := []string{"run", "--config", policyFile, "--allow", nxName + ":5432", "--allow", servfailName + ":5432", "--",
					"env", "-u", "HTTP_PROXY", "-u", "HTTPS_PROXY", "-u", "http_proxy", "-u", "https_proxy"}
				args = append(args, helperArgs(py, manifest, "")...)
				r := run(t, 60*time.Second, py.env, bin, args...)
				checkOutcomes(t, r, cases)
				assertBounded(t, r, 3*time.Second)
			})
		}
	}
}

// TestRequirementsError checks the exception a plugin gets from require():
// message, action and output read like the engine SDK's user errors, and
// an optional requirement that fails is reported but raises nothing.
func TestRequirementsError(t *testing.T) {
	t.Parallel()
	db := startDB(t, dbAnswers)
	required, optional := closedPort(t), closedPort(t)
	script := fmt.Sprintf(`
import json, sys
sys.path.insert(0, %q)
import egress_requirements as er
reqs = [{"host": "127.0.0.1", "port": %d, "purpose": "database"},
        {"host": "127.0.0.1", "port": %d, "purpose": "cache", "required": False}]
out = {"results": [r.outcome for r in er.require(reqs, timeout=2)]}
try:
    er.require(reqs + [{"host": "127.0.0.1", "port": %d, "purpose": "api"}], timeout=2, plugin="p")
except er.NetworkRequirementsError as e:
    out.update(message=e.message, action=e.action, output=e.output, text=str(e))
print(json.dumps(out))
`, pluginDir, db.port, optional, required)
	for _, py := range pythons(t) {
		t.Run(py.name, func(t *testing.T) {
			r := run(t, 20*time.Second, py.env, py.path, "-c", script)
			var got struct {
				Results                       []string
				Message, Action, Output, Text string
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("output is not JSON: %v", err)
			}
			if strings.Join(got.Results, ",") != "ok,unreachable" {
				t.Errorf("results %v: an optional failure must not raise", got.Results)
			}
			if want := fmt.Sprintf("p cannot reach 1 of 2 required network destinations: 127.0.0.1:%d", required); got.Message != want {
				t.Errorf("message %q, want %q", got.Message, want)
			}
			if lines := strings.Split(got.Output, "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], "unreachable ") || !strings.Contains(lines[1], "[optional]") {
				t.Errorf("output, one line per requirement, the optional one marked:\n%s", got.Output)
			}
			if !strings.Contains(got.Action, "up and listening") || strings.Contains(got.Action, "allow:") {
				t.Errorf("action %q: want advice for a closed port, no rule", got.Action)
			}
			for _, part := range []string{got.Message, got.Output, got.Action} {
				if !strings.Contains(got.Text, part) {
					t.Errorf("str(exc) lacks %q", part)
				}
			}
		})
	}
}

// TestRequirementFieldErrors: a bad purpose, required or via is refused
// with the same message on a host requirement and on a url one (the
// checks exist once), and the url form's own errors stay its own.
func TestRequirementFieldErrors(t *testing.T) {
	t.Parallel()
	script := fmt.Sprintf(`
import json, sys
sys.path.insert(0, %q)
import egress_requirements as er
out = []
for d in [{"host": "h", "port": 1, "purpose": 7}, {"url": "https://h/x", "purpose": 7},
          {"host": "h", "port": 1, "required": "yes"}, {"url": "https://h/x", "required": "yes"},
          {"host": "h", "port": 1, "via": "carrier-pigeon"}, {"url": "https://h/x", "via": "carrier-pigeon"},
          {"url": "https://h/x", "port": 1}, {"host": "h", "port": 1, "method": "GET"}]:
    try:
        er.Requirement.from_dict(d)
        out.append("accepted")
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
`, pluginDir)
	want := []string{
		"requirement: purpose must be a string", "requirement: purpose must be a string",
		"requirement: required must be true or false", "requirement: required must be true or false",
		"requirement: via must be direct or proxy", "requirement: via must be direct or proxy",
		"requirement: a requirement with url takes its port from the URL", "requirement: method needs a url",
	}
	for _, py := range pythons(t) {
		t.Run(py.name, func(t *testing.T) {
			r := run(t, 20*time.Second, py.env, py.path, "-c", script)
			var got []string
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s%s", err, r.stdout, r.stderr)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
