package examples

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
)

// egressServe is a running `egress serve`; its JSON log lines are kept.
type egressServe struct {
	proxyURL string
	mu       sync.Mutex
	lines    []map[string]any
}

func (e *egressServe) logLines() []map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]map[string]any(nil), e.lines...)
}

// startServe runs `egress serve --config FILE` with policyText on a free
// loopback port, and skips t when egress serve cannot run yet.
func startServe(t *testing.T, bin, policyText string) *egressServe {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(cfg, []byte(policyText), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--log-format", "json"}
	if !strings.Contains(policyText, "admin:") {
		// Tests run in parallel: a free port, not the default 9090.
		args = append(args, "--admin", "127.0.0.1:0")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv()
	cmd.WaitDelay = 5 * time.Second
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &egressServe{}
	addr := make(chan string, 1)
	done := make(chan struct{})
	var text strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				e.mu.Lock()
				text.WriteString(line + "\n")
				e.mu.Unlock()
				continue
			}
			e.mu.Lock()
			e.lines = append(e.lines, m)
			e.mu.Unlock()
			if a, ok := m["listen_http"].(string); ok {
				select {
				case addr <- a:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			<-done
		}
		cmd.Wait()
		cancel()
	})
	select {
	case a := <-addr:
		e.proxyURL = "http://" + a
	case <-done:
		e.mu.Lock()
		defer e.mu.Unlock()
		out := strings.TrimSpace(text.String())
		if strings.Contains(out, "not implemented") {
			t.Skipf("egress serve is not implemented yet: %s", out)
		}
		t.Fatalf("egress serve exited before listening: %s %v", out, e.lines)
	case <-time.After(20 * time.Second):
		t.Fatal("egress serve did not log its listen address within 20s")
	}
	return e
}

// TestPluginThroughEgressServe runs the plugin as docker-compose.yml does:
// the API through HTTPS_PROXY, the DB through CONNECT (PLUGIN_DB_PROXY),
// against `egress serve` on loopback.
func TestPluginThroughEgressServe(t *testing.T) {
	t.Parallel()
	pys := pythons(t)
	bin := egress(t)
	for _, py := range pys {
		t.Run(py.name, func(t *testing.T) {
			const timeout = 3 * time.Second
			const bound = 4*timeout + 5*time.Second
			db, api := startDB(t, dbAnswers), startAPI(t, false)
			apiRule := fmt.Sprintf("{cidr: 127.0.0.1, ports: [%d]}", api.port)
			if py.apiHost == "localhost" {
				apiRule = fmt.Sprintf("{host: localhost, ports: [%d]}", api.port)
			}
			policyFor := func(rules ...string) string {
				return "version: 1\ndefault: deny\nallow:\n  - " + strings.Join(rules, "\n  - ") +
					"\nlisten:\n  admin: 127.0.0.1:0\n"
			}
			runPlugin := func(t *testing.T, e *egressServe) result {
				args := append(pluginArgs(py, "127.0.0.1", db.port, api.url(py.apiHost), api.caFile, timeout), "--db-proxy", e.proxyURL)
				return run(t, bound, append(py.env, "HTTPS_PROXY="+e.proxyURL), py.path, args...)
			}

			t.Run("both allowed: the plugin works through egress", func(t *testing.T) {
				e := startServe(t, bin, policyFor(fmt.Sprintf("{cidr: 127.0.0.1, ports: [%d]}", db.port), apiRule))
				before := db.answered.Load()
				r := runPlugin(t, e)
				if r.code != 0 {
					t.Fatalf("exit %d, want 0", r.code)
				}
				if db.answered.Load() == before {
					t.Error("the DB never answered: the plugin did not reach it through egress")
				}
			})

			t.Run("the DB not allowed: the plugin names it, egress logs the denial", func(t *testing.T) {
				e := startServe(t, bin, policyFor(apiRule))
				r := runPlugin(t, e)
				if r.code != exitUnmet {
					t.Fatalf("exit %d, want %d", r.code, exitUnmet)
				}
				line := outcomeOf(r.stderr, "PostgreSQL")
				want := regexp.MustCompile(`^refused +127\.0\.0\.1:` + strconv.Itoa(db.port) + ` tcp \(PostgreSQL\): the proxy ` + regexp.QuoteMeta(e.proxyURL) +
					` denied 127\.0\.0\.1:` + strconv.Itoa(db.port) + ` \(guard_loopback\), egress id ([0-9a-f]+); to allow: ` +
					regexp.QuoteMeta(allowHint("127.0.0.1", db.port)) + `$`)
				var id string
				if !want.MatchString(line) {
					t.Errorf("plugin's line for the DB:\n%s\nwant one matching:\n%s", line, want)
				} else {
					id = want.FindStringSubmatch(line)[1]
				}
				wantOutcome(t, r.stderr, "DBMS REST API", "ok")
				// The denial is logged once the response is written; wait
				// for the log to reach us.
				testwait.UntilNil(t, testwait.Timeout, func() error {
					lines := e.logLines()
					for _, l := range lines {
						if l["event"] == "deny" && l["port"] == float64(db.port) && l["id"] == id && l["hint"] != "" &&
							strings.Contains(allowHint("127.0.0.1", db.port), fmt.Sprint(l["hint"])) {
							return nil
						}
					}
					return fmt.Errorf("egress logged no denial with a hint for port %d: %v", db.port, lines)
				})
			})
		})
	}
}
