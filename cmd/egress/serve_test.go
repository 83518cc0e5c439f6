package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
)

// TestServeHelperProcess is not a test: it is egress itself, run as a
// child process by the tests below (the os/exec helper-process pattern),
// so that signals and the environment are real.
func TestServeHelperProcess(t *testing.T) {
	if os.Getenv("EGRESS_SERVE_HELPER") != "1" {
		t.Skip("helper process")
	}
	args := strings.Split(os.Getenv("EGRESS_SERVE_ARGS"), "\n")
	os.Exit(run(testAdmin(args), os.Stdout, os.Stderr))
}

// testAdmin gives an egress serve without --admin a free admin port:
// tests run in parallel, and a busy admin port stops serve.
func testAdmin(args []string) []string {
	if len(args) == 0 || args[0] != "serve" || slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--admin") }) {
		return args
	}
	return append(args, "--admin", "127.0.0.1:0")
}

// startEgress runs "egress ARGS..." as a child with extra environment and
// returns it once it listens, with the HTTP proxy address.
func startEgress(t *testing.T, env []string, args ...string) (*exec.Cmd, string, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeHelperProcess$")
	cmd.Env = append(os.Environ(), append(env, "EGRESS_SERVE_HELPER=1", "EGRESS_SERVE_ARGS="+strings.Join(args, "\n"))...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(stderr)
	addr := make(chan string, 1)
	go func() {
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["listen_http"] != nil {
				addr <- m["listen_http"].(string)
				return
			}
			t.Logf("egress: %s", sc.Text())
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatal("egress exited before listening")
		}
		return cmd, a, sc
	case <-time.After(20 * time.Second):
		t.Fatal("egress did not start")
	}
	return nil, "", nil
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const loopbackPolicy = `version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
timeouts:
  drain: 10s
`

// egress must not follow HTTP_PROXY/HTTPS_PROXY from its own environment
// (goproxy's defaults do): a trap proxy set there must see nothing.
func TestServeIgnoresProxyEnvironment(t *testing.T) {
	t.Parallel()
	var trapped atomic.Int32
	trap, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trap.Close()
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			trapped.Add(1)
			c.Close()
		}
	}()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "origin") }))
	defer origin.Close()
	tlsOrigin := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tls origin") }))
	defer tlsOrigin.Close()

	trapURL := "http://" + trap.Addr().String()
	env := []string{"HTTP_PROXY=" + trapURL, "HTTPS_PROXY=" + trapURL, "http_proxy=" + trapURL, "https_proxy=" + trapURL, "ALL_PROXY=" + trapURL, "NO_PROXY=", "no_proxy="}
	_, addr, _ := startEgress(t, env, "serve", "--config", writeConfig(t, loopbackPolicy), "--listen", "127.0.0.1:0")

	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr}), TLSClientConfig: tlsOrigin.Client().Transport.(*http.Transport).TLSClientConfig}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	urls := []string{origin.URL, tlsOrigin.URL}
	// net/http never sends loopback IP literals to an environment proxy;
	// a name that resolves to loopback shows what egress's Transport does.
	if name, err := os.Hostname(); err == nil {
		if ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip4", name); err == nil && len(ips) > 0 && ips[0].Unmap().String() == "127.0.0.1" {
			u, _ := url.Parse(origin.URL)
			urls = append(urls, "http://"+name+":"+u.Port()+"/")
		} else {
			t.Logf("host name %q does not resolve to 127.0.0.1: plain HTTP checked with IP literals only", name)
		}
	}
	for _, u := range urls {
		resp, err := cl.Get(u)
		if err != nil {
			t.Fatalf("GET %s through egress: %v", u, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "origin") {
			t.Fatalf("GET %s: %d %q", u, resp.StatusCode, b)
		}
	}
	if n := trapped.Load(); n != 0 {
		t.Fatalf("the proxy from egress's environment got %d connections", n)
	}
}

