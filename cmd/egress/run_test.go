//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/sandbox"
)

// TestRunHelperProcess is not a test: it is egress run, started by the
// tests below as a child (the os/exec helper-process pattern), and also
// the sandbox's setup process that egress run re-executes.
func TestRunHelperProcess(t *testing.T) {
	if os.Getenv("EGRESS_RUN_HELPER") != "1" {
		t.Skip("helper process")
	}
	runExeArgs = []string{"-test.run=^TestRunHelperProcess$", "--"}
	if d, err := time.ParseDuration(os.Getenv("EGRESS_TEST_LEASE")); err == nil {
		leaseMinTTL, leaseGrace = d, 0
	}
	if _, child := os.LookupEnv("_EGRESS_SANDBOX_CHILD"); child {
		os.Exit(cmdRun(flag.Args(), os.Stdout, os.Stderr))
	}
	args := strings.Split(os.Getenv("EGRESS_RUN_ARGS"), "\n")
	os.Exit(run(args, os.Stdout, os.Stderr))
}

type runResult struct {
	code           int
	stdout, stderr string
	elapsed        time.Duration
}

// runEgress runs "egress ARGS..." to completion with extra environment.
func runEgress(t *testing.T, env []string, args ...string) runResult {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRunHelperProcess$")
	cmd.Env = append(os.Environ(), append(env, "EGRESS_RUN_HELPER=1", "EGRESS_RUN_ARGS="+strings.Join(args, "\n"))...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("egress %s did not finish in 60s; stderr:\n%s", strings.Join(args, " "), stderr.String())
	}
	r := runResult{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	t.Logf("egress %s: exit %d in %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// sandboxProbe is the one "egress run -- true" of the test binary that
// requireSandbox asks: the answer is the machine's, not a test's.
var sandboxProbe struct {
	once sync.Once
	r    runResult
}

// requireSandbox skips the test where egress run cannot create its
// namespace (no root and no unprivileged user namespaces).
func requireSandbox(t *testing.T) {
	t.Helper()
	sandboxProbe.once.Do(func() { sandboxProbe.r = runEgress(t, nil, "run", "--quiet", "--", "true") })
	r := sandboxProbe.r
	if r.code == 125 {
		t.Skipf("egress run cannot create a network namespace here: %s", strings.TrimSpace(r.stderr))
	}
	if r.code != 0 {
		t.Fatalf("egress run -- true exited %d; stderr:\n%s", r.code, r.stderr)
	}
}

func TestRunExitCode(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"the command's exit code passes through", []string{"run", "--", "sh", "-c", "exit 7"}, 7},
		{"a command killed by a signal exits 128 plus the signal", []string{"run", "--", "sh", "-c", "kill -TERM $$"}, 128 + 15},
		{"a command that is not found exits 127", []string{"run", "--", "/nonexistent/egress-test-cmd"}, 127},
		{"no command is a usage error", []string{"run"}, exitUsage},
		{"a bad --allow is a usage error", []string{"run", "--allow", "a:b:c:d", "--", "true"}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runEgress(t, nil, tt.args...)
			if r.code != tt.want {
				t.Fatalf("exit %d, want %d", r.code, tt.want)
			}
			// A command that never started has nothing to summarise.
			if tt.want == 127 && strings.Contains(r.stderr, "connections") {
				t.Errorf("a summary after the error:\n%s", r.stderr)
			}
		})
	}
}

