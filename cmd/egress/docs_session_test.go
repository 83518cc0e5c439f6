//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/internal/testwait"
)

// TestDocsRequestRulesSession runs the session of docs/policy.md's
// "Request rules and credentials" as it is written: its policy block as
// policy.yaml, egress ca init and egress serve, curl, python3 and
// python2.7 through the proxy to a stand-in vendor API on 127.0.0.1 whose
// certificate is from vendor-ca.pem. What each command prints, and the
// log lines serve writes, must be what the docs show, ids, ports, dates
// and times aside; README.md shows the same session. Two things differ
// from a person's run, neither of them seen in the output: the vendor API
// listens on a free port, not 8443 (the policy and the commands get that
// port), and egress is given a resolver answering 127.0.0.1 for
// api.vendor.example instead of an /etc/hosts line, and free ports to
// listen on: appended to the policy, so that its line numbers hold.
func TestDocsRequestRulesSession(t *testing.T) {
	for _, tool := range []string{"curl", "python3", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	if err := exec.Command("bash", "-c", "PYENV_VERSION=2.7.18 python2.7 -c pass").Run(); err != nil {
		t.Skipf("python2.7 not installed: %v", err)
	}
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	policyDoc := readDoc(t, root, "docs/policy.md")
	section := policyDoc[strings.Index(policyDoc, "\n## Request rules and credentials\n"):]
	policyText := fenced(t, section, "```yaml\n", 0)
	at := strings.Index(section, "A session with the policy above")
	if at < 0 {
		t.Fatal("docs/policy.md has no session under Request rules and credentials")
	}
	session := fenced(t, section[at:], "```console\n", 0)
	logLines := fenced(t, section[at:], "```json\n", 0)
	readme := readDoc(t, root, "README.md")
	if !strings.Contains(readme, "```console\n"+session+"```\n") {
		t.Errorf("README.md shows another session than docs/policy.md's:\n%s", session)
	}

	const docPort = 8443
	dir := t.TempDir()
	vendorCA, vendorPEM, _, err := certs.Create(certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := vendorCA.Leaf("api.vendor.example")
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "vendor: %s %s, Authorization: %q\n", r.Method, r.URL.Path, r.Header.Get("Authorization"))
	}))
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	origin.Config.ErrorLog = log.New(io.Discard, "", 0) // CONNECT dials ahead: unused connections close unread
	origin.StartTLS()
	defer origin.Close()
	port := origin.Listener.Addr().(*net.TCPAddr).Port
	upstream := dnsUpstream(t, map[string]string{"api.vendor.example": "127.0.0.1"})

	if !strings.Contains(policyText, fmt.Sprintf("ports: [%d]", docPort)) {
		t.Fatalf("the policy block has no ports: [%d]:\n%s", docPort, policyText)
	}
	text := strings.ReplaceAll(policyText, fmt.Sprintf("ports: [%d]", docPort), fmt.Sprintf("ports: [%d]", port)) +
		fmt.Sprintf("listen:\n  http: 127.0.0.1:0\ndns:\n  upstreams: [%q]\n", upstream)
	for name, b := range map[string][]byte{"policy.yaml": []byte(text), "vendor-token": []byte("tok_live_abc123\n"), "vendor-ca.pem": vendorPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// What differs between runs, in the docs and in what was printed.
	portRE := regexp.MustCompile(`(:|"port":|ports: \[)` + strconv.Itoa(port) + `\b`)
	mask := func(s string) string {
		s = strings.ReplaceAll(s, "\r", "")
		s = strings.ReplaceAll(s, dir, "/tmp/egress-demo")
		s = portRE.ReplaceAllString(s, "${1}"+strconv.Itoa(docPort))
		for _, m := range []struct{ re, with string }{
			{`\b[0-9a-f]{16}\b`, "ID"},
			{`(?m)^Date: .*$`, "Date: DATE"},
			{`(?m)^Content-Length: \d+$`, "Content-Length: N"}, // the port's digits are in the body
			{`"client":"127\.0\.0\.1:\d+"`, `"client":"127.0.0.1:PORT"`},
			{`"duration_ms":\d+`, `"duration_ms":N`},
			{`"time":"[^"]*"`, `"time":"TIME"`},
		} {
			s = regexp.MustCompile(m.re).ReplaceAllString(s, m.with)
		}
		return strings.TrimRight(s, "\n")
	}

	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return strings.HasSuffix(strings.ToLower(k), "_proxy")
	})
	var child *egressChild
	ran := 0
	for _, ex := range sessionCommands(session) {
		var got string
		switch {
		case strings.HasPrefix(ex.cmd, "egress ca init "):
			args := strings.Fields(ex.cmd)[1:]
			for i, a := range args {
				if !strings.HasPrefix(a, "-") && i >= 2 {
					args[i] = filepath.Join(dir, a)
				}
			}
			var out bytes.Buffer
			if code := run(args, &out, &out); code != exitOK {
				t.Fatalf("$ %s: exit %d\n%s", ex.cmd, code, out.String())
			}
			got = out.String()
		case strings.HasPrefix(ex.cmd, "egress serve ") && strings.HasSuffix(ex.cmd, " &"):
			// Its log (2>serve.log) is the child's, compared below.
			args := slices.DeleteFunc(strings.Fields(strings.TrimSuffix(ex.cmd, " &"))[1:], func(a string) bool { return strings.HasPrefix(a, "2>") })
			child = startChildIn(t, dir, args...)
		case strings.HasPrefix(ex.cmd, "export https_proxy="):
			if child == nil {
				t.Fatal("the session sets https_proxy before starting egress serve")
			}
			env = append(env, "https_proxy=http://"+child.addr(t, "http"))
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a command that hangs fails the test
			cmd := exec.CommandContext(ctx, "bash", "-c", strings.ReplaceAll(ex.cmd, fmt.Sprintf(":%d/", docPort), fmt.Sprintf(":%d/", port)))
			cmd.Dir, cmd.Env = dir, env
			out, err := cmd.CombinedOutput() // curl's exit 60 is part of the session
			timedOut := ctx.Err() != nil
			cancel()
			if timedOut {
				t.Fatalf("%s: did not end within 30 s: %v\n%s", ex.cmd, err, out)
			}
			got = string(out)
		}
		ran++
		g, w := mask(got), mask(ex.want)
		if strings.HasPrefix(w, "curl: (") {
			// curl's error line; what it prints after it is its own
			// advice, worded differently by each version.
			g, _, _ = strings.Cut(g, "\n")
			w, _, _ = strings.Cut(w, "\n")
		}
		if g != w {
			t.Errorf("docs/policy.md, line %d of the session: $ %s\nprints:\n%s\nthe doc shows:\n%s", ex.line, ex.cmd, mask(got), mask(ex.want))
		}
	}
	if ran < 8 || child == nil {
		t.Fatalf("ran %d of the session's commands (did the parsing break?)", ran)
	}

	// serve's log: the lines of the decisions, each as documented.
	want := strings.Split(mask(logLines), "\n")
	var lines []string
	testwait.Until(t, 10*time.Second, fmt.Sprintf("serve to log %d decisions", len(want)), func() bool {
		lines = lines[:0]
		for _, l := range strings.Split(child.logText(), "\n") {
			if strings.Contains(l, `"proto":`) {
				lines = append(lines, mask(l))
			}
		}
		return len(lines) >= len(want)
	})
	slices.Sort(lines)
	sortedWant := slices.Clone(want)
	slices.Sort(sortedWant)
	if !slices.Equal(lines, sortedWant) {
		t.Errorf("serve logged:\n%s\nthe doc shows:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(child.logText(), "tok_live_abc123") {
		t.Error("the injected token is in serve's log")
	}
}

