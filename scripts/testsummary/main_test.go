package main

import (
	"os"
	"strings"
	"testing"
)

// TestSummarize: from a real `go test -json` run (testdata/run.jsonl: one
// test skipped, one failed in a subtest, one passed), the plain output of
// go test, then the skips and why.
func TestSummarize(t *testing.T) {
	f, err := os.Open("testdata/run.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out strings.Builder
	if err := summarize(f, &out); err != nil {
		t.Fatal(err)
	}
	want := `--- FAIL: TestB (0.00s)
    --- FAIL: TestB/sub (0.00s)
        x_test.go:7: hello
        x_test.go:7: bad
FAIL
FAIL	example.test/pkg	0.003s

scripts/test: 1 test skipped:
  python3 is not installed
      example.test/pkg TestA
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestSummarizeLeavesHelperProcessesOut(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestRunHelperProcess"}
{"Action":"output","Package":"p","Test":"TestRunHelperProcess","Output":"    run_test.go:41: helper process\n"}
{"Action":"skip","Package":"p","Test":"TestRunHelperProcess"}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}
`
	var out strings.Builder
	if err := summarize(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "ok  \tp\t0.1s\n" {
		t.Errorf("got %q", got)
	}
}
