package examples

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// TestDockerHealthcheckFollowsListenAdmin runs the image's HEALTHCHECK
// command against egress serve with an admin listener off the default
// port: it asks the listen.admin of the policy it is given.
func TestDockerHealthcheckFollowsListenAdmin(t *testing.T) {
	t.Parallel()
	bin := egress(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	text := fmt.Sprintf("version: 1\ndefault: deny\nlisten:\n  admin: %s\n", admin)
	startServe(t, bin, text)
	cfg := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	hc := dockerHealthcheck(t)
	args := append([]string(nil), hc[1:]...)
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			args[i+1] = cfg // the image's /etc/egress/policy.yaml
		}
	}
	r := run(t, 10*time.Second, nil, bin, args...)
	if r.code != 0 {
		t.Fatalf("HEALTHCHECK %v: exit %d, stderr %q", hc, r.code, r.stderr)
	}
	if want := "egress health: http://" + admin + "/healthz answered 200 OK\n"; r.stdout != want {
		t.Errorf("HEALTHCHECK printed %q, want %q", r.stdout, want)
	}
}

// TestDockerRunExample checks the Dockerfile's `docker run` example
// outside compose: the published port reaches the HTTP listener, the
// policy lets in the clients that come through it (the bridge's gateway)
// and allows what the example's curl fetches.
func TestDockerRunExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var runArgs []string
	var curl string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(l, "#"))
		if rest, ok := strings.CutPrefix(l, "docker run "); ok && runArgs == nil {
			runArgs = strings.Fields(rest)
		}
		if strings.HasPrefix(l, "curl ") && curl == "" {
			curl = l
		}
	}
	if runArgs == nil || curl == "" {
		t.Fatal("the Dockerfile shows no docker run example with a curl through it")
	}
	var publish []string
	var volume string
	for i, a := range runArgs {
		if i+1 < len(runArgs) && a == "-p" {
			publish = append(publish, runArgs[i+1])
		}
		if i+1 < len(runArgs) && a == "-v" {
			volume = strings.Trim(runArgs[i+1], `"`)
		}
	}
	// -v "$PWD/DIR:/etc/egress:ro": the policy of the image's CMD.
	parts := strings.Split(volume, ":")
	if len(parts) != 3 || parts[1] != "/etc/egress" || parts[2] != "ro" || !strings.HasPrefix(parts[0], "$PWD/") {
		t.Fatalf("docker run mounts %q, want \"$PWD/DIR:/etc/egress:ro\"", volume)
	}
	file := filepath.Join(repoRoot, strings.TrimPrefix(parts[0], "$PWD/"), "policy.yaml")
	policyData, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p := loadCleanPolicy(t, file, policyData)
	if p == nil {
		return
	}

	t.Run("a published port reaches the HTTP listener", func(t *testing.T) {
		httpAddr := addrPort(t, "listen.http", p.Listen.HTTP)
		if !httpAddr.Addr().IsUnspecified() {
			t.Errorf("listen.http %s: a published port reaches the container's address, not its loopback", httpAddr)
		}
		found := false
		for _, pub := range publish {
			f := strings.Split(pub, ":") // [HOSTIP:]HOSTPORT:CONTAINERPORT
			if f[len(f)-1] == fmt.Sprint(httpAddr.Port()) {
				found = true
				if len(f) != 3 || f[0] != "127.0.0.1" {
					t.Errorf("-p %s publishes the proxy on every host address; the example binds it to 127.0.0.1", pub)
				}
			}
		}
		if !found {
			t.Errorf("docker run publishes %v, none of them listen.http's port %d", publish, httpAddr.Port())
		}
	})

	t.Run("allow_from admits the default bridge's gateway and no more", func(t *testing.T) {
		gw := netip.MustParseAddr("172.17.0.1")
		if d := p.Decide(policy.Request{Host: "pypi.org", Port: 443, Client: gw}); !d.Allowed() {
			t.Errorf("a client through the published port (from %s) is refused: %s", gw, d.Reason)
		}
		if d := p.Decide(policy.Request{Host: "pypi.org", Port: 443, Client: netip.MustParseAddr("192.0.2.7")}); d.Allowed() {
			t.Errorf("a client from anywhere is allowed: allow_from is too wide")
		}
	})

	t.Run("the example's curl is allowed", func(t *testing.T) {
		var target string
		for _, f := range strings.Fields(curl) {
			if strings.HasPrefix(f, "https://") {
				target = f
			}
		}
		u, err := url.Parse(target)
		if err != nil || u.Hostname() == "" {
			t.Fatalf("curl %q: no https:// URL", curl)
		}
		if d := p.Decide(policy.Request{Host: u.Hostname(), Port: 443, Client: netip.MustParseAddr("172.17.0.1")}); !d.Allowed() {
			t.Errorf("curl %s would be refused: %s", target, d.Reason)
		}
	})

	t.Run("the admin listener stays inside the container", func(t *testing.T) {
		admin := addrPort(t, "listen.admin", p.Listen.Admin)
		if !admin.Addr().IsLoopback() {
			t.Errorf("listen.admin %s: keep it on loopback; the HEALTHCHECK asks it from inside", admin)
		}
		for _, pub := range publish {
			if strings.HasSuffix(pub, fmt.Sprintf(":%d", admin.Port())) {
				t.Errorf("-p %s publishes the admin listener", pub)
			}
		}
	})
}
