package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// Named apart from other golden tests' -update so that the files of this
// package can each have one.
var updateLearn = flag.Bool("update-learn", false, "rewrite testdata/learn golden files")

// learnGolden runs egress learn on testdata/learn/NAME.log and compares
// what it writes with testdata/learn/NAME.policy.yaml (rewritten with
// -update-learn). It returns what learn wrote and its summary (stderr).
func learnGolden(t *testing.T, name string) (learned []byte, summary string) {
	t.Helper()
	in := filepath.Join("testdata", "learn", name+".log")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"learn", in}, &stdout, &stderr); code != exitOK {
		t.Fatalf("egress learn: exit %d\n%s", code, stderr.String())
	}
	golden := filepath.Join("testdata", "learn", name+".policy.yaml")
	if *updateLearn {
		if err := os.WriteFile(golden, stdout.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update-learn to create it)", err)
	}
	if got := stdout.String(); got != string(want) {
		t.Errorf("egress learn output differs from %s (run with -update-learn):\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
	return stdout.Bytes(), stderr.String()
}

func TestLearnGolden(t *testing.T) {
	learned, summary := learnGolden(t, "audit")
	for _, want := range []string{
		"egress learn: 20 lines, 16 decisions, 5 destinations learned, 4 lines skipped\n",
		"egress learn: held back 3 destinations whose rule would lift a guard (written commented out; --lift-guards writes them)\n",
		"egress learn: not learned: 1 denial of an enforcing egress (event deny; --include-denied learns them)\n",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %q", summary, want)
		}
	}

	// egress lint accepts the output as is: no error, no warning.
	out := filepath.Join(t.TempDir(), "learned.yaml")
	if err := os.WriteFile(out, learned, 0o644); err != nil {
		t.Fatal(err)
	}
	var lintOut, lintErr bytes.Buffer
	if code := run([]string{"lint", out}, &lintOut, &lintErr); code != exitOK || strings.Contains(lintOut.String(), ": warning:") {
		t.Errorf("egress lint on the learned policy: exit %d\n%s", code, lintOut.String())
	}

	// It allows what was observed and nothing else.
	p, err := policy.Load(out, learned)
	if err != nil {
		t.Fatalf("policy.Load: %v", err)
	}
	if p.Mode != policy.Enforce || p.Default != policy.Deny {
		t.Errorf("mode %v default %v, want enforce and deny", p.Mode, p.Default)
	}
	ip := netip.MustParseAddr
	tests := []struct {
		name  string
		req   policy.Request
		allow bool
	}{
		{"an observed host and port is allowed", policy.Request{Host: "api.vendor-a.example", IP: ip("93.184.216.10"), Port: 443}, true},
		{"the other observed port of that host is allowed", policy.Request{Host: "api.vendor-a.example", IP: ip("93.184.216.10"), Port: 80}, true},
		{"an unobserved port of an observed host is denied", policy.Request{Host: "api.vendor-a.example", IP: ip("93.184.216.10"), Port: 8080}, false},
		{"an observed host can be looked up", policy.Request{Host: "api.vendor-a.example"}, true},
		{"an allowed host from the log is allowed", policy.Request{Host: "cdn.vendor-a.example", IP: ip("93.184.216.11"), Port: 443}, true},
		{"an observed private address is held back: its rule would lift a guard", policy.Request{IP: ip("10.20.0.5"), Port: 5432}, false},
		{"an address allowed through a loopback rule is held back", policy.Request{IP: ip("127.0.0.1"), Port: 8080}, false},
		{"an enforcing egress's denial is not learned", policy.Request{Host: "probe.example", IP: ip("93.184.216.20"), Port: 22}, false},
		{"an observed IPv6 address is allowed", policy.Request{IP: ip("2606:2800:220:1::7"), Port: 8443}, true},
		{"a host seen at a private address is held back", policy.Request{Host: "db", IP: ip("10.20.0.6"), Port: 5432}, false},
		{"a host named null is a host", policy.Request{Host: "null", IP: ip("93.184.216.12"), Port: 443}, true},
		{"a host only looked up is not allowed", policy.Request{Host: "telemetry.vendor-b.example", Port: 443}, false},
		{"metadata is never learned", policy.Request{Host: "metadata.google.internal", IP: ip("169.254.169.254"), Port: 80}, false},
		{"a refused client's destination is not learned", policy.Request{Host: "elsewhere.example", IP: ip("93.184.216.13"), Port: 443}, false},
		{"a host injected through the log text is not allowed", policy.Request{Host: "anything.example", IP: ip("93.184.216.14"), Port: 443}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := p.Decide(tt.req); d.Allowed() != tt.allow {
				t.Errorf("Decide(%+v) = %s (%s), want allowed=%v", tt.req, d.Event(), d.Reason, tt.allow)
			}
		})
	}
}