// TestRunSummaryCountsDNSFailures: a lookup no upstream answered is
// counted in the summary beside the connections, with what failed.
func TestRunSummaryCountsDNSFailures(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	// A loopback UDP port nothing listens on: the upstream refuses at once.
	down := closedUDPPort(t)
	config := writeConfig(t, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {host: svc.test, ports: [443]}\ndeny:\n  - {host: blocked.test, reason: \"no pastebins: ask #netops\"}\n  - {cidr: 192.0.2.1, reason: \"documentation only\"}\ndns:\n  upstreams: [%q]\n", down))
	script := `
import socket
try:
    socket.getaddrinfo("svc.test", 443, socket.AF_INET, socket.SOCK_STREAM)
    print("resolved")
except Exception as e:
    print("failed:", type(e).__name__)
try:
    socket.getaddrinfo("blocked.test", 443, socket.AF_INET, socket.SOCK_STREAM)
except Exception as e:
    pass
try:
    socket.create_connection(("192.0.2.1", 443), timeout=5)
except Exception as e:
    pass
`
	file := filepath.Join(t.TempDir(), "lookup.py")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runEgress(t, nil, "run", "--config", config, "--", py, file)
	if r.code != 0 || !strings.Contains(r.stdout, "failed:") {
		t.Fatalf("exit %d, stdout %q: want the lookup to fail", r.code, r.stdout)
	}
	// The resolver in the sandbox may ask more than once.
	if !regexp.MustCompile(`egress run: 1 connection, 1 denied; [1-9][0-9]* DNS answers? refused; [1-9][0-9]* DNS quer(y|ies) failed\n`).MatchString(r.stderr) {
		t.Errorf("summary does not count the failed lookups:\n%s", r.stderr)
	}
	for _, want := range []string{
		"DNS queries that failed (allowed, but no upstream answered: SERVFAIL):",
		"blocked.test", "reason: denied_by_rule\n        why: no pastebins: ask #netops\n",
		"egress: denied tcp 192.0.2.1:443 (denied_by_rule: documentation only)\n",
		"svc.test",
		"error: no upstream answered: " + down + " refused (port unreachable: nothing listens there)",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stderr)
		}
	}
}

// clientScript exercises the network from inside the sandbox the way
// plugin code does and prints one JSON object of results. Python 2.7 and 3.
const clientScript = `
from __future__ import print_function
import json, socket, ssl, sys, time
try:
    import http.client as httplib
    import urllib.request as urlreq
    from urllib.error import HTTPError
except ImportError:
    import httplib
    import urllib2 as urlreq
    from urllib2 import HTTPError

ok_port, deny_port, db_port, tls_port = [int(a) for a in sys.argv[1:5]]
res = {}

def check(name, f):
    start = time.time()
    try:
        out = f()
        res[name] = {"ok": True, "out": str(out)[:200], "secs": time.time() - start}
    except HTTPError as e:
        res[name] = {"ok": False, "err": "HTTPError %d" % e.code, "secs": time.time() - start}
    except Exception as e:
        res[name] = {"ok": False, "err": "%s: %s" % (type(e).__name__, e), "secs": time.time() - start}

def raw_http(host, port):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /raw HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    data = s.recv(100)
    s.close()
    if not data:
        raise IOError("closed without an answer")
    return data.split(b"\r\n")[0].decode()

def greeting(host, port):
    s = socket.create_connection((host, port), timeout=10)
    data = s.recv(100)
    s.close()
    if not data:
        raise IOError("closed without an answer")
    return data.decode().strip()

def http_client(port):
    c = httplib.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/httpclient")
    return c.getresponse().status

def via_proxy(port):
    return urlreq.urlopen("http://127.0.0.1:%d/urllib" % port, timeout=10).getcode()

def resolve(name):
    return sorted(set(a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)))

def db_by_name():
    addr = socket.getaddrinfo("db.test", db_port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    return greeting(addr, db_port)

def tls_spoof():
    ctx = ssl.SSLContext(getattr(ssl, "PROTOCOL_TLS_CLIENT", ssl.PROTOCOL_SSLv23))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # api.test is allowed on tls_port but lives elsewhere: nothing opened
    # 127.0.0.1 on that port, so connect() is refused before any SNI.
    s = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname="api.test")
    return t.version()

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"quic?", ("192.0.2.1", 443))
    return s.recv(10)

check("raw_allowed", lambda: raw_http("127.0.0.1", ok_port))
check("raw_denied", lambda: raw_http("127.0.0.1", deny_port))
check("httpclient_allowed", lambda: http_client(ok_port))
check("httpclient_denied", lambda: http_client(deny_port))
check("urllib_allowed", lambda: via_proxy(ok_port))
check("urllib_denied", lambda: via_proxy(deny_port))
check("urllib_by_name", lambda: urlreq.urlopen("http://web.test:%d/byname" % ok_port, timeout=10).read().decode())
check("resolve_allowed", lambda: resolve("db.test"))
check("resolve_denied", lambda: resolve("denied.test"))
check("db_by_name", db_by_name)
check("sni_spoof", tls_spoof)
check("unknown_ip", lambda: greeting("192.0.2.1", 5432))
check("ipv6", lambda: greeting("2001:db8::5", 5432))
check("udp", udp)
print(json.dumps(res))
sys.exit(3)
`

