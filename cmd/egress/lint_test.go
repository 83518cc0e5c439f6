package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// -update rewrites the golden files of lint and check. Registered here
// unless another test file of the package did already.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files under testdata/")
	}
}

func updatingGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// assertGolden compares got with testdata/PATH, or rewrites it with -update.
func assertGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	path = filepath.Join("testdata", path)
	if updatingGolden() {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// runCommand runs one egress subcommand and renders its exit code and
// output for a golden file.
func runCommand(cmd func([]string, io.Writer, io.Writer) int, args ...string) (int, []byte) {
	var stdout, stderr bytes.Buffer
	code := cmd(args, &stdout, &stderr)
	var b bytes.Buffer
	b.WriteString("exit " + strconv.Itoa(code) + "\n")
	b.WriteString("--- stdout\n")
	b.Write(stdout.Bytes())
	b.WriteString("--- stderr\n")
	b.Write(stderr.Bytes())
	return code, b.Bytes()
}

// goldenCase is one run of a subcommand, compared with
// testdata/DIR/NAME.golden (spaces in NAME become dashes).
type goldenCase struct {
	name string
	args []string
	code int
}

// runGoldenCases runs each case of cmd as a subtest, checks its exit
// code and compares its output with the golden file in dir.
func runGoldenCases(t *testing.T, cmd func([]string, io.Writer, io.Writer) int, dir string, cases []goldenCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := runCommand(cmd, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d\n%s", code, c.code, out)
			}
			assertGolden(t, dir+"/"+strings.ReplaceAll(c.name, " ", "-")+".golden", out)
		})
	}
}

func TestLintGolden(t *testing.T) {
	cases := []struct {
		file string
		code int
	}{
		{"valid", exitOK},
		{"warnings", exitOK},
		{"opens", exitOK},
		{"errors", exitDenied},
		{"syntax", exitDenied},
		{"two-documents", exitDenied},
		{"empty", exitDenied},
		{"tab", exitDenied},
		{"typos", exitDenied},
		{"include", exitDenied},
		{"requests", exitOK}, // http: and inject: warnings (issue 20)
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			code, out := runCommand(cmdLint, "testdata/lint/"+c.file+".yaml")
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			assertGolden(t, "lint/"+c.file+".golden", out)
		})
	}
}

func TestLintReportsEveryFile(t *testing.T) {
	code, out := runCommand(cmdLint, "testdata/lint/valid.yaml", "testdata/lint/errors.yaml", "testdata/lint/missing.yaml")
	if code != exitDenied {
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{"testdata/lint/valid.yaml: ok", "testdata/lint/errors.yaml:1:10: unsupported version 2", "testdata/lint/missing.yaml: no such file"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code, _ := runCommand(cmdLint); code != exitUsage {
		t.Errorf("no files: exit %d", code)
	}
}

// The ready policies lint clean: no errors, no warnings.
func TestLintConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../configs/*.yaml")
	if len(files) < 4 {
		t.Fatalf("configs: %v", files)
	}
	code, out := runCommand(cmdLint, files...)
	if code != exitOK || strings.Contains(string(out), ": warning:") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

// TestStrayConfig: lint and diff take the policy files themselves; a
// --config (as check and serve take) is answered with what to write.
func TestStrayConfig(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"lint", "--config", "a.yaml"}, "egress lint: no --config here: give the policy files themselves (egress lint FILE...)\n"},
		{[]string{"lint", "-config=a.yaml"}, "egress lint: no --config here"},
		{[]string{"diff", "a.yaml", "--config", "b.yaml"}, "egress diff: no --config here: give the policy files themselves (egress diff OLD NEW)\n"},
		{[]string{"diff", "a.yaml"}, "egress diff: two policy files, OLD and NEW (got 1)\n\nusage: egress diff"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tt.args, &stdout, &stderr); code != exitUsage || !strings.HasPrefix(stderr.String(), tt.want) {
			t.Errorf("egress %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tt.args, " "), code, stderr.String(), exitUsage, tt.want)
		}
	}
}
