package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiffSummary (issue 21): --summary counts the destinations decided
// differently per file and per rule, in a few lines however large the
// policies, where the full output has a group per rule.
func TestDiffSummary(t *testing.T) {
	dir := t.TempDir()
	var site, base strings.Builder
	site.WriteString("version: 1\ninclude: [base.yaml]\nallow:\n")
	base.WriteString("version: 1\ndefault: deny\nallow:\n")
	const n = 300
	for i := range n {
		b := &site
		if i%3 == 0 {
			b = &base
		}
		fmt.Fprintf(b, "  - {host: h%d.example.com, ports: [443]}\n", i)
	}
	for name, text := range map[string]string{"old.yaml": "version: 1\ndefault: deny\n", "site.yaml": site.String(), "base.yaml": base.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, nw := filepath.Join(dir, "old.yaml"), filepath.Join(dir, "site.yaml")
	code, full := runCommand(cmdDiff, old, nw)
	if code != exitDenied {
		t.Fatalf("exit %d", code)
	}
	code, out := runCommand(cmdDiff, "--summary", old, nw)
	if code != exitDenied {
		t.Fatalf("--summary: exit %d\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if fl := strings.Count(string(full), "\n"); len(lines) > 25 || fl < 3*n {
		t.Errorf("--summary prints %d lines, the full output %d; want a few dozen against one group per rule:\n%s", len(lines), fl, out)
	}
	total := strings.Split(string(full), "\n\n")
	last := strings.TrimSpace(total[len(total)-1]) // the full output's summary line
	for _, want := range []string{
		fmt.Sprintf("NEW allows %d destinations OLD refused:\n", 2*n),
		"  by file (of the rule deciding in NEW, or the reason):\n",
		fmt.Sprintf("    %s  %d\n", nw, 2*(n-n/3)),
		fmt.Sprintf("    %s  %d\n", filepath.Join(dir, "base.yaml"), 2*n/3),
		"  by rule (or reason), the most first:\n",
		fmt.Sprintf("    and %d more rules, %d destinations (--json lists every destination)\n", n-diffSummaryRules, 2*(n-diffSummaryRules)),
		"\n" + last + "\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--summary lacks %q:\n%s", want, out)
		}
	}
	if code, out := runCommand(cmdDiff, "--summary", "--json", old, nw); code != exitUsage || !strings.Contains(string(out), "--json or --summary, not both") {
		t.Errorf("--summary --json: exit %d\n%s", code, out)
	}
}