// dnsUpstream answers A queries from a map on 127.0.0.1 (UDP), TTL 60.
func dnsUpstream(t *testing.T, records map[string]string) string {
	t.Helper()
	return dnsUpstreamTTL(t, records, 60)
}

// dnsUpstreamTTL is dnsUpstream with answers valid for ttl seconds.
func dnsUpstreamTTL(t *testing.T, records map[string]string, ttl int) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.TrimSuffix(strings.ToLower(q.Question[0].Name), ".")
		ip, ok := records[name]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A %s", q.Question[0].Name, ttl, ip))
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// greeterOrigin serves "db ready\n" to each connection on 127.0.0.1 and
// returns its port.
func greeterOrigin(t *testing.T) int {
	t.Helper()
	return greeterOriginOn(t, "127.0.0.1")
}

// greeterOriginOn is greeterOrigin on host (10.0.0.2 in hostNamespace).
func greeterOriginOn(t *testing.T, host string) int {
	t.Helper()
	return testnet.ServeTCPOn(t, host, func(c net.Conn) { io.WriteString(c, "db ready\n") }).Port
}

// freePort is a TCP port of host that nothing listens on (a moment ago).
func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type scriptResult struct {
	OK   bool    `json:"ok"`
	Out  string  `json:"out"`
	Err  string  `json:"err"`
	Secs float64 `json:"secs"`
}

func TestRunPython(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) }))
	defer ok.Close()
	deny := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "must not be reached") }))
	defer deny.Close()
	tlsOrigin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsOrigin.Close()
	okPort := ok.Listener.Addr().(*net.TCPAddr).Port
	denyPort := deny.Listener.Addr().(*net.TCPAddr).Port
	tlsPort := tlsOrigin.Listener.Addr().(*net.TCPAddr).Port
	dbPort := greeterOrigin(t)
	upstream := dnsUpstream(t, map[string]string{
		"db.test":     "127.0.0.1",
		"web.test":    "127.0.0.1",
		"api.test":    "127.0.0.9", // api.test is allowed, but not at 127.0.0.1
		"denied.test": "127.0.0.5", // no rule allows it
	})

	dir := t.TempDir()
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 1
default: deny
allow:
  - host: db.test
    ports: [%d]
  - host: api.test
    ports: [%d]
  - host: web.test
    ports: [%d]
dns:
  upstreams: [%q]