func TestServeSIGTERMDrainsTunnels(t *testing.T) {
	t.Parallel()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	cmd, addr, sc := startEgress(t, nil, "serve", "--config", writeConfig(t, loopbackPolicy), "--listen", "127.0.0.1:0")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\n", echo.Addr())
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Wait for the listener to close, then show the tunnel still works.
	testwait.Until(t, 10*time.Second, "egress to stop accepting after SIGTERM", func() bool {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	io.WriteString(c, "draining")
	b := make([]byte, 8)
	if _, err := io.ReadFull(br, b); err != nil || string(b) != "draining" {
		t.Fatalf("tunnel after SIGTERM: %q %v", b, err)
	}
	c.Close()
	shutdown := make(chan string, 1)
	go func() {
		for sc.Scan() {
			if strings.Contains(sc.Text(), "shutting down") {
				shutdown <- sc.Text()
			}
		}
		close(shutdown)
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("egress exited with %v, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("egress did not exit after its last tunnel closed")
	}
	// The drain time with its unit, not zerolog's bare milliseconds.
	if line := <-shutdown; !strings.Contains(line, `"drain":"10s"`) { // loopbackPolicy's timeouts.drain
		t.Errorf("the shutdown line says %q, want \"drain\":\"10s\"", line)
	}
}

func TestServeFlags(t *testing.T) {
	t.Run("a bad policy file prints FILE:LINE:COL errors and exits 2", func(t *testing.T) {
		cfg := writeConfig(t, "version: 1\ndefault: maybe\nallow:\n  - host: a.example\n    cidr: 10.0.0.0/8\n")
		var stderr strings.Builder
		code := serve(context.Background(), []string{"--config", cfg}, io.Discard, &stderr)
		if code != exitUsage {
			t.Errorf("exit %d, want %d", code, exitUsage)
		}
		if !strings.Contains(stderr.String(), cfg+":2:") {
			t.Errorf("stderr %q does not cite %s:2:COL", stderr.String(), cfg)
		}
	})
	t.Run("a missing policy file exits 2", func(t *testing.T) {
		var stderr strings.Builder
		if code := serve(context.Background(), []string{"--config", "/nonexistent/policy.yaml"}, io.Discard, &stderr); code != exitUsage {
			t.Errorf("exit %d, want %d", code, exitUsage)
		}
	})
	t.Run("an unknown log format exits 2", func(t *testing.T) {
		var stderr strings.Builder
		if code := serve(context.Background(), []string{"--listen", "127.0.0.1:0", "--log-format", "xml"}, io.Discard, &stderr); code != exitUsage {
			t.Errorf("exit %d, want %d", code, exitUsage)
		}
	})
	t.Run("a stray argument exits 2", func(t *testing.T) {
		var stderr strings.Builder
		if code := serve(context.Background(), []string{"extra"}, io.Discard, &stderr); code != exitUsage {
			t.Errorf("exit %d, want %d", code, exitUsage)
		}
	})
	t.Run("the built-in policy on the default address says so in one line", func(t *testing.T) {
		if l, err := net.Listen("tcp", defaultHTTPListen); err != nil {
			t.Skipf("%s is busy: %v", defaultHTTPListen, err)
		} else {
			l.Close()
		}
		out := serveBriefly(t)
		var m map[string]any
		first := startupLine(t, out)
		if err := json.Unmarshal([]byte(first), &m); err != nil {
			t.Fatalf("first line %q is not JSON: %v", first, err)
		}
		if m["listen_http"] != defaultHTTPListen || m["policy"] != "(built-in)" {
			t.Errorf("startup line %q: want listen_http %s and policy (built-in)", first, defaultHTTPListen)
		}
	})
	t.Run("--log-format console writes for people", func(t *testing.T) {
		out := serveBriefly(t, "--listen", "127.0.0.1:0", "--log-format", "console")
		first := startupLine(t, out)
		if strings.HasPrefix(first, "{") {
			t.Errorf("console line %q", first)
		}
	})
}

// serveBriefly runs serve in-process until it has started, then stops it
// as SIGTERM would, and returns what it logged.
func serveBriefly(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- serve(ctx, testAdmin(append([]string{"serve"}, args...))[1:], io.Discard, pw)
		pw.Close()
	}()
	var out strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "egress serving") {
			cancel()
		}
	}
	if code := <-done; code != exitOK {
		t.Errorf("serve exited %d after cancel, want 0; log:\n%s", code, out.String())
	}
	cancel()
	return out.String()
}

