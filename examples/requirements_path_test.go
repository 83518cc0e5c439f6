package examples

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
)

// answeringProxy is a proxy on loopback that answers every request with
// head (a status line and headers), unless the request carries the
// Proxy-Authorization "Basic base64(user:secret)", then with 200 and a
// tunnel to nowhere (closed at once). It records the requests' targets.
type answeringProxy struct {
	url  string
	mu   sync.Mutex
	seen []string
}

func startAnsweringProxy(t *testing.T, head string) *answeringProxy {
	t.Helper()
	p := &answeringProxy{}
	addr := testnet.ServeTCP(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		p.mu.Lock()
		p.seen = append(p.seen, req.Method+" "+req.Host)
		p.mu.Unlock()
		if req.Header.Get("Proxy-Authorization") == "Basic "+base64.StdEncoding.EncodeToString([]byte("user:secret")) {
			io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			return
		}
		io.WriteString(c, head+"Content-Length: 0\r\nConnection: close\r\n\r\n")
	})
	p.url = "http://" + addr.String()
	return p
}

func (p *answeringProxy) targets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// helperOutcome runs the helper CLI on one requirement and returns its
// outcome and the rest of its line, and the whole run.
func helperOutcome(t *testing.T, py python, env []string, c reqCase, timeout time.Duration) (string, string, result) {
	t.Helper()
	manifest := writeManifest(t, []reqCase{c})
	args := []string{helperPath, "--timeout", fmt.Sprint(timeout.Seconds()), manifest}
	r := run(t, timeout+20*time.Second, append(py.env, env...), py.path, args...)
	m := helperLine.FindStringSubmatch(strings.TrimSpace(r.stdout))
	if m == nil {
		t.Fatalf("no requirement line in:\n%s", r.stdout)
	}
	return m[1], m[5], r
}

