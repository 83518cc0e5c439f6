package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
)

// egressChild is egress serve run as a child process (see
// TestServeHelperProcess), with its startup line and its log.
type egressChild struct {
	cmd     *exec.Cmd
	startup map[string]any
	mu      sync.Mutex
	log     strings.Builder
}

func (c *egressChild) logText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.log.String()
}

// startChild runs egress ARGS and returns once it logs its startup line;
// it keeps reading the child's log so that the child never blocks on it.
func startChild(t *testing.T, args ...string) *egressChild {
	t.Helper()
	return startChildIn(t, "", args...)
}

// startChildIn is startChild with dir as the child's working directory
// ("": the test's).
func startChildIn(t *testing.T, dir string, args ...string) *egressChild {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &egressChild{cmd: exec.Command(exe, "-test.run=^TestServeHelperProcess$")}
	c.cmd.Dir = dir
	c.cmd.Env = append(os.Environ(), "EGRESS_SERVE_HELPER=1", "EGRESS_SERVE_ARGS="+strings.Join(args, "\n"))
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	})
	started := make(chan map[string]any, 1)
	go func() {
		defer close(started)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.log.Write(sc.Bytes())
			c.log.WriteByte('\n')
			c.mu.Unlock()
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["listen_http"] != nil {
				started <- m
			}
		}
	}()
	select {
	case m, ok := <-started:
		if !ok {
			t.Fatalf("egress exited before listening:\n%s", c.logText())
		}
		c.startup = m
	case <-time.After(20 * time.Second):
		t.Fatalf("egress did not start:\n%s", c.logText())
	}
	return c
}

func (c *egressChild) addr(t *testing.T, name string) string {
	t.Helper()
	a, _ := c.startup["listen_"+name].(string)
	if a == "" {
		t.Fatalf("startup line has no listen_%s: %v", name, c.startup)
	}
	return a
}

// reloadPolicy is valid when n >= 0; each n gives different bytes (and
// hash). Every version allows the origin on 127.0.0.1.
func reloadPolicy(n int) string {
	text := `version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
timeouts:
  drain: 2s
`
	if n%2 == 1 {
		text += "deny:\n  - host: \"*.ads.example\"\n"
	}
	return text + fmt.Sprintf("# version %d\n", n)
}

// brokenPolicy has an unknown field on line 3.
const brokenPolicy = "version: 1\ndefault: deny\nallwo:\n  - cidr: 127.0.0.1/32\n"