`, dbPort, tlsPort, okPort, upstream)), 0o600)
	script := filepath.Join(dir, "client.py")
	os.WriteFile(script, []byte(clientScript), 0o600)

	pythons := []struct {
		name string
		env  []string
		exe  string
	}{
		{"python3", nil, "python3"},
		{"python2.7", []string{"PYENV_VERSION=2.7.18"}, "python2.7"},
	}
	for _, py := range pythons {
		t.Run(py.name, func(t *testing.T) {
			check := exec.Command(py.exe, "-c", "import ssl, json")
			check.Env = append(os.Environ(), py.env...)
			if err := check.Run(); err != nil {
				t.Skipf("%s is not available: %v", py.name, err)
			}
			logFile := filepath.Join(t.TempDir(), "egress.log")
			r := runEgress(t, py.env, "run", "--config", config, "--allow", "127.0.0.1:"+strconv.Itoa(okPort), "--log", logFile, "--",
				py.exe, script, strconv.Itoa(okPort), strconv.Itoa(denyPort), strconv.Itoa(dbPort), strconv.Itoa(tlsPort))
			if r.code != 3 {
				t.Fatalf("exit %d, want the script's 3", r.code)
			}
			var res map[string]scriptResult
			if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &res); err != nil {
				t.Fatalf("script output: %v", err)
			}
			want := map[string]bool{
				"raw_allowed": true, "raw_denied": false,
				"httpclient_allowed": true, "httpclient_denied": false,
				"urllib_allowed": true, "urllib_denied": false, "urllib_by_name": true,
				"resolve_allowed": true, "resolve_denied": false,
				"db_by_name": true, "sni_spoof": false,
				"unknown_ip": false, "ipv6": false, "udp": false,
			}
			for name, wantOK := range want {
				got, found := res[name]
				if !found {
					t.Errorf("%s: no result", name)
					continue
				}
				if got.OK != wantOK {
					t.Errorf("%s: ok=%v (%s%s), want ok=%v", name, got.OK, got.Out, got.Err, wantOK)
				}
				if !wantOK && got.Secs > 3 {
					t.Errorf("%s: failed after %.1fs; a denial must fail fast", name, got.Secs)
				}
			}
			if got := res["raw_allowed"].Out; !strings.Contains(got, "200") {
				t.Errorf("raw_allowed answered %q", got)
			}
			if got := res["urllib_denied"].Err; got != "HTTPError 403" {
				t.Errorf("urllib_denied: %q, want the proxy's 403", got)
			}
			if got := res["urllib_by_name"].Out; got != "ok /byname" {
				t.Errorf("urllib_by_name: %q", got)
			}
			if got := res["db_by_name"].Out; got != "db ready" {
				t.Errorf("db_by_name: %q", got)
			}
			// A denied raw connect() fails at once, as behind a firewall,
			// IPv4 and IPv6 alike: Python 3 says ConnectionRefusedError,
			// Python 2.7 socket.error ECONNREFUSED.
			for _, name := range []string{"raw_denied", "httpclient_denied", "unknown_ip", "ipv6", "sni_spoof"} {
				if got := res[name].Err; !strings.Contains(got, "ConnectionRefusedError") && !strings.Contains(got, "[Errno 111]") {
					t.Errorf("%s: %q, want connection refused at connect()", name, got)
				}
			}

			for _, line := range []string{
				fmt.Sprintf("127.0.0.1:%d", okPort),
				"raw socket (ignored HTTP_PROXY)",
				"raw socket, refused at connect()",
				"via HTTP_PROXY",
				fmt.Sprintf("db.test:%d", dbPort),
				"  denied:",
				fmt.Sprintf("to allow: - {cidr: 127.0.0.1/32, ports: [%d]}  (or: egress run --allow 127.0.0.1:%d)", denyPort, denyPort),
				"which lifts guard_loopback: opens this host's own services",
				"DNS answers refused",
				"denied.test",
				"udp 192.0.2.1:443",
				"went out directly (raw sockets or clients that ignore HTTP_PROXY), caught by the transparent path",
				"(pid ",
			} {
				if !strings.Contains(r.stderr, line) {
					t.Errorf("summary lacks %q", line)
				}
			}
			log, _ := os.ReadFile(logFile)
			if !bytes.Contains(log, []byte(`"event":"deny","proto":"tcp"`)) || !bytes.Contains(log, []byte(`"reason":"guard_special"`)) {
				t.Errorf("log lacks the tcp denials:\n%s", log)
			}
		})
	}
}

// TestRunLeaseOutlivedByConnection: a connection opened while its name's
// DNS answer held outlives the answer; a new one after it is refused at
// connect. Python 3 and 2.7.
func TestRunLeaseOutlivedByConnection(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	echo := testnet.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) }).Port
	upstream := dnsUpstreamTTL(t, map[string]string{"db.test": "127.0.0.1"}, 1)
	dir := t.TempDir()
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {host: db.test, ports: [%d]}\ndns:\n  upstreams: [%q]\n", echo, upstream)), 0o644)
	script := `
