package main

import (
	"errors"
	"flag"
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
