package main

import (
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
		fmt.Fprintln(stderr, "usage: egress lint FILE...")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Validates policy files. Prints every error as FILE:LINE:COL: message and exits 1;")
		fmt.Fprintln(stderr, "prints warnings (rules that never decide, common traps) and exits 0 when the files are valid.")
	}
	if strayConfig(args, stderr, "lint", "FILE...") {
		return exitUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	code := exitOK
	for _, file := range fs.Args() {
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

// count is "1 rule", "2 rules".
func count(n int, noun string) string {
	return fmt.Sprintf("%d %s%s", n, noun, plural(n))
}
