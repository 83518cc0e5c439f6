package examples

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// pluginDir is the example plugin, relative to this package.
const pluginDir = "plugin-python"

// exitUnmet is plugin.py's exit code when a network requirement is not met.
const exitUnmet = 3

// python is one interpreter the plugin must run on.
type python struct {
	name string   // "python3", "python2.7"
	path string   // the real executable (not a pyenv shim)
	env  []string // extra environment to run it
	// apiHost is the host the tests put in the API URL. Python 2.7's
	// ssl.match_hostname does not match IP addresses in certificates, so
	// 2.7 reaches the test API as "localhost".
	apiHost string
}

// pythons returns the interpreters present here; it skips t when none is.
// Each is resolved to its real executable so that it runs the same inside
// a network namespace, where pyenv's shims may not.
func pythons(t *testing.T) []python {
	t.Helper()
	candidates := []python{
		{name: "python3", path: "python3", apiHost: "127.0.0.1"},
		{name: "python2.7", path: "python2.7", env: []string{"PYENV_VERSION=2.7.18"}, apiHost: "localhost"},
	}
	var found []python
	for _, p := range candidates {
		if _, err := exec.LookPath(p.path); err != nil {
			t.Logf("%s is not installed: its cases skip", p.name)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, p.path, "-c", "import sys; print(sys.executable)")
		cmd.Env = append(cleanEnv(), p.env...)
		out, err := cmd.Output()
		cancel()
		exe := strings.TrimSpace(string(out))
		if err != nil || exe == "" {
			t.Logf("%s does not run (%v): its cases skip", p.name, err)
			continue
		}
		p.path = exe
		found = append(found, p)
	}
	if len(found) == 0 {
		t.Skip("neither python3 nor python2.7 (PYENV_VERSION=2.7.18) is available")
	}
	return found
}

// cleanEnv is the test's environment without proxy settings, the plugin's
// settings and CA overrides, so that only what a case sets applies.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch lk := strings.ToLower(k); {
		case strings.HasSuffix(lk, "_proxy"), strings.HasPrefix(k, "PLUGIN_"),
			k == "SSL_CERT_FILE", k == "SSL_CERT_DIR", k == "PYENV_VERSION":
			continue
		}
		env = append(env, kv)
	}
	// The plugin's directory stays as checked in.
	return append(env, "PYTHONDONTWRITEBYTECODE=1")
}

// result is one finished run.
type result struct {
	code    int
	stdout  string
	stderr  string
	elapsed time.Duration
	log     string // the command, its exit, time and output, for the test's log
}

// run runs name args with env added to cleanEnv, killing it after limit.
func run(t *testing.T, limit time.Duration, env []string, name string, args ...string) result {
	t.Helper()
	r, err := runCmd(limit, env, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r.log)
	return r
}