from __future__ import print_function
import errno, socket, sys, time
port = int(sys.argv[1])
addr = socket.getaddrinfo("db.test", port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.create_connection((addr, port), timeout=5)
s.sendall(b"a"); print("before:", s.recv(1).decode())
time.sleep(3)  # the answer (TTL 1 s, leased 1 s) runs out
s.sendall(b"b"); print("after:", s.recv(1).decode())
try:
    socket.create_connection((addr, port), timeout=5)
    print("new: open")
except socket.error as e:
    print("new:", errno.errorcode[e.errno])
`
	scriptFile := filepath.Join(dir, "client.py")
	os.WriteFile(scriptFile, []byte(script), 0o644)
	for _, py := range []struct {
		name string
		env  []string
	}{{"python3", nil}, {"python2.7", []string{"PYENV_VERSION=2.7.18"}}} {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel() // each mostly sleeps out the lease: both at once
			check := exec.Command(py.name, "-c", "import socket")
			check.Env = append(os.Environ(), py.env...)
			if err := check.Run(); err != nil {
				t.Skipf("%s is not available: %v", py.name, err)
			}
			r := runEgress(t, append(py.env, "EGRESS_TEST_LEASE=1s"), "run", "--config", config, "--", py.name, scriptFile, strconv.Itoa(echo))
			if r.code != 0 || r.stdout != "before: a\nafter: b\nnew: ECONNREFUSED\n" {
				t.Fatalf("exit %d, output %q; want the open connection to keep working and a new one refused at connect", r.code, r.stdout)
			}
		})
	}
}

// TestRunRootless runs egress run as an unprivileged user (nobody), which
// takes a user namespace: the command keeps its uid, gets no capability,
// and is held like under root.
func TestRunRootless(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user; as non-root every TestRun* test is the rootless case")
	}
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 an unprivileged user can run")
	}
	dir := nobodyDir(t)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer ok.Close()
	okPort := ok.Listener.Addr().(*net.TCPAddr).Port

	dbPort := greeterOrigin(t)
	upstream := dnsUpstream(t, map[string]string{"db.test": "127.0.0.1"})
	config := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {host: db.test, ports: [%d]}\ndns:\n  upstreams: [%q]\n", dbPort, upstream)), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `
import os, socket, sys
ok_port, deny_port, db_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", ok_port), timeout=10)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("allowed:", s.recv(12).decode())
try:
    s = socket.create_connection(("127.0.0.1", db_port), timeout=10)
    print("before the lookup:", s.recv(10))
except Exception as e:
    print("before the lookup:", type(e).__name__)
addr = socket.getaddrinfo("db.test", db_port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.create_connection((addr, db_port), timeout=10)
print("by name:", s.recv(10).decode().strip())
try:
    s = socket.create_connection(("127.0.0.1", deny_port), timeout=10)
    print("denied:", s.recv(10))
except Exception as e:
    print("denied:", type(e).__name__)
print("uid:", os.getuid())
print("caps:", [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
`
	scriptFile := filepath.Join(dir, "client.py")
	if err := os.WriteFile(scriptFile, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr := runAsNobody(t, dir, "run", "--config", config, "--allow", "127.0.0.1:"+strconv.Itoa(okPort), "--", py, scriptFile, strconv.Itoa(okPort), "9", strconv.Itoa(dbPort))
	for _, want := range []string{"allowed: HTTP/1.0 200", "before the lookup: ConnectionRefusedError", "by name: db ready",
		"denied: ConnectionRefusedError", "uid: 65534", "caps: 0000000000000000"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !strings.Contains(stderr, "2 reached, 2 denied") {
		t.Errorf("summary lacks the counts")
	}
}

// TestServeTransparentHostRules runs egress serve with its transparent and
// DNS listeners behind the nftables rules of docs/transparent.md, in a
// network namespace shaped like a host, and a plugin user's Python that
// resolves a name and connects to its address with a raw socket.
func TestServeTransparentHostRules(t *testing.T) {
	t.Parallel()
	// Each case enters a network namespace of its own on its own thread.
	t.Run("a denied connection is accepted, then reset", func(t *testing.T) { t.Parallel(); testServeHostRules(t, false) })
	t.Run("with listen.refuse_at_connect a denied connect() is refused", func(t *testing.T) { t.Parallel(); testServeHostRules(t, true) })
}

func testServeHostRules(t *testing.T, refuseAtConnect bool) {
	const uid = 65534
	py := "/usr/bin/python3"
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace, nftables, another user)")
	}
	for _, tool := range []string{"nft", "setpriv", "unshare", py} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	hostNamespace(t, uid)

	// The origin, on the host's address: db.test (allowed) and another port.
	greetPort := greeterOriginOn(t, "10.0.0.2")
	upstream := dnsUpstream(t, map[string]string{"db.test": "10.0.0.2"})

	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 1
default: deny
allow:
  - host: db.test
    ports: [%d]
listen:
  http: 127.0.0.1:3128
  transparent: 127.0.0.1:3129
  dns: 127.0.0.1:5353%s
dns:
  upstreams: [%q]
`, greetPort, map[bool]string{true: "\n  refuse_at_connect: [\"" + strconv.Itoa(uid) + "\"]"}[refuseAtConnect], upstream)), 0o644)
	_, _, logs := startEgress(t, nil, "serve", "--config", config)

	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 10.0.0.53\n"), 0o644)
	script := fmt.Sprintf(`
import socket
def greeting(host, port):
    try:
        s = socket.create_connection((host, port), timeout=5)
        return s.recv(20).decode().strip() or "closed"
    except Exception as e:
        return type(e).__name__
def opens(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "open"
    except Exception as e:
        return type(e).__name__
print("before the lookup:", greeting("10.0.0.2", %d))
addr = socket.gethostbyname("db.test")
print("resolved:", addr)
print("allowed:", greeting(addr, %d))
print("denied:", greeting(addr, %d))
print("proxy:", opens("127.0.0.1", 3128))
`, greetPort, greetPort, greetPort+1)
	shell := "mount --bind " + resolv + " /etc/resolv.conf && exec setpriv --reuid=" + strconv.Itoa(uid) +
		" --regid=" + strconv.Itoa(uid) + " --clear-groups " + py + " -c \"$0\""
	cmd := exec.Command("unshare", "--mount", "sh", "-c", shell, script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	out, err := cmd.CombinedOutput()
	t.Logf("plugin user:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	denied := "ConnectionResetError"
	if refuseAtConnect {
		denied = "ConnectionRefusedError"
	}
	for _, want := range []string{"resolved: 10.0.0.2", "allowed: db ready", "denied: " + denied,
		"before the lookup: " + denied, "proxy: open"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Each refusal is one canonical line, refused at connect or not.
	ports := map[string]bool{fmt.Sprintf(`"port":%d,`, greetPort): true, fmt.Sprintf(`"port":%d,`, greetPort+1): true}
	seen := 0
	deadline := time.After(5 * time.Second)
	lines := make(chan string)
	go func() {
		for logs.Scan() {
			lines <- logs.Text()
		}
	}()
	for seen < 2 {
		select {
		case l := <-lines:
			if !strings.Contains(l, `"event":"deny","proto":"tcp"`) {
				continue
			}
			for p := range ports {
				if strings.Contains(l, p) {
					delete(ports, p)
					seen++
				}
			}
		case <-deadline:
			t.Fatalf("saw %d of the 2 refusals' log lines", seen)
		}
	}
}

// hostNamespace enters a new network namespace on this goroutine's thread
// for good (the thread dies with the test), shaped like a host: lo up,
// eth0 with 10.0.0.2/24 and a default route through 10.0.0.1, which
// nothing answers, and docs/transparent.md's nftables rules for user uid.
// Everything the test starts afterwards, egress included, lives in it.
func hostNamespace(t *testing.T, uid int) {
	t.Helper()
	doc, err := os.ReadFile("../../docs/transparent.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```nft\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/transparent.md has no ```nft block")
	}
	rules := strings.ReplaceAll(string(m[1]), `"plugin"`, strconv.Itoa(uid))

	loopbackNamespace(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0peer"}); err != nil {
		t.Skipf("veth: %v", err)
	}
	eth, _ := netlink.LinkByName("eth0")
	peer, _ := netlink.LinkByName("eth0peer")
	netlink.LinkSetUp(peer)
	netlink.LinkSetUp(eth)
	addr, _ := netlink.ParseAddr("10.0.0.2/24")
	netlink.AddrAdd(eth, addr)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	nft := exec.Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(rules)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("load the documented rules: %v\n%s", err, out)
	}
}

// loopbackNamespace enters a new network namespace on this goroutine's
// thread for good (the thread dies with the test), with lo up: what the
// test starts afterwards lives in it.
func loopbackNamespace(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	lo, _ := netlink.LinkByName("lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// nobodyDir is a directory user nobody can read, holding a copy of this
// test binary (egress.test), for runAsNobody.
func nobodyDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "egress-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "egress.test"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runAsNobody runs egress with args as user nobody (uid 65534), from the
// copy of the test binary in dir, and returns what it printed. It skips
// where unprivileged user namespaces are unavailable (exit 125).
func runAsNobody(t *testing.T, dir string, args ...string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(dir, "egress.test"), "-test.run=^TestRunHelperProcess$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "EGRESS_RUN_HELPER=1", "EGRESS_RUN_ARGS="+strings.Join(args, "\n"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 125 {
		t.Skipf("unprivileged user namespaces are not available: %s", strings.TrimSpace(errb.String()))
	}
	if err != nil {
		t.Fatalf("egress run as nobody: %v", err)
	}
	return out.String(), errb.String()
}

// TestRunSummaryBounded: the summary keeps counts and at most a few
// process names per row, however many connections it sees.
func TestRunSummaryBounded(t *testing.T) {
	s := newRunSummary(nil)
	dec := policy.Decision{Verdict: policy.Deny, Reason: policy.ReasonNoRuleMatched, IP: netip.MustParseAddr("192.0.2.1"), Port: 443}
	for i := 0; i < 10000; i++ {
		client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1024+i))
		s.mu.Lock()
		s.addOwner(client, sandbox.Process{PID: 100 + i%20, Comm: "python3"})
		s.mu.Unlock()
		s.observe(eventlog.Entry{Proto: eventlog.ProtoTCP, Client: client, Decision: dec})
	}
	if len(s.owners) > maxOwners {
		t.Errorf("%d owners remembered, want at most %d", len(s.owners), maxOwners)
	}
	var out strings.Builder
	s.write(&out)
	for _, want := range []string{"egress run: 10000 connections, 10000 denied", "192.0.2.1:443                10000x", ", 12 more"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRunCountsConnectionsMadeJustBeforeExit: connections the command
// made and closed right before exiting are in the summary and the log,
// not dropped with the listener's accept queue.
func TestRunCountsConnectionsMadeJustBeforeExit(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	port := greeterOrigin(t)
	logFile := filepath.Join(t.TempDir(), "egress.log")
	for i := range 3 {
		r := runEgress(t, nil, "run", "--allow", "127.0.0.1:"+strconv.Itoa(port), "--log", logFile, "--",
			"python3", "-c", fmt.Sprintf("import socket; [socket.create_connection(('127.0.0.1', %d)).close() for i in range(5)]", port))
		if r.code != 0 || !strings.Contains(r.stderr, "egress run: 5 connections, 5 reached") {
			t.Fatalf("run %d: exit %d; want the summary to count all 5 connections", i, r.code)
		}
	}
	log, _ := os.ReadFile(logFile)
	if n := bytes.Count(log, []byte(`"proto":"tcp"`)); n != 15 {
		t.Errorf("%d tcp lines in the log, want 15", n)
	}
}

// TestRunUnixGuardOutlivesEgress: a command that kills egress run (its
// parent, same user) cannot then install a seccomp listener of its own,
// which would take over the connect() notifications and let them through.
func TestRunUnixGuardOutlivesEgress(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the probe uses x86-64's syscall number")
	}
	dir := t.TempDir()
	result := filepath.Join(dir, "result")
	script := filepath.Join(dir, "probe.py")
	os.WriteFile(script, []byte(`
import ctypes, errno, os, signal, struct, sys, time
os.kill(os.getppid(), signal.SIGKILL)  # egress run
time.sleep(0.5)  # its listener is closed with it
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
buf = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000))  # ret ALLOW
prog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf)))
libc.syscall.restype = ctypes.c_long
r = libc.syscall(317, 1, 8, prog)  # seccomp(SET_MODE_FILTER, NEW_LISTENER)
out = errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "installed"
open(sys.argv[1], "w").write(out)
`), 0o644)
	runEgress(t, nil, "run", "--quiet", "--", "python3", script, result)
	var b []byte
	testwait.Until(t, 10*time.Second, "the probe's result", func() bool {
		b, _ = os.ReadFile(result)
		return len(b) > 0
	})
	if string(b) != "EBUSY" {
		t.Fatalf("after killing egress, the command's own seccomp listener: %q, want EBUSY", b)
	}
}