// replaceFile writes text to a temporary file beside path and renames it
// over path, as a careful deploy tool (or an editor) does: egress never
// reads half a file.
func replaceFile(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func hashOf(text string) string {
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}

// TestReloadUnderLoad: 100 clients keep sending requests through the proxy
// while the policy is reloaded 20 times (by file change, and by SIGHUP),
// one of them with a broken file that must be refused. No request may
// fail, and a tunnel opened before the reloads keeps working after them.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	const clients, reloads, broken = 100, 20, 10
	testStart := time.Now()

	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer origin.Close()
	echo := startEcho(t)

	dir := t.TempDir()
	config := filepath.Join(dir, "policy.yaml")
	replaceFile(t, config, reloadPolicy(0))
	child := startChild(t, "serve", "--config", config)
	proxyURL := &url.URL{Scheme: "http", Host: child.addr(t, "http")}
	admin := "http://" + child.addr(t, "admin")

	// A tunnel opened before any reload.
	tunnel := openTunnel(t, proxyURL.Host, echo)
	defer tunnel.Close()
	tunnelEcho(t, tunnel, "before")

	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(origin.URL + "/")
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(body) != "ok" {
						err = fmt.Errorf("status %d: %q", resp.StatusCode, body)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}

	hash := hashOf(reloadPolicy(0))
	waitPolicy(t, admin, hash)
	for i := 1; i <= reloads; i++ {
		before := ok.Load()
		if i == broken {
			replaceFile(t, config, brokenPolicy)
			waitMetric(t, admin, `egress_policy_reloads_total{result="failure"}`, 1)
			if got := policyHash(t, admin); got != hash {
				t.Errorf("reload %d: a broken file replaced the policy (hash %s)", i, got)
			}
			// /policy says the last attempt was refused, and where.
			var info struct {
				LastReload *struct {
					Result string   `json:"result"`
					Errors []string `json:"errors"`
				} `json:"last_reload"`
			}
			if err := json.Unmarshal([]byte(adminGet(t, admin+"/policy")), &info); err != nil || info.LastReload == nil ||
				info.LastReload.Result != "failure" || len(info.LastReload.Errors) == 0 || !strings.HasPrefix(info.LastReload.Errors[0], config+":") {
				t.Errorf("reload %d: /policy last_reload = %+v (%v), want the failure at %s:LINE:COL", i, info.LastReload, err, config)
			}
		} else {
			text := reloadPolicy(i)
			replaceFile(t, config, text)
			if i%2 == 0 {
				// Also by signal: both triggers may run; both succeed.
				if err := child.cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatal(err)
				}
			}
			hash = hashOf(text)
			waitPolicy(t, admin, hash)
		}
		// Requests went through around this reload.
		testwait.UntilNil(t, testwait.Timeout, func() error {
			if ok.Load() < before+clients {
				return fmt.Errorf("reload %d: requests stalled (%d ok since the previous reload)", i, ok.Load()-before)
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()

	tunnelEcho(t, tunnel, "after")
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during reloads; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if got := metric(t, admin, `egress_policy_reloads_total{result="failure"}`); got != 1 {
		t.Errorf("reload failures = %v, want 1 (the broken file)", got)
	}
	if got := metric(t, admin, `egress_policy_reloads_total{result="success"}`); got < reloads-1 {
		t.Errorf("reload successes = %v, want at least %d", got, reloads-1)
	}
	if want := config + ":3:1"; !strings.Contains(child.logText(), want) {
		t.Errorf("the refused reload is not logged with %s", want)
	}
	elapsed := time.Since(testStart)
	t.Logf("%d requests through %d reloads in %v, %d failed", ok.Load(), reloads, elapsed.Round(time.Millisecond), failed.Load())
	if elapsed > 30*time.Second {
		t.Errorf("took %v, want under 30s", elapsed)
	}
}

func startEcho(t *testing.T) string {
	t.Helper()
	return testnet.ServeTCP(t, func(c net.Conn) { io.Copy(c, c) }).String()
}

// openTunnel opens a CONNECT tunnel to target through the proxy.
func openTunnel(t *testing.T, proxy, target string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		c.Close()
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	if br.Buffered() > 0 {
		t.Fatal("bytes after the CONNECT response")
	}
	c.SetDeadline(time.Time{})
	return c
}

func tunnelEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("tunnel write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("tunnel echo: %q, %v; want %q", buf, err, msg)
	}
}

func adminGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("admin: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func policyHash(t *testing.T, admin string) string {
	t.Helper()
	var info struct{ Hash string }
	if err := json.Unmarshal([]byte(adminGet(t, admin+"/policy")), &info); err != nil {
		t.Fatalf("/policy: %v", err)
	}
	return info.Hash
}

func waitPolicy(t *testing.T, admin, hash string) {
	t.Helper()
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if have := policyHash(t, admin); have != hash {
			return fmt.Errorf("policy %s not loaded (have %s)", hash[:12], have)
		}
		return nil
	})
}

// metric reads one sample of /metrics, -1 when absent.
func metric(t *testing.T, admin, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(adminGet(t, admin+"/metrics"))
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", series, err)
	}
	return v
}

func waitMetric(t *testing.T, admin, series string, want float64) {
	t.Helper()
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if got := metric(t, admin, series); got != want {
			return fmt.Errorf("%s = %v, want %v", series, got, want)
		}
		return nil
	})
}

