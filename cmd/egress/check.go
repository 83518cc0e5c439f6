package main

import (
	"fmt"
	"io"
)

// TODO: being written.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "egress check: not implemented yet")
	return exitUsage
}
