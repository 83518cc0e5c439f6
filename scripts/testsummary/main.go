// Command testsummary reads `go test -json` on its standard input and
// prints what plain `go test` prints (each package's ok or FAIL line, the
// output of failed tests, build errors), then a summary of the tests that
// skipped and why: scripts/test pipes go test through it so that a test
// skipped for a missing tool (curl, python2.7, network namespaces) is
// seen. Helper processes (tests named ...HelperProcess, which skip unless
// a test starts them) are left out.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output
	Test       string
	Output     string
}

type test struct {
	pkg, name string
	lines     []string // output, without the === lines
	failed    bool
	children  []*test
}

func main() {
	if err := summarize(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "testsummary: %v\n", err)
		os.Exit(1)
	}
}

func summarize(in io.Reader, out io.Writer) error {
	tests := map[[2]string]*test{}
	get := func(pkg, name string) *test {
		k := [2]string{pkg, name}
		if t := tests[k]; t != nil {
			return t
		}
		t := &test{pkg: pkg, name: name}
		tests[k] = t
		if i := strings.LastIndexByte(name, '/'); i > 0 {
			p := tests[[2]string{pkg, name[:i]}]
			if p != nil {
				p.children = append(p.children, t)
			}
		}
		return t
	}
	skips := map[string][]string{} // why -> "pkg Test"
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (go vet's or the go command's own words).
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		switch {
		case e.Action == "build-output":
			io.WriteString(out, e.Output)
		case e.Test == "" && e.Action == "output":
			// Lines go test prints only with -v.
			if e.Output != "PASS\n" && e.Output != "testing: warning: no tests to run\n" {
				io.WriteString(out, e.Output)
			}
		case e.Test == "":
		case e.Action == "run":
			get(e.Package, e.Test)
		case e.Action == "output":
			if !strings.HasPrefix(e.Output, "=== ") {
				t := get(e.Package, e.Test)
				t.lines = append(t.lines, e.Output)
			}
		case e.Action == "fail":
			t := get(e.Package, e.Test)
			t.failed = true
			if !strings.Contains(e.Test, "/") {
				printFailed(out, t, 0)
			}
		case e.Action == "skip":
			t := get(e.Package, e.Test)
			if strings.HasSuffix(strings.SplitN(e.Test, "/", 2)[0], "HelperProcess") {
				continue
			}
			why := skipReason(t.lines)
			skips[why] = append(skips[why], e.Package+" "+e.Test)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	printSkips(out, skips)
	return nil
}

// printFailed prints a failed test as plain go test does: its --- FAIL
// line and log, then its failed subtests, each level indented four more.
func printFailed(out io.Writer, t *test, depth int) {
	indent := strings.Repeat("    ", depth)
	// test2json gives the --- FAIL line after the log; go test, before.
	lines := t.lines
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "--- ") {
			lines = append(append([]string{lines[i]}, lines[:i]...), lines[i+1:]...)
			break
		}
	}
	for _, l := range lines {
		io.WriteString(out, indent+l)
	}
	for _, c := range t.children {
		if c.failed {
			printFailed(out, c, depth+1)
		}
	}
}

// skipReason is what a skipped test said, without "file_test.go:NN: " and
// the --- SKIP line.
func skipReason(lines []string) string {
	var why []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		if i := strings.Index(l, ": "); i > 0 && strings.Contains(l[:i], "_test.go:") {
			l = l[i+2:]
		}
		why = append(why, l)
	}
	if len(why) == 0 {
		return "(no reason given)"
	}
	return why[len(why)-1]
}

func printSkips(out io.Writer, skips map[string][]string) {
	if len(skips) == 0 {
		return
	}
	reasons := make([]string, 0, len(skips))
	n := 0
	for why, ts := range skips {
		reasons = append(reasons, why)
		n += len(ts)
	}
	sort.Strings(reasons)
	s := "s"
	if n == 1 {
		s = ""
	}
	fmt.Fprintf(out, "\nscripts/test: %d test%s skipped:\n", n, s)
	for _, why := range reasons {
		ts := skips[why]
		sort.Strings(ts)
		fmt.Fprintf(out, "  %s\n", why)
		for i, t := range ts {
			if i == 5 {
				fmt.Fprintf(out, "      and %d more\n", len(ts)-5)
				break
			}
			fmt.Fprintf(out, "      %s\n", t)
		}
	}
}
