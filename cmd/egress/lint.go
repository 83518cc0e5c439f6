package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// cmdLint validates policy files: every error at once as FILE:LINE:COL:
// message (exit 1), warnings printed the same way with "warning:" (exit 0
// when there are only warnings).
func cmdLint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress lint [--json] FILE...")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Validates policy files. Prints every error as FILE:LINE:COL: message and exits 1;")
		fmt.Fprintln(stderr, "prints warnings (rules that never decide, common traps) and exits 0 when the files are valid.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "one JSON object per FILE: {file, ok, rules, errors, warnings}")
	if strayConfig(args, stderr, "lint", "FILE...") {
		return exitUsage
	}
	files, code, ok := parseInterspersed(fs, args) // lint FILE --json too
	if !ok {
		return code
	}
	if len(files) == 0 {
		fs.Usage()
		return exitUsage
	}
	if *asJSON {
		return lintJSON(files, stdout)
	}
	code = exitOK
	for _, file := range files {
		data, err := reload.ReadFile(file)
		if err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", file, errors.Unwrap(err))
			code = exitDenied
			continue
		}
		p, err := policy.LoadWith(file, data, reload.ReadFile)
		var diags policy.Errors
		switch {
		case errors.As(err, &diags):
			for _, d := range diags {
				fmt.Fprintln(stdout, d)
			}
			code = exitDenied
			continue
		case err != nil:
			fmt.Fprintf(stdout, "%s: %v\n", file, err)
			code = exitDenied
			continue
		}
		warns := p.Warnings()
		for _, w := range warns {
			fmt.Fprintf(stdout, "%s:%d:%d: warning: %s\n", w.File, w.Line, w.Column, w.Message)
		}
		fmt.Fprintf(stdout, "%s: ok (%s, %s)\n", file, count(len(p.Rules()), "rule"), count(len(warns), "warning"))
	}
	return code
}

// lintResult is one line of lint --json: one file's verdict.
type lintResult struct {
	File     string           `json:"file"`
	OK       bool             `json:"ok"`
	Rules    int              `json:"rules"`
	Errors   []lintDiagnostic `json:"errors"`
	Warnings []lintDiagnostic `json:"warnings"`
}

type lintDiagnostic struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Message string `json:"message"`
}

// lintJSON is lint --json: the same checks and exit code, one lintResult
// per file and line.
func lintJSON(files []string, stdout io.Writer) int {
	code := exitOK
	enc := json.NewEncoder(stdout)
	for _, file := range files {
		r := lintResult{File: file, Errors: []lintDiagnostic{}, Warnings: []lintDiagnostic{}}
		data, err := reload.ReadFile(file)
		var p *policy.Policy
		if err == nil {
			p, err = policy.LoadWith(file, data, reload.ReadFile)
		} else if u := errors.Unwrap(err); u != nil {
			err = u
		}
		var diags policy.Errors
		switch {
		case errors.As(err, &diags):
			for _, d := range diags {
				r.Errors = append(r.Errors, lintDiagnostic{d.File, d.Line, d.Column, d.Message})
			}
		case err != nil:
			r.Errors = append(r.Errors, lintDiagnostic{File: file, Message: err.Error()})
		default:
			r.OK, r.Rules = true, len(p.Rules())
			for _, w := range p.Warnings() {
				r.Warnings = append(r.Warnings, lintDiagnostic{w.File, w.Line, w.Column, w.Message})
			}
		}
		if !r.OK {
			code = exitDenied
		}
		enc.Encode(r)
	}
	return code
}

// count is "1 rule", "2 rules".
func count(n int, noun string) string {
	return fmt.Sprintf("%d %s%s", n, noun, plural(n))
}
