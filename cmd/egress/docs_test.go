package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// TestDocsShowWhatEgressPrints runs the commands that README.md and
// docs/policy.md show at a "$ " prompt and compares what they print with
// the lines the docs show under them: users copy these, so they must be
// what egress prints today. Only the commands that decide without the
// network are run (lint, check without --resolve, diff, learn, grep of a
// file learn wrote, and run with a URL for --allow, refused before any
// sandbox), from the repository root, or from testdata/docs for
// the files the docs write out or describe (tab.yaml, old.yaml, ...).
func TestDocsShowWhatEgressPrints(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	ran := 0
	for _, doc := range []string{"README.md", "docs/policy.md"} {
		text, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		written := map[string]string{} // a learn -o FILE: FILE -> where it went
		for _, ex := range promptExamples(string(text)) {
			got, ok := runDocCommand(t, root, tmp, ex.cmd, written)
			if !ok {
				continue
			}
			ran++
			if want := strings.TrimRight(ex.want, "\n"); got != want {
				t.Errorf("%s:%d: $ %s\nprints:\n%s\nthe doc shows:\n%s", doc, ex.line, ex.cmd, got, want)
			}
		}
	}
	// The docs write old.yaml and new.yaml out in full: the fixtures are
	// those.
	policyDoc, err := os.ReadFile(filepath.Join(root, "docs/policy.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"old.yaml", "new.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "cmd/egress/testdata/docs", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(policyDoc, append(append([]byte("```yaml\n"), b...), "```"...)) {
			t.Errorf("docs/policy.md shows another %s than cmd/egress/testdata/docs/%s:\n%s", f, f, b)
		}
	}
	if ran < 10 {
		t.Errorf("ran %d of the docs' commands; the docs show more than 10 (did the parsing break?)", ran)
	}
}

type promptExample struct {
	line int    // of the "$ " line
	cmd  string // after "$ "
	want string // the lines under it, up to the next prompt or the fence
}

// promptExamples finds every "$ CMD" line inside a fenced block and the
// output lines under it.
func promptExamples(text string) []promptExample {
	var out []promptExample
	in := false
	var cur *promptExample
	flush := func() {
		if cur != nil {
			out = append(out, *cur)
			cur = nil
		}
	}
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "```") {
			flush()
			in = !in
			continue
		}
		if !in {
			continue
		}
		if strings.HasPrefix(l, "$ ") {
			flush()
			cur = &promptExample{line: i + 1, cmd: strings.TrimPrefix(l, "$ ")}
			continue
		}
		if cur != nil {
			cur.want += l + "\n"
		}
	}
	return out
}

var trailingComment = regexp.MustCompile(`\s+#\s.*$`)

// versionCommit is the build part of egress --version's line: "(commit
// 380143803492, 2026-12-07T20:43:33Z)", with ", modified" for a tree
// with changes, or "(commit unknown)" for a build without VCS
// information (go test's binary).
var versionCommit = regexp.MustCompile(`\(commit (unknown|[0-9a-f]{1,12}(, [^,)]+)?(, modified)?)\)`)

