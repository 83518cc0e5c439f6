//go:build !unix

package main

import "os"

// forwardedSignals are the signals egress run passes on to CMD (egress run
// itself needs Linux; this keeps the command building elsewhere).
var forwardedSignals = []os.Signal{os.Interrupt}
