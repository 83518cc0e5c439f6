//go:build linux

package main

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/certs"
)

// TestRunIntercepts: under egress run, a policy with http: rules and no
// tls.ca_cert gets a CA for the run that CMD's Python trusts with no
// code change; request rules decide; the key injected from an
// environment variable reaches the origin, and CMD (the same
// unprivileged user as egress) can read it neither from its environment
// nor from egress's /proc/PID/environ or mem.
func TestRunIntercepts(t *testing.T) {
	requireSandbox(t)
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 an unprivileged user can run")
	}
	const secret = "run-secret-0123456789"
	dir := nobodyDir(t)
	os.Chown(dir, 65534, 65534) // egress, as nobody, writes its log there

	upCA, upPEM, _, err := certs.Create(certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	upFile := filepath.Join(dir, "upstream.pem")
	os.WriteFile(upFile, upPEM, 0o644)
	// A bundle the user set already: merged into CMD's, not replaced.
	_, userPEM, _, _ := certs.Create(certs.Options{CommonName: "the user's own CA"})
	userFile := filepath.Join(dir, "user.pem")
	os.WriteFile(userFile, userPEM, 0o644)

	got := make(chan http.Header, 10)
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		io.WriteString(w, "licence ok")
	}))
	leaf, _ := upCA.Leaf("api.vendor.test")
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	origin.Config.ErrorLog = log.New(io.Discard, "", 0)
	origin.StartTLS()
	defer origin.Close()
	port := origin.Listener.Addr().(*net.TCPAddr).Port
	upstream := dnsUpstream(t, map[string]string{"api.vendor.test": "127.0.0.1"})

	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`version: 1
default: deny
tls:
  upstream_ca: upstream.pem
allow:
  - host: api.vendor.test
    ports: [%[1]d]
    http:
      - methods: [GET]
        paths: ["/v1/license"]
    inject:
      - header: Authorization
        from_env: VENDOR_TOKEN
        prefix: "Bearer "
  - cidr: 127.0.0.1/32
    ports: [%[1]d]
dns:
  upstreams: [%[2]q]
`, port, upstream)), 0o644)
	script := `
import os, sys, json
import urllib.request as ul, urllib.error as ue
url = sys.argv[1]
out = {}
try:
    out["get"] = ul.urlopen(url + "/v1/license", timeout=10).read().decode()
except Exception as e:
    out["get"] = repr(e)
try:
    ul.urlopen(ul.Request(url + "/v1/license", data=b"x"), timeout=10)
    out["post"] = "allowed"
except ue.HTTPError as e:
    out["post"] = "%d %s" % (e.code, e.reason)
out["env_has_token"] = "VENDOR_TOKEN" in os.environ
out["ssl_cert_file"] = os.environ.get("SSL_CERT_FILE", "")
bundle = open(out["ssl_cert_file"]).read() if out["ssl_cert_file"] else ""
out["bundle_certs"] = bundle.count("BEGIN CERTIFICATE")
out["same_vars"] = len(set(os.environ.get(v) for v in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"])) == 1
# egress and the sandbox's setup process are CMD's ancestors: read
# what CMD can of each.
environ_read, token_seen, mem_open, checked = [], False, [], 0
pid = os.getppid()
while pid > 1:
    stat = open("/proc/%d/stat" % pid).read()
    cmd = open("/proc/%d/cmdline" % pid, "rb").read()
    if b"TestRunHelperProcess" in cmd:
        checked += 1
        try:
            env = open("/proc/%d/environ" % pid, "rb").read()
            environ_read.append(len(env) > 0)
            token_seen = token_seen or b"VENDOR_TOKEN" in env
        except Exception as e:
            sys.stderr.write("environ of %d: %r\n" % (pid, e))
        try:
            open("/proc/%d/mem" % pid, "rb").close()
            mem_open.append(pid)
        except Exception as e:
            sys.stderr.write("mem of %d: %r\n" % (pid, e))
    pid = int(stat[stat.rindex(")") + 2:].split()[1])
out["egress_checked"] = checked
out["egress_environ_read"] = environ_read
out["token_seen"] = token_seen
out["egress_mem_open"] = mem_open
out["cap_sys_ptrace"] = bool(int([l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0], 16) & (1 << 19))
print(json.dumps(out, sort_keys=True))
`
	scriptFile := filepath.Join(dir, "client.py")
	os.WriteFile(scriptFile, []byte(script), 0o644)
	logFile := filepath.Join(dir, "egress.log")

	env := []string{"VENDOR_TOKEN=" + secret, "REQUESTS_CA_BUNDLE=" + userFile}
	args := []string{"run", "--config", config, "--log", logFile, "--", py, scriptFile, "https://api.vendor.test:" + strconv.Itoa(port)}
	cmd := exec.Command(filepath.Join(dir, "egress.test"), "-test.run=^TestRunHelperProcess$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append(env, "EGRESS_RUN_HELPER=1", "EGRESS_RUN_ARGS="+strings.Join(args, "\n"))...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	t.Logf("as nobody: stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 125 {
		// No unprivileged user namespaces here: egress and CMD run as
		// root, which may read any process's memory (CAP_SYS_PTRACE);
		// what CMD can read of egress is then not checked.
		t.Logf("unprivileged user namespaces are not available; running as root")
		r := runEgress(t, env, args...)
		stdout.Reset()
		stdout.WriteString(r.stdout)
		stderr.Reset()
		stderr.WriteString(r.stderr)
		err = nil
		if r.code != 0 {
			err = fmt.Errorf("exit %d", r.code)
		}
	}
	if err != nil {
		t.Fatalf("egress run: %v", err)
	}
	out := stdout.String()
	for _, want := range []string{
		`"get": "licence ok"`,
		`"post": "403 egress denied POST https://api.vendor.test:` + strconv.Itoa(port) + `/v1/license: no request rule matched`,
		`"env_has_token": false`,
		`"same_vars": true`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("CMD's output lacks %s", want)
		}
	}
	if strings.Contains(out, `"egress_checked": 0`) {
		t.Error("CMD found no egress process among its ancestors")
	}
	if strings.Contains(out, `"cap_sys_ptrace": false`) {
		for _, want := range []string{`"token_seen": false`, `"egress_mem_open": []`, `"egress_environ_read": []`} {
			if !strings.Contains(out, want) {
				t.Errorf("CMD, as the same user, can read egress: %s", out)
			}
		}
	}
	// The bundle holds the system roots, the user's CA and egress's.
	if !strings.Contains(out, `"bundle_certs": `) || strings.Contains(out, `"bundle_certs": 0,`) {
		t.Errorf("no bundle: %s", out)
	}
	select {
	case h := <-got:
		if h.Get("Authorization") != "Bearer "+secret {
			t.Errorf("the origin got Authorization %q", h.Get("Authorization"))
		}
	default:
		t.Error("the origin got nothing")
	}
	logs, _ := os.ReadFile(logFile)
	for what, s := range map[string]string{"stdout": out, "stderr": stderr.String(), "the log": string(logs)} {
		if strings.Contains(s, secret) {
			t.Errorf("the secret is in %s", what)
		}
	}
	if !strings.Contains(string(logs), `"injected":["Authorization"]`) {
		t.Error("the log does not name the injected header")
	}
}