// runDocCommand runs cmd as the docs mean it, from the repository root,
// and returns its standard output and error together; false when it is not
// one this test runs.
func runDocCommand(t *testing.T, root, tmp, cmd string, written map[string]string) (string, bool) {
	dir := root
	if rest, ok := strings.CutPrefix(cmd, "cd "); ok {
		sub, after, ok := strings.Cut(rest, " && ")
		if !ok {
			return "", false
		}
		dir, cmd = filepath.Join(root, sub), after
	}
	head := 0
	if c, n, ok := strings.Cut(cmd, " | head -"); ok {
		k, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil {
			return "", false
		}
		cmd, head = c, k
	}
	if strings.HasPrefix(cmd, "grep ") {
		return docGrep(t, cmd, written)
	}
	cmd = trailingComment.ReplaceAllString(cmd, "")
	args := strings.Fields(cmd)
	if len(args) < 2 || args[0] != "egress" {
		return "", false
	}
	switch args[1] {
	case "lint", "diff", "learn", "show":
	case "--version", "version":
		// The docs cannot name the commit they are part of: they show
		// its place as COMMIT and COMMIT-TIME, and the rest as printed.
		var stdout, stderr bytes.Buffer
		run(args[1:], &stdout, &stderr)
		got := strings.TrimRight(stdout.String()+stderr.String(), "\n")
		return versionCommit.ReplaceAllString(got, "(commit COMMIT, COMMIT-TIME)"), true
	case "run":
		// Only a run whose --allow is a URL: it stops before any sandbox.
		url := false
		for i, a := range args[:len(args)-1] {
			url = url || a == "--allow" && strings.Contains(args[i+1], "://")
		}
		if !url {
			return "", false
		}
	case "check":
		for _, a := range args {
			if a == "--resolve" {
				return "", false
			}
		}
	default:
		return "", false
	}
	for i := 2; i < len(args); i++ {
		a := args[i]
		if a == "-o" && args[1] == "learn" && i+1 < len(args) {
			out := filepath.Join(tmp, filepath.Base(args[i+1]))
			written[args[i+1]] = out
			args[i+1] = out
			i++
			continue
		}
		if strings.HasSuffix(a, ".yaml") || strings.HasSuffix(a, ".json") || strings.HasSuffix(a, ".log") {
			if _, err := os.Stat(filepath.Join(dir, a)); err == nil {
				continue
			}
			// The docs' own examples (tab.yaml, old.yaml, ...), as they
			// show them, are in testdata/docs.
			fixtures := filepath.Join(root, "cmd/egress/testdata/docs")
			if _, err := os.Stat(filepath.Join(fixtures, a)); err != nil {
				t.Logf("skipped $ %s: %s is not in the repository", cmd, a)
				return "", false
			}
			dir = fixtures
		}
	}
	t.Chdir(dir)
	var stdout, stderr bytes.Buffer
	run(args[1:], &stdout, &stderr)
	got := strings.TrimRight(stdout.String()+stderr.String(), "\n")
	if head > 0 {
		lines := strings.Split(got, "\n")
		got = strings.Join(lines[:min(head, len(lines))], "\n")
	}
	return got, true
}

// docGrep runs "grep -AN 'PATTERN' FILE" on a file an earlier learn -o
// wrote.
func docGrep(t *testing.T, cmd string, written map[string]string) (string, bool) {
	m := regexp.MustCompile(`^grep -A(\d+) '([^']*)' (\S+)$`).FindStringSubmatch(cmd)
	if m == nil || written[m[3]] == "" {
		return "", false
	}
	after, _ := strconv.Atoi(m[1])
	re := regexp.MustCompile(m[2])
	b, err := os.ReadFile(written[m[3]])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []string
	for i, l := range lines {
		if re.MatchString(l) {
			out = append(out, lines[i:min(i+after+1, len(lines))]...)
			break
		}
	}
	return strings.Join(out, "\n"), true
}

// The docs' placeholder stands for every build part versionLine prints,
// so the docs test compares the rest of the line whatever the build.
func TestDocsVersionPlaceholderCoversEveryBuild(t *testing.T) {
	for _, settings := range [][]debug.BuildSetting{
		nil,
		{{Key: "vcs.revision", Value: "3801438034929f1c4e0b5a6d7c8e9f0a1b2c3d4e"}, {Key: "vcs.time", Value: "2026-12-07T20:43:33Z"}},
		{{Key: "vcs.revision", Value: "3801438034929f1c4e0b5a6d7c8e9f0a1b2c3d4e"}, {Key: "vcs.time", Value: "2026-12-07T20:43:33Z"}, {Key: "vcs.modified", Value: "true"}},
	} {
		line := versionLine(&debug.BuildInfo{Settings: settings})
		got := versionCommit.ReplaceAllString(line, "(commit COMMIT, COMMIT-TIME)")
		if !strings.HasPrefix(got, "egress "+version+" (commit COMMIT, COMMIT-TIME) go") {
			t.Errorf("%q reads %q with the placeholder", line, got)
		}
	}
}