// TestRequirementsPath: the helper checks the path the plugin's client
// takes (via), and when that path is a proxy it tells the proxy's own
// failures (down, credentials, its own 403) from egress's policy, and a
// silent destination from a silent proxy.
func TestRequirementsPath(t *testing.T) {
	t.Parallel()
	pys := pythons(t)
	db := startDB(t, dbAnswers)
	closed := closedPort(t)
	tunneler := startConnectProxy(t, false)
	foreign := startAnsweringProxy(t, "HTTP/1.1 403 Forbidden\r\n")
	auth := startAnsweringProxy(t, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n")
	down := fmt.Sprintf("http://127.0.0.1:%d", closedPort(t))
	name := "api.example.test"
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			t.Run("an IP literal is checked directly, as a driver connects, not through HTTPS_PROXY", func(t *testing.T) {
				before := len(tunneler.seen())
				out, detail, _ := helperOutcome(t, py, []string{"HTTPS_PROXY=" + tunneler.url},
					reqCase{key: "database", host: "127.0.0.1", port: closed, protocol: "tcp"}, 3*time.Second)
				if out != "unreachable" || !strings.Contains(detail, "connection refused") {
					t.Errorf("outcome %s: %s; want unreachable, connection refused", out, detail)
				}
				if n := len(tunneler.seen()) - before; n != 0 {
					t.Errorf("the proxy was asked %d times for a direct requirement", n)
				}
				out, detail, _ = helperOutcome(t, py, []string{"HTTPS_PROXY=" + tunneler.url},
					reqCase{key: "database", host: "127.0.0.1", port: db.port, protocol: "tcp"}, 3*time.Second)
				if out != "ok" || strings.Contains(detail, "proxy") {
					t.Errorf("outcome %s: %s; want ok, connected directly", out, detail)
				}
			})
			t.Run("via: proxy takes the proxy for an IP literal", func(t *testing.T) {
				before := len(tunneler.seen())
				out, detail, _ := helperOutcome(t, py, []string{"HTTPS_PROXY=" + tunneler.url},
					reqCase{key: "database", host: "127.0.0.1", port: db.port, protocol: "tcp", via: "proxy"}, 3*time.Second)
				if out != "ok" || !strings.Contains(detail, "opened by the proxy") || len(tunneler.seen()) == before {
					t.Errorf("outcome %s: %s; want ok through the proxy", out, detail)
				}
			})
			t.Run("via: direct ignores HTTPS_PROXY for a name", func(t *testing.T) {
				before := len(foreign.targets())
				out, detail, _ := helperOutcome(t, py, []string{"HTTPS_PROXY=" + foreign.url},
					reqCase{key: "database", host: "localhost", port: db.port, protocol: "tcp", via: "direct"}, 3*time.Second)
				if out != "ok" || len(foreign.targets()) != before {
					t.Errorf("outcome %s: %s; want ok, direct", out, detail)
				}
			})
			t.Run("via: proxy without a proxy set says so", func(t *testing.T) {
				out, detail, _ := helperOutcome(t, py, nil,
					reqCase{key: "api", host: name, port: 443, protocol: "https", via: "proxy"}, 3*time.Second)
				if out != "proxy_failure" || !strings.Contains(detail, "HTTPS_PROXY is not set") {
					t.Errorf("outcome %s: %s", out, detail)
				}
			})
			t.Run("a 403 without egress's headers is another proxy's, with no egress rule", func(t *testing.T) {
				out, detail, r := helperOutcome(t, py, []string{"HTTPS_PROXY=" + foreign.url},
					reqCase{key: "api", host: name, port: 443, protocol: "https"}, 3*time.Second)
				if out != "proxy_failure" || !strings.Contains(detail, "not egress") || strings.Contains(r.stdout+r.stderr, "allow:") {
					t.Errorf("outcome %s: %s\nstderr:\n%s\nwant proxy_failure, not egress, no rule", out, detail, r.stderr)
				}
				if !strings.Contains(r.stderr, "check the proxy "+foreign.url) {
					t.Errorf("the action does not point at the proxy:\n%s", r.stderr)
				}
			})
			t.Run("a proxy that is down is blamed, not the destination", func(t *testing.T) {
				out, detail, r := helperOutcome(t, py, []string{"HTTPS_PROXY=" + down},
					reqCase{key: "api", host: name, port: 443, protocol: "https"}, 3*time.Second)
				if out != "proxy_failure" || !strings.Contains(detail, "cannot reach the proxy "+down) {
					t.Errorf("outcome %s: %s", out, detail)
				}
				if strings.Contains(r.stderr, "up and listening") || !strings.Contains(r.stderr, "check the proxy "+down) {
					t.Errorf("the action blames the destination or not the proxy:\n%s", r.stderr)
				}
			})
			t.Run("a 407 asks for credentials, and wrong ones are said wrong without printing them", func(t *testing.T) {
				out, detail, _ := helperOutcome(t, py, []string{"HTTPS_PROXY=" + auth.url},
					reqCase{key: "api", host: name, port: 443, protocol: "tcp"}, 3*time.Second)
				if out != "proxy_failure" || !strings.Contains(detail, "wants credentials") {
					t.Errorf("outcome %s: %s", out, detail)
				}
				withWrong := strings.Replace(auth.url, "http://", "http://user:hunter2@", 1)
				out, detail, r := helperOutcome(t, py, []string{"HTTPS_PROXY=" + withWrong},
					reqCase{key: "api", host: name, port: 443, protocol: "tcp"}, 3*time.Second)
				if out != "proxy_failure" || !strings.Contains(detail, "refused the credentials") {
					t.Errorf("outcome %s: %s", out, detail)
				}
				if strings.Contains(r.stdout+r.stderr, "hunter2") {
					t.Errorf("the password is printed:\n%s%s", r.stdout, r.stderr)
				}
				withRight := strings.Replace(auth.url, "http://", "http://user:secret@", 1)
				out, detail, _ = helperOutcome(t, py, []string{"HTTPS_PROXY=" + withRight},
					reqCase{key: "api", host: name, port: 443, protocol: "tcp"}, 3*time.Second)
				if out != "ok" {
					t.Errorf("with the right credentials: outcome %s: %s", out, detail)
				}
			})
		})
	}
}

// TestRequirementsSilentDestinationThroughEgress: through egress serve, a
// destination that never answers a connect is reported as the silent one
// when the helper's time is shorter than egress's timeouts.dial, not as a
// proxy that did not answer.
func TestRequirementsSilentDestinationThroughEgress(t *testing.T) {
	t.Parallel()
	pys := pythons(t)
	bin := egress(t)
	silent := testnet.FullBacklog(t)
	e := startServe(t, bin, fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - {cidr: 127.0.0.1/32, ports: [%d]}\ntimeouts:\n  dial: 10s\n", silent.Port()))
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel() // each waits out its 2 s
			out, detail, r := helperOutcome(t, py, []string{"HTTPS_PROXY=" + e.proxyURL},
				reqCase{key: "database", host: "127.0.0.1", port: int(silent.Port()), protocol: "tcp", via: "proxy"}, 2*time.Second)
			want := fmt.Sprintf("was still trying to reach %s", silent)
			if out != "unreachable" || !strings.Contains(detail, want) || strings.Contains(detail, "did not answer CONNECT") {
				t.Errorf("outcome %s: %s; want unreachable, %q", out, detail, want)
			}
			if !strings.Contains(r.stderr, "up and listening") {
				t.Errorf("the action does not point at the destination:\n%s", r.stderr)
			}
		})
	}
}
