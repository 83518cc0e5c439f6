package main

import (
	"os"
	"testing"

	"github.com/egress-proxy/egress/internal/testwait"
)

// TestMain runs more parallel tests at once than CPUs: they wait on the
// egress processes they start.
func TestMain(m *testing.M) { os.Exit(testwait.RunParallel(m)) }