// TestServeOperations runs egress serve with a log file, the admin
// listener and PROXY protocol: the client address comes from the header,
// denials show on /denials, and SIGUSR1 reopens the log after rotation.
func TestServeOperations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "egress.log")
	config := filepath.Join(dir, "policy.yaml")
	replaceFile(t, config, fmt.Sprintf(`version: 1
default: deny
listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
  proxy_protocol: true
  proxy_protocol_from: [127.0.0.1]
log:
  file: %s
`, logFile))
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeHelperProcess$")
	cmd.Env = append(os.Environ(), "EGRESS_SERVE_HELPER=1", "EGRESS_SERVE_ARGS=serve\n--config\n"+config)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	startup := waitLogLine(t, logFile, func(m map[string]any) bool { return m["listen_http"] != nil })
	httpAddr, _ := startup["listen_http"].(string)
	admin := "http://" + startup["listen_admin"].(string)
	if body := adminGet(t, admin+"/readyz"); body != "ready\n" {
		t.Errorf("/readyz = %q, want ready", body)
	}

	// A request behind a load balancer: the PROXY header names the client.
	c, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "PROXY TCP4 203.0.113.7 127.0.0.1 5000 3128\r\nGET http://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("denied request: %d, want 403", resp.StatusCode)
	}
	var denials []struct{ Client, Host, Reason string }
	if err := json.Unmarshal([]byte(adminGet(t, admin+"/denials")), &denials); err != nil || len(denials) != 1 {
		t.Fatalf("/denials: %v %+v, want one denial", err, denials)
	}
	if d := denials[0]; d.Client != "203.0.113.7:5000" || d.Host != "blocked.example" || d.Reason != "no_rule_matched" {
		t.Errorf("/denials[0] = %+v, want the PROXY client, blocked.example, no_rule_matched", d)
	}
	waitLogLine(t, logFile, func(m map[string]any) bool { return m["host"] == "blocked.example" })

	// logrotate: move the file, SIGUSR1, and the next line starts a new file.
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if _, err := os.Stat(logFile); err != nil {
			return fmt.Errorf("log file not reopened after SIGUSR1; stderr:\n%s", stderr.String())
		}
		return nil
	})
	// SIGHUP rereads the file (here: unchanged), is logged in the new
	// file, and counts no reload: nothing changed.
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogLine(t, logFile, func(m map[string]any) bool {
		return m["message"] == "policy unchanged since the last reload; nothing to do"
	})
	if got := metric(t, admin, `egress_policy_reloads_total{result="success"}`); got != 0 {
		t.Errorf("reload successes = %v, want 0", got)
	}
	if old, _ := os.ReadFile(logFile + ".1"); strings.Contains(string(old), "policy unchanged") {
		t.Error("a line went to the rotated file after SIGUSR1")
	}
}

// TestServeSIGHUPWithoutConfig: the built-in policy has no file to reload;
// SIGHUP must not kill egress (its default action).
func TestServeSIGHUPWithoutConfig(t *testing.T) {
	t.Parallel()
	child := startChild(t, "serve", "--listen", "127.0.0.1:0")
	if err := child.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if !strings.Contains(child.logText(), "nothing to reload") {
			return fmt.Errorf("no log line for SIGHUP:\n%s", child.logText())
		}
		return nil
	})
	c, err := net.DialTimeout("tcp", child.addr(t, "http"), 2*time.Second)
	if err != nil {
		t.Fatalf("egress is gone after SIGHUP: %v", err)
	}
	c.Close()
}

// waitLogLine waits for a JSON line of file that pred accepts.
func waitLogLine(t *testing.T, file string, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	testwait.UntilNil(t, 10*time.Second, func() error {
		data, _ := os.ReadFile(file)
		for _, line := range strings.Split(string(data), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && pred(m) {
				found = m
				return nil
			}
		}
		return fmt.Errorf("no matching line in %s:\n%s", file, data)
	})
	return found
}

