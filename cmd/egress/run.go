package main

import (
	"fmt"
	"io"
)

// TODO: being written.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "egress run: not implemented yet")
	return exitUsage
}
