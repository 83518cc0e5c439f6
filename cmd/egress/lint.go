package main

import (
	"fmt"
	"io"
)

// TODO: being written.
func cmdLint(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "egress lint: not implemented yet")
	return exitUsage
}