// A reload that refuses a destination closes the tunnels open to it,
// each with one line saying revoked and citing the new rule; a tunnel
// the new policy still allows stays open. With reload.revoke_open:
// false, open tunnels are left alone.
func TestReloadRevokesOpenTunnels(t *testing.T) {
	t.Parallel()
	for _, revoke := range []bool{true, false} {
		t.Run(fmt.Sprintf("revoke_open %v", revoke), func(t *testing.T) {
			t.Parallel()
			kept, gone := startEcho(t), startEcho(t)
			_, gonePort, _ := net.SplitHostPort(gone)
			_, keptPort, _ := net.SplitHostPort(kept)
			file := filepath.Join(t.TempDir(), "policy.yaml")
			base := fmt.Sprintf(`version: 1
default: deny
listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
reload:
  revoke_open: %v
allow:
  - {cidr: 127.0.0.1/32, ports: [%s]}
`, revoke, keptPort)
			if err := os.WriteFile(file, []byte(base+fmt.Sprintf("  - {cidr: 127.0.0.1/32, ports: [%s]}\n", gonePort)), 0o600); err != nil {
				t.Fatal(err)
			}
			child := startChild(t, "serve", "--config", file)
			proxy, admin := child.addr(t, "http"), "http://"+child.addr(t, "admin")
			keep, lose := openTunnel(t, proxy, kept), openTunnel(t, proxy, gone)
			defer keep.Close()
			defer lose.Close()
			tunnelEcho(t, lose, "before")

			replaceFile(t, file, base)
			waitPolicy(t, admin, hashOf(base))
			// The reload is counted after its revocations: from here on
			// the tunnel is closed or stays open, no waiting for either.
			waitMetric(t, admin, `egress_policy_reloads_total{result="success"}`, 1)
			tunnelEcho(t, keep, "after")
			if !revoke {
				tunnelEcho(t, lose, "still") // fails if the reload closed it
				return
			}
			lose.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := lose.Read(make([]byte, 1))
			closed := err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
			if !closed {
				t.Fatalf("the tunnel to a refused destination is still open 5s after the reload: %v", err)
			}
			line := child.waitLine(t, func(m map[string]any) bool { return m["reason"] == "revoked" })
			if line["event"] != "deny" || line["proto"] != "connect" || line["hint"] == nil || fmt.Sprint(line["port"]) != gonePort {
				t.Errorf("revoked line: %v", line)
			}
			if n := strings.Count(child.logText(), `"reason":"revoked"`); n != 1 {
				t.Errorf("%d revoked lines, want 1:\n%s", n, child.logText())
			}
		})
	}
}

// waitLine waits for a JSON line of the child's log that pred accepts.
func (c *egressChild) waitLine(t *testing.T, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	return waitJSONLine(t, 10*time.Second, c.logText, pred)
}

// TestPolicyShowsRestartWarning: a reload that changes a setting read only
// at start is applied for the rest, and /policy's last_reload names what
// waits for a restart, as the log line does.
func TestPolicyShowsRestartWarning(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config := filepath.Join(dir, "policy.yaml")
	replaceFile(t, config, reloadPolicy(0))
	child := startChild(t, "serve", "--config", config)
	admin := "http://" + child.addr(t, "admin")
	waitPolicy(t, admin, hashOf(reloadPolicy(0)))

	type lastReload struct {
		LastReload *struct {
			Result  string `json:"result"`
			Warning string `json:"warning"`
		} `json:"last_reload"`
	}
	for _, c := range []struct{ add, want string }{
		{"limits:\n  max_tunnels: 100\n", ""}, // applied on reload: nothing to say
		{"limits:\n  max_header_bytes: 32768\n", "limits.max_header_bytes: changed; restart egress for that to apply"},
	} {
		text := reloadPolicy(0) + c.add
		replaceFile(t, config, text)
		waitPolicy(t, admin, hashOf(text))
		var info lastReload
		if err := json.Unmarshal([]byte(adminGet(t, admin+"/policy")), &info); err != nil || info.LastReload == nil {
			t.Fatalf("/policy after adding %q: no last_reload (%v)", c.add, err)
		}
		if info.LastReload.Result != "success" || info.LastReload.Warning != c.want {
			t.Errorf("/policy after adding %q: last_reload %+v, want success with warning %q", c.add, *info.LastReload, c.want)
		}
	}
}
