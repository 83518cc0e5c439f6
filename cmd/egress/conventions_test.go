package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCommandLineConventions(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // a substring of standard output ("" for none wanted)
		stderr string // a substring of standard error
	}{
		{"--version prints the version", []string{"--version"}, exitOK, "egress dev (commit ", ""},
		{"version prints the version", []string{"version"}, exitOK, "egress dev (commit ", ""},
		{"help COMMAND prints that command's usage", []string{"help", "check"}, exitOK, "", "usage: egress check [--config FILE]"},
		{"help alone prints the commands", []string{"help"}, exitOK, "", "Run 'egress help COMMAND'"},
		{"help of a misspelt command suggests the command", []string{"help", "lnit"}, exitUsage, "", `unknown command "lnit" (did you mean "lint"?)`},
		{"a misspelt command is suggested the command", []string{"serv"}, exitUsage, "", `unknown command "serv" (did you mean "serve"?)`},
		{"a transposition is suggested", []string{"chekc"}, exitUsage, "", `(did you mean "check"?)`},
		{"nothing close is suggested nothing", []string{"frobnicate"}, exitUsage, "", "unknown command \"frobnicate\"\n"},
		{"an IPv6 address with a port and no brackets gets the bracketed form", []string{"check", "::1:80"}, exitUsage, "", "did you mean [::1]:80?"},
		{"an unambiguous bare IPv6 address is any port", []string{"check", "2001:db8::1"}, exitDenied, "2001:db8::1  guard_special", ""},
		{"the bracketed form is a port", []string{"check", "[::1]:80"}, exitDenied, `{cidr: "::1/128", ports: [80]}`, ""},
		{"completion without a shell is a usage error", []string{"completion"}, exitUsage, "", "usage: egress completion bash|zsh|fish"},
		{"completion of an unknown shell says which it knows", []string{"completion", "tcsh"}, exitUsage, "", "bash, zsh or fish"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("egress %s: exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant stdout with %q, stderr with %q",
					strings.Join(tt.args, " "), code, tt.code, stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
		})
	}
}

// TestHelpEveryCommand: "egress help CMD" prints CMD's own usage for every
// command, never the general one.
func TestHelpEveryCommand(t *testing.T) {
	for _, c := range commands() {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"help", c.name}, &stdout, &stderr); code != exitOK {
			t.Errorf("egress help %s: exit %d", c.name, code)
		}
		if !strings.HasPrefix(stderr.String(), "usage: egress "+c.name) {
			t.Errorf("egress help %s prints:\n%s", c.name, stderr.String())
		}
	}
}

func TestVersionLine(t *testing.T) {
	settings := func(kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{}
		for i := 0; i < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"a build from a clone names its commit and time", settings("vcs.revision", "2e6c250f5bdbbcd5fc7a1b5c3952b5dec3dc6ed5", "vcs.time", "2026-11-29T11:06:11Z", "vcs.modified", "false"),
			"egress dev (commit 2e6c250f5bdb, 2026-11-29T11:06:11Z) go"},
		{"uncommitted changes are said", settings("vcs.revision", "2e6c250f5bdbbcd5fc7a1b5c3952b5dec3dc6ed5", "vcs.modified", "true"),
			"egress dev (commit 2e6c250f5bdb, modified) go"},
		{"a build without VCS information says the commit is unknown", settings("-buildmode", "exe"), "egress dev (commit unknown) go"},
		{"no build information at all", nil, "egress dev (commit unknown) go"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := versionLine(tt.bi); !strings.HasPrefix(got, tt.want) {
				t.Errorf("got %q, want it to begin %q", got, tt.want)
			}
		})
	}
}

// TestVersionFromClone builds egress in a fresh clone of this repository
// with VCS stamping on (tests themselves are built with -buildvcs=false,
// and a git worktree is not stamped) and checks that version names HEAD.
func TestVersionFromClone(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds egress in a clone: not with -short")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command(git, "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("%s is not a git checkout: %v", root, err)
	}
	clone := filepath.Join(t.TempDir(), "egress")
	if out, err := exec.Command(git, "clone", "-q", "--shared", "--no-checkout", root, clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	if out, err := exec.Command(git, "-C", clone, "checkout", "-q", strings.TrimSpace(string(head))).CombinedOutput(); err != nil {
		t.Fatalf("git checkout: %v\n%s", err, out)
	}
	bin := filepath.Join(t.TempDir(), "egress")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/egress")
	build.Dir = clone
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "(commit " + strings.TrimSpace(string(head))[:12] + ", "
	if !strings.Contains(string(out), want) {
		t.Errorf("egress version built in a clone prints %q, want %q in it", out, want)
	}
}