// setupRunInterception makes egress non-dumpable when the policy injects
// secrets, removes the from_env variables from CMD's environment, and
// points the four CA variables at one bundle that keeps the user's.
func TestSetupRunInterception(t *testing.T) {
	dir := t.TempDir()
	_, userPEM, _, _ := certs.Create(certs.Options{CommonName: "the user's own CA"})
	userFile := filepath.Join(dir, "user.pem")
	os.WriteFile(userFile, userPEM, 0o644)
	t.Setenv("TEST_VENDOR_TOKEN", "x")
	config := filepath.Join(dir, "policy.yaml")
	text := "version: 1\ndefault: deny\nallow:\n  - host: api.vendor.test\n    http:\n      - paths: [\"/**\"]\n    inject:\n      - header: X-Key\n        from_env: TEST_VENDOR_TOKEN\n"
	os.WriteFile(config, []byte(text), 0o644)
	var errs bytes.Buffer
	pol, ok := loadRunPolicy(config, nil, &errs)
	if !ok {
		t.Fatalf("policy refused: %s", errs.String())
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0) })
	ri, env, err := setupRunInterception(pol, []string{"PATH=/bin", "TEST_VENDOR_TOKEN=x", "NODE_EXTRA_CA_CERTS=" + userFile})
	if err != nil {
		t.Fatal(err)
	}
	defer ri.close()
	if d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); d != 0 {
		t.Errorf("egress is dumpable (%d): CMD, the same user, could read /proc/PID/environ and mem", d)
	}
	if envValue(env, "TEST_VENDOR_TOKEN") != "" {
		t.Error("CMD gets the variable inject: reads")
	}
	bundle := envValue(env, "SSL_CERT_FILE")
	for _, v := range caBundleVars {
		if envValue(env, v) != bundle || bundle == "" {
			t.Errorf("%s=%q, want the bundle %q", v, envValue(env, v), bundle)
		}
	}
	data, _ := os.ReadFile(bundle)
	if !bytes.Contains(data, bytes.TrimSpace(userPEM)) {
		t.Error("the user's bundle was replaced, not merged")
	}
	if ri.ca == nil || !bytes.Contains(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ri.ca.Cert.Raw})) {
		t.Error("the bundle lacks the run's CA")
	}
	if n := bytes.Count(data, []byte("BEGIN CERTIFICATE")); n < 3 {
		t.Errorf("%d certificates in the bundle: the system roots are missing", n)
	}
}