func readDoc(t *testing.T, root, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fenced returns the body of the n-th block of text opened by fence.
func fenced(t *testing.T, text, fence string, n int) string {
	t.Helper()
	for ; ; n-- {
		i := strings.Index(text, "\n"+fence)
		if i < 0 {
			t.Fatalf("no %q block", strings.TrimSpace(fence))
		}
		text = text[i+1+len(fence):]
		end := strings.Index(text, "```\n")
		if end < 0 {
			t.Fatalf("a %q block does not end", strings.TrimSpace(fence))
		}
		if n == 0 {
			return text[:end]
		}
		text = text[end:]
	}
}

// sessionCommands splits a console block into its "$ " commands (one
// with an open single quote goes on over the lines after it) and the
// output under each.
func sessionCommands(block string) []promptExample {
	var out []promptExample
	lines := strings.Split(strings.TrimRight(block, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "$ ") {
			if len(out) > 0 {
				out[len(out)-1].want += l + "\n"
			}
			continue
		}
		ex := promptExample{line: i, cmd: strings.TrimPrefix(l, "$ ")}
		for strings.Count(ex.cmd, "'")%2 == 1 && i+1 < len(lines) {
			i++
			ex.cmd += "\n" + lines[i]
		}
		out = append(out, ex)
	}
	return out
}
