package main

import "testing"

// egress diff compares request rules (issue 20): a tunnel becoming an
// intercepted host refuses the requests no request rule allows, and the
// other way round allows them.
func TestDiffRequestsGolden(t *testing.T) {
	runGoldenCases(t, cmdDiff, "diff", []goldenCase{
		{"requests narrower", []string{"testdata/diff/requests-old.yaml", "testdata/diff/requests-new.yaml"}, exitOK},
		{"requests wider", []string{"testdata/diff/requests-new.yaml", "testdata/diff/requests-old.yaml"}, exitDenied},
		{"requests json", []string{"--json", "testdata/diff/requests-new.yaml", "testdata/diff/requests-old.yaml"}, exitDenied},
	})
}