// The bundle CMD reads is world-readable: of the files the CA variables
// name, only the certificates are copied into it, never a secret or a
// key that a variable happens to point at.
func TestRunInterceptionBundleCopiesOnlyCertificates(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "token")
	os.WriteFile(secret, []byte("sk-live-not-a-certificate-42\n"), 0o600)
	_, userPEM, keyPEM, err := certs.Create(certs.Options{CommonName: "the user's own CA"})
	if err != nil {
		t.Fatal(err)
	}
	mixed := filepath.Join(dir, "mixed.pem")
	os.WriteFile(mixed, append(append([]byte("note: sk-in-between-text\n"), userPEM...), keyPEM...), 0o600)
	config := filepath.Join(dir, "policy.yaml")
	os.WriteFile(config, []byte("version: 1\ndefault: deny\nallow:\n  - host: api.vendor.test\n    http:\n      - paths: [\"/v1/**\"]\n"), 0o644)
	var errs bytes.Buffer
	pol, ok := loadRunPolicy(config, nil, &errs)
	if !ok {
		t.Fatalf("policy refused: %s", errs.String())
	}
	ri, env, err := setupRunInterception(pol, []string{"PATH=/bin", "REQUESTS_CA_BUNDLE=" + secret, "CURL_CA_BUNDLE=" + mixed})
	if err != nil {
		t.Fatal(err)
	}
	defer ri.close()
	data, err := os.ReadFile(envValue(env, "SSL_CERT_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{"sk-live-not-a-certificate-42", "sk-in-between-text", "PRIVATE KEY"} {
		if bytes.Contains(data, []byte(leak)) {
			t.Errorf("the world-readable bundle holds %q from a file a CA variable named", leak)
		}
	}
	if !bytes.Contains(data, bytes.TrimSpace(userPEM)) {
		t.Error("the certificate of the user's bundle was dropped")
	}
}