// TestLearnLiftGuardsAndIncludeDenied: the flags write what learn holds
// back by default, metadata excepted.
func TestLearnLiftGuardsAndIncludeDenied(t *testing.T) {
	in := filepath.Join("testdata", "learn", "audit.log")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"learn", "--lift-guards", "--include-denied", in}, &stdout, &stderr); code != exitOK {
		t.Fatalf("egress learn: exit %d\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "held back") || strings.Contains(stderr.String(), "not learned") {
		t.Errorf("flags given, yet learn says it held back:\n%s", stderr.String())
	}
	if !strings.Contains(stdout.String(), "  # lifts guard_private (--lift-guards)\n  - cidr: 10.20.0.5\n") {
		t.Errorf("the lifting rule is not marked:\n%s", stdout.String())
	}
	p, err := policy.Load("learned.yaml", stdout.Bytes())
	if err != nil {
		t.Fatalf("policy.Load: %v\n%s", err, stdout.String())
	}
	ip := netip.MustParseAddr
	for _, tt := range []struct {
		name  string
		req   policy.Request
		allow bool
	}{
		{"--lift-guards: a private address is learned", policy.Request{IP: ip("10.20.0.5"), Port: 5432}, true},
		{"--lift-guards: its neighbour stays guarded", policy.Request{IP: ip("10.20.0.7"), Port: 5432}, false},
		{"--lift-guards: a host at a private address is learned", policy.Request{Host: "db", IP: ip("10.20.0.6"), Port: 5432}, true},
		{"--lift-guards: loopback is learned", policy.Request{IP: ip("127.0.0.1"), Port: 8080}, true},
		{"--lift-guards: metadata is still never learned", policy.Request{Host: "metadata.google.internal", IP: ip("169.254.169.254"), Port: 80}, false},
		{"--include-denied: an enforcing egress's denial is learned", policy.Request{Host: "probe.example", IP: ip("93.184.216.20"), Port: 22}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := p.Decide(tt.req); d.Allowed() != tt.allow {
				t.Errorf("Decide(%+v) = %s (%s), want allowed=%v", tt.req, d.Event(), d.Reason, tt.allow)
			}
		})
	}
}

// TestLearnReadsWhatEventlogWrites guards the field names: lines written
// by eventlog.Log (the canonical line) are what learn must read.
func TestLearnReadsWhatEventlogWrites(t *testing.T) {
	pol, err := policy.Load("audit.yaml", []byte("version: 1\ndefault: deny\nmode: audit\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := zerolog.New(&logs).With().Timestamp().Logger()
	sink := &eventlog.Sink{Logger: logger}
	for _, port := range []uint16{443, 8443, 443} {
		d := pol.Decide(policy.Request{Host: "svc.example.org", IP: netip.MustParseAddr("93.184.216.34"), Port: port})
		if !d.Audit {
			t.Fatalf("want an audit denial, got %+v", d)
		}
		sink.Record(eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoConnect, Decision: d, Duration: time.Millisecond})
	}
	// Rotated logs are often compressed.
	dir := t.TempDir()
	file := filepath.Join(dir, "egress.log.1.gz")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(logs.Bytes())
	zw.Close()
	if err := os.WriteFile(file, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "learned.yaml")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"learn", "-o", out, file}, &stdout, &stderr); code != exitOK {
		t.Fatalf("egress learn: exit %d\n%s", code, stderr.String())
	}
	text, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "  - host: svc.example.org\n    ports: [443, 8443]\n") ||
		!strings.Contains(string(text), "# 443: 2 seen (audit_deny 2), first ") {
		t.Errorf("learned policy lacks the rule or its counts:\n%s", text)
	}
}

func TestLearnBadInput(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, "console.log")
	os.WriteFile(console, []byte("10:00AM WRN deny host=x.example port=443\n"), 0o644)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no file is a usage error", []string{"learn"}, "usage: egress learn"},
		{"a missing file says so", []string{"learn", filepath.Join(dir, "nope.log")}, "no such file"},
		{"a log without decisions says what to check", []string{"learn", console}, "no egress decisions"},
		{"a bad mode is a usage error", []string{"learn", "-mode", "enforcing", console}, "usage: egress learn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
		})
	}
}

// TestLearnWritesRulesAsThePolicyDoes: learn and the policy's hints
// quote names and addresses with one implementation, so a learned rule
// reads exactly like the hint for the same destination.
func TestLearnWritesRulesAsThePolicyDoes(t *testing.T) {
	for _, name := range []string{
		"api.example.com", "db", "null", "yes", "1e3", "123", "1password.com",
		"xn--bcher-kva.example", "under_score.example", "0x10.example",
	} {
		want := strings.TrimSuffix(strings.TrimPrefix(policy.HostRule(name, 0), "- {"), "}")
		if got := (&dest{host: name}).ruleKey(); got != want {
			t.Errorf("learned rule for %q: %s, want the hint's %s", name, got, want)
		}
	}
	for _, ip := range []string{"10.20.0.5", "2606:2800:220:1::7"} {
		want := "cidr: " + policy.YAMLScalar(ip)
		if got := (&dest{ip: netip.MustParseAddr(ip)}).ruleKey(); got != want {
			t.Errorf("learned rule for %s: %s, want %s", ip, got, want)
		}
	}
}

// FuzzLearnLine: whatever a log line says, the learned policy loads.
func FuzzLearnLine(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("testdata", "learn", "audit.log"))
	if err != nil {
		f.Fatal(err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		l := newLearner()
		l.line(line)
		text := l.policy([]string{"fuzz.log"}, "enforce")
		if _, err := policy.Load("learned.yaml", []byte(text)); err != nil {
			t.Fatalf("learned policy does not load: %v\nline: %q\n%s", err, line, text)
		}
	})
}