func TestLintJSON(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("version: 1\ndefault: deny\nallow:\n  - host: api.example.com\n    ports: [443]\n"), 0o644)
	os.WriteFile(bad, []byte("version: 1\ndefualt: deny\n"), 0o644)
	var stdout, stderr bytes.Buffer
	code := run([]string{"lint", good, bad, filepath.Join(dir, "absent.yaml"), "--json"}, &stdout, &stderr)
	if code != exitDenied {
		t.Errorf("exit %d, want %d", code, exitDenied)
	}
	var got []lintResult
	dec := json.NewDecoder(&stdout)
	for dec.More() {
		var r lintResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("not JSON lines: %v\n%s", err, stdout.String())
		}
		got = append(got, r)
	}
	if len(got) != 3 {
		t.Fatalf("%d results, want 3: %+v", len(got), got)
	}
	if !got[0].OK || got[0].Rules != 1 || len(got[0].Errors) != 0 {
		t.Errorf("good file: %+v", got[0])
	}
	if got[1].OK || len(got[1].Errors) != 1 || got[1].Errors[0].Line != 2 || got[1].Errors[0].Column != 1 ||
		!strings.Contains(got[1].Errors[0].Message, `did you mean "default"`) {
		t.Errorf("bad file: %+v", got[1])
	}
	if got[2].OK || len(got[2].Errors) != 1 || !strings.Contains(got[2].Errors[0].Message, "no such file") {
		t.Errorf("absent file: %+v", got[2])
	}
}

// TestCompletionBash loads the bash script into a real bash and asks it
// to complete, as a terminal's tab would.
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	var script, stderr bytes.Buffer
	if code := run([]string{"completion", "bash"}, &script, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	tests := []struct {
		line string // the words typed, the last one being completed
		want string // what the completions hold, space-separated
	}{
		{"egress ser", "serve"},
		{"egress c", "check ca completion"},
		{"egress check --con", "--config"},
		{"egress learn -", "--include-denied --lift-guards --mode -o"},
		{"egress help li", "lint"},
		{"egress completion f", "fish"},
		{"egress lint --j", "--json"},
		{"egress ca i", "init"},
		{"egress ca init --con", "--config"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			words := strings.Fields(tt.line)
			prog := script.String() + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\nCOMP_CWORD=" +
				string(rune('0'+len(words)-1)) + "\n_egress\necho \"${COMPREPLY[*]}\"\n"
			out, err := exec.Command(bash, "--norc", "-c", prog).CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tt.want {
				t.Errorf("completes %q, want %q", got, tt.want)
			}
		})
	}
}

// TestCompletionZshFish checks the other two scripts with their shells'
// own syntax check, where those shells are installed.
func TestCompletionZshFish(t *testing.T) {
	for _, sh := range []struct{ name, check, flag string }{
		{"zsh", "-n", "--requirements"},
		{"fish", "--no-execute", "-l requirements"},
	} {
		t.Run(sh.name, func(t *testing.T) {
			var script, stderr bytes.Buffer
			if code := run([]string{"completion", sh.name}, &script, &stderr); code != exitOK {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			if !strings.Contains(script.String(), sh.flag) {
				t.Errorf("the %s script does not complete check's --requirements:\n%s", sh.name, script.String())
			}
			path, err := exec.LookPath(sh.name)
			if err != nil {
				t.Skipf("%s is not installed: its script's syntax is not checked", sh.name)
			}
			f := filepath.Join(t.TempDir(), "egress."+sh.name)
			os.WriteFile(f, script.Bytes(), 0o644)
			if out, err := exec.Command(path, sh.check, f).CombinedOutput(); err != nil {
				t.Errorf("%s %s: %v\n%s", sh.name, sh.check, err, out)
			}
		})
	}
}

// TestNoGoWording: what users read counts in words ("1 line") and names
// file types in words, not as Go prints them ("1 lines", "d---------").
func TestNoGoWording(t *testing.T) {
	dir := t.TempDir()
	t.Run("a directory given to lint is called a directory", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		run([]string{"lint", dir}, &stdout, &stderr)
		if got := stdout.String(); !strings.Contains(got, "not a regular file but a directory") || strings.Contains(got, "---") {
			t.Errorf("lint DIR prints %q", got)
		}
	})
	t.Run("learn counts one line as a line", func(t *testing.T) {
		log := filepath.Join(dir, "one.log")
		os.WriteFile(log, []byte(`{"level":"info","event":"allow","proto":"connect","host":"cdn.example","port":443,"ip":"93.184.216.11","reason":"default_allow","policy":"p.yaml","time":"2026-11-25T10:03:00Z"}`+"\n"), 0o644)
		var stdout, stderr bytes.Buffer
		if code := run([]string{"learn", log}, &stdout, &stderr); code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		if want := "egress learn: 1 line, 1 decision, 1 destination learned, 0 lines skipped\n"; !strings.Contains(stderr.String(), want) {
			t.Errorf("learn prints %q, want %q", stderr.String(), want)
		}
		if !strings.Contains(stdout.String(), "(1 decision)") {
			t.Errorf("the learned policy's comment:\n%s", stdout.String())
		}
	})
}
