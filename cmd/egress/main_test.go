package main

import (
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// TestMain runs the parallel tests of this package (t.Parallel) up to
// twice GOMAXPROCS at once unless -test.parallel says otherwise: they
// spend their time waiting on the egress processes they start (a lease
// running out, a client's timeout, a drain) rather than on a CPU, so
// go test's default of GOMAXPROCS leaves the machine idle.
func TestMain(m *testing.M) {
	flag.Parse()
	setParallel := false
	flag.Visit(func(f *flag.Flag) { setParallel = setParallel || f.Name == "test.parallel" })
	if !setParallel {
		flag.Set("test.parallel", strconv.Itoa(2*runtime.GOMAXPROCS(0)))
	}
	os.Exit(m.Run())
}