// startupLine is the one line saying what egress serves. It need not be the
// first: policy warnings are logged before it.
func startupLine(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "egress serving") {
			return l
		}
	}
	t.Fatalf("no startup line in:\n%s", out)
	return ""
}

// TestServeListenerThatCannotStart: a listener the policy names that cannot
// be bound stops serve with exit 2 and a message naming the setting and the
// flag, rather than serving without it (a busy admin port would leave
// `egress health` answered by whoever holds it).
func TestServeListenerThatCannotStart(t *testing.T) {
	busyTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busyTCP.Close()
	busyUDP, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busyUDP.Close()
	tcp, udp := busyTCP.Addr().String(), busyUDP.LocalAddr().String()
	policyWith := func(admin, listen string) string {
		return writeConfig(t, "version: 1\ndefault: deny\nlisten:\n  http: 127.0.0.1:0\n  admin: "+admin+"\n"+listen)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"a busy admin port names listen.admin and --admin",
			[]string{"--config", policyWith(tcp, "")},
			[]string{"listen.admin " + tcp + ": bind: address already in use", "change listen.admin in ", "or pass --admin ADDR", "turns the admin listener off)"}},
		{"a busy --admin names the flag alone",
			[]string{"--config", policyWith("127.0.0.1:0", ""), "--admin", tcp},
			[]string{"listen.admin " + tcp + ": bind: address already in use", "; pass --admin ADDR"}},
		{"a busy DNS port names listen.dns",
			[]string{"--config", policyWith("127.0.0.1:0", "  dns: "+udp+"\n")},
			[]string{"listen.dns " + udp + ": bind: address already in use", "change listen.dns in "}},
		{"a busy transparent port names listen.transparent",
			[]string{"--config", policyWith("127.0.0.1:0", "  transparent: "+tcp+"\n")},
			[]string{"listen.transparent " + tcp + ": bind: address already in use", "change listen.transparent in "}},
		{"a busy --listen names the flag",
			[]string{"--config", policyWith("127.0.0.1:0", ""), "--listen", tcp},
			[]string{"listen.http " + tcp + ": bind: address already in use", "; pass --listen ADDR"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if code := serve(ctx, tt.args, io.Discard, &stderr); code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			if strings.Contains(stderr.String(), "egress serving") {
				t.Errorf("serve started anyway:\n%s", stderr.String())
			}
		})
	}
}

func TestServeAdminFlag(t *testing.T) {
	t.Run(`--admin "" turns the admin listener off`, func(t *testing.T) {
		line := startupLine(t, serveBriefly(t, "--listen", "127.0.0.1:0", "--admin", ""))
		if strings.Contains(line, "listen_admin") || strings.Contains(line, "admin on") {
			t.Errorf("admin listener still on: %s", line)
		}
	})
	t.Run("--admin ADDR moves it", func(t *testing.T) {
		out := serveBriefly(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.2:0")
		if line := startupLine(t, out); !strings.Contains(line, `"listen_admin":"127.0.0.2:`) {
			t.Errorf("admin not on 127.0.0.2: %s", line)
		}
	})
}

func TestPolicyFileWithoutConfig(t *testing.T) {
	for _, cmd := range [][]string{
		{"serve", "policy.yaml"},
		{"health", "policy.yml"},
		{"run", "policy.yaml", "--", "true"},
		{"check", writeConfig(t, "version: 1\ndefault: deny\n"), "example.com:443"},
	} {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			want := exitUsage
			if cmd[0] == "health" {
				want = exitUnhealthy // Docker reserves a HEALTHCHECK's 2
			}
			if code := run(cmd, io.Discard, &stderr); code != want {
				t.Errorf("exit %d, want %d", code, want)
			}
			if want := "did you mean --config " + cmd[1] + "?"; !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), want)
			}
		})
	}
}
