package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDiffGolden(t *testing.T) {
	runGoldenCases(t, cmdDiff, "diff", []goldenCase{
		{"wider", []string{"testdata/diff/old.yaml", "testdata/diff/new.yaml"}, exitDenied},
		{"narrower", []string{"testdata/diff/new.yaml", "testdata/diff/old.yaml", "--json"}, exitDenied},
		{"same", []string{"testdata/diff/old.yaml", "testdata/diff/old.yaml"}, exitOK},
		{"only refuses more", []string{"testdata/diff/old.yaml", "../../configs/no-network.yaml"}, exitOK},
		{"clients", []string{"testdata/diff/clients-old.yaml", "testdata/diff/clients-new.yaml"}, exitDenied},
		{"lifting the private guard", []string{"../../configs/handful-of-hosts.yaml", "testdata/diff/private.yaml"}, exitDenied},
		{"bad file", []string{"testdata/diff/old.yaml", "testdata/check/bad.yaml"}, exitUsage},
		{"missing file", []string{"testdata/diff/old.yaml", "testdata/diff/missing.yaml"}, exitUsage},
		{"one file", []string{"testdata/diff/old.yaml"}, exitUsage},
	})
}

func TestDiffJSON(t *testing.T) {
	_, out := runCommand(cmdDiff, "--json", "testdata/diff/old.yaml", "testdata/diff/new.yaml")
	var n int
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r diffResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if r.Change != "allows" && r.Change != "refuses" || r.Destination == "" || r.Port == 0 || r.New.Reason == "" || r.Old.Reason == "" {
			t.Errorf("incomplete line %+v", r)
		}
		n++
	}
	if n == 0 {
		t.Errorf("no JSON lines:\n%s", out)
	}
}