// runCmd is run without a test, for runs started on other goroutines: it
// returns as an error what run fails the test for.
func runCmd(limit time.Duration, env []string, name string, args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if ctx.Err() != nil {
		return r, fmt.Errorf("%s %s did not finish within %v (it must never hang)\nstdout:\n%s\nstderr:\n%s",
			name, strings.Join(args, " "), limit, r.stdout, r.stderr)
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		return r, fmt.Errorf("run %s: %w", name, err)
	}
	r.log = fmt.Sprintf("%s %s: exit %d in %v\nstdout:\n%s\nstderr:\n%s",
		filepath.Base(name), strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
	return r, nil
}

// pluginArgs are the arguments that point plugin.py at the given targets.
func pluginArgs(py python, dbHost string, dbPort int, apiURL, caFile string, timeout time.Duration) []string {
	args := []string{
		filepath.Join(pluginDir, "plugin.py"),
		"--db-host", dbHost,
		"--db-port", strconv.Itoa(dbPort),
		"--api-url", apiURL,
		"--timeout", strconv.FormatFloat(timeout.Seconds(), 'g', -1, 64),
	}
	if caFile != "" {
		args = append(args, "--ca-file", caFile)
	}
	return args
}

// dbOrigin stands for a PostgreSQL server: it answers an SSLRequest with
// 'N' (SSL not supported), as a real server does before authentication.
type dbOrigin struct {
	ln       net.Listener
	port     int
	answered atomic.Int32
}

type dbBehaviour int

const (
	dbAnswers      dbBehaviour = iota // reads the SSLRequest, answers 'N'
	dbSilent                          // accepts and never answers
	dbClosesAtOnce                    // accepts and closes: what a proxy that denies does
)

func startDB(t *testing.T, how dbBehaviour) *dbOrigin {
	t.Helper()
	d := &dbOrigin{}
	done := make(chan struct{})
	d.ln = serveLoopback(t, func(c net.Conn) {
		switch how {
		case dbClosesAtOnce:
			return
		case dbSilent:
			c.SetDeadline(time.Now().Add(30 * time.Second))
			go func() { <-done; c.Close() }()
			io.Copy(io.Discard, c)
			return
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var msg [8]byte
		if _, err := io.ReadFull(c, msg[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint32(msg[0:4]) != 8 || binary.BigEndian.Uint32(msg[4:8]) != 80877103 {
			return
		}
		if _, err := c.Write([]byte("N")); err == nil {
			d.answered.Add(1)
		}
	})
	d.port = d.ln.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() { close(done) }) // before serveLoopback's wait: silent handlers return on it
	return d
}

// serveLoopback listens on 127.0.0.1:0 and runs handle on each accepted
// connection in its own goroutine, closing the connection when handle
// returns. When t ends the listener closes and the handlers are waited
// for (after the cleanups registered later, which run first).
func serveLoopback(t *testing.T, handle func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	return ln
}

// apiOrigin is the DBMS REST API over HTTPS, with a certificate from a CA
// written to caFile, valid for localhost, 127.0.0.1 and ::1.
type apiOrigin struct {
	srv    *httptest.Server
	port   int
	caFile string
	hits   atomic.Int32
}

// url is the status endpoint as reached through host.
func (a *apiOrigin) url(host string) string {
	return "https://" + net.JoinHostPort(host, strconv.Itoa(a.port)) + "/v1/status"
}

func startAPI(t *testing.T, hang bool) *apiOrigin {
	t.Helper()
	caPEM, cert := testCertificates(t)
	a := &apiOrigin{caFile: filepath.Join(t.TempDir(), "ca.pem")}
	if err := os.WriteFile(a.caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		if hang {
			select {
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
			return
		}
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status": "ok", "version": "16.4"}`)
	}))
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	// Clients that distrust the certificate abort handshakes on purpose.
	a.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	a.srv.StartTLS()
	t.Cleanup(func() {
		a.srv.CloseClientConnections()
		a.srv.Close()
	})
	a.port = a.srv.Listener.Addr().(*net.TCPAddr).Port
	return a
}

// testCertificates makes a CA and a server certificate it signs.
func testCertificates(t *testing.T) (caPEM []byte, cert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "egress examples test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// closedPort returns a loopback port nothing listens on.
//
// The port stays bound, without a listener, until the test ends: the
// kernel refuses connections to it, and no other socket (an egress run
// started meanwhile, another test) can take the number and answer.
func closedPort(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0) // SOCK_CLOEXEC is Linux-only
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

// connectProxy is a minimal HTTP CONNECT proxy on loopback standing for
// egress where egress itself is not under test. With refuse set it answers
// 403 to every CONNECT, with egress's headers, as egress does for a denied
// destination.
type connectProxy struct {
	url     string
	mu      sync.Mutex
	targets []string
}

func (p *connectProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

func startConnectProxy(t *testing.T, refuse bool) *connectProxy {
	t.Helper()
	p := &connectProxy{}
	ln := serveLoopback(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.targets = append(p.targets, req.Method+" "+req.Host)
		p.mu.Unlock()
		if req.Method != http.MethodConnect || refuse {
			// egress's 403 carries its headers: a 403 without
			// them is another proxy's, which the helper does
			// not blame on egress's policy.
			io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nX-Egress-Decision: deny\r\nX-Egress-Reason: no_rule_matched\r\n"+
				"X-Egress-Id: 0123456789abcdef\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			return
		}
		up, err := net.DialTimeout("tcp", req.Host, 2*time.Second)
		if err != nil {
			io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
			return
		}
		defer up.Close()
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, up)
	})
	p.url = "http://" + ln.Addr().String()
	return p
}
