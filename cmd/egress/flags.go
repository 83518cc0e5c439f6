package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// parseInterspersed parses fs's flags wherever they stand among args
// (egress check TARGET --config FILE) and returns the other arguments, in
// order. When parsing fails it returns ok false and the exit code: 0 for
// -h, else exitUsage (fs has printed why).
func parseInterspersed(fs *flag.FlagSet, args []string) (positional []string, code int, ok bool) {
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		if fs.NArg() == 0 {
			return positional, exitOK, true
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
}

// strayConfig reports whether args give --config to a command that takes
// policy files as its arguments (lint, diff), after saying so on stderr in
// place of the flag package's "flag provided but not defined: -config".
func strayConfig(args []string, stderr io.Writer, cmd, files string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "config" {
			fmt.Fprintf(stderr, "egress %s: no --config here: give the policy files themselves (egress %s %s)\n", cmd, cmd, files)
			return true
		}
	}
	return false
}
