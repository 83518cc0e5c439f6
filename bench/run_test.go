// Package bench holds the benchmark scripts; this test checks bench/run.sh's
// own setup (descriptor limits, a failing step's message) without running
// any benchmark: every tool it would call is a stub, and go fails.
package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// runScript runs bench/run.sh with stubs for the tools it installs and a
// go that fails, so it stops at its first go step; it returns stderr and
// whether it failed.
func runScript(t *testing.T, env ...string) string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	stubs := t.TempDir()
	for _, tool := range []string{"squid", "tinyproxy", "wrk", "dnsperf", "dnsmasq", "dig", "apt-get"} {
		os.WriteFile(filepath.Join(stubs, tool), []byte("#!/bin/sh\nexit 0\n"), 0o755)
	}
	os.WriteFile(filepath.Join(stubs, "go"), []byte("#!/bin/sh\necho 'go: stub refuses' >&2\nexit 3\n"), 0o755)
	cmd := exec.Command(bash, "run.sh")
	cmd.Env = append(os.Environ(), append(env, "PATH="+stubs+":"+os.Getenv("PATH"), "OUT="+filepath.Join(t.TempDir(), "B.md"))...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("run.sh succeeded with a go that fails:\n%s", out)
	}
	return string(out)
}

// TestRunShSaysWhichStepFailed: a failing step ends the script with a line
// naming it (here go install, the first go step), not silently.
func TestRunShSaysWhichStepFailed(t *testing.T) {
	out := runScript(t, "TUNNELS=100")
	if !strings.Contains(out, "bench: failed (exit 3) in step: go install github.com/stripe/smokescreen@v0.1.0") {
		t.Errorf("run.sh's output does not name the failed step:\n%s", out)
	}
}

// TestRunShKeepsTheHardLimit: TUNNELS=5000 needs 11,000 descriptors; the
// script must not lower the hard limit to that and then refuse for want of
// 12,000.
func TestRunShKeepsTheHardLimit(t *testing.T) {
	hard, err := exec.Command("bash", "-c", "ulimit -Hn").Output()
	if err != nil {
		t.Skip("bash is not installed")
	}
	h := strings.TrimSpace(string(hard))
	if n, err := strconv.Atoi(h); err == nil && n < 11000 {
		t.Skipf("the hard limit on open files here is %d, under the 11000 that TUNNELS=5000 needs", n)
	}
	out := runScript(t, "TUNNELS=5000")
	if strings.Contains(out, "need at least") {
		t.Fatalf("run.sh refused TUNNELS=5000:\n%s", out)
	}
	m := regexp.MustCompile(`open files: (\d+) \(hard limit (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("run.sh does not say its limits:\n%s", out)
	}
	if m[1] != "11000" || m[2] != h {
		t.Errorf("open files %s, hard limit %s; want 11000 and the hard limit left at %s", m[1], m[2], h)
	}
}
