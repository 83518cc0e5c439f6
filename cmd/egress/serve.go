package main

import (
	"fmt"
	"io"
)

// TODO: being written.
func cmdServe(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "egress serve: not implemented yet")
	return exitUsage
}
