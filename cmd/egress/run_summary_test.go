package main

import (
	"strings"
	"testing"
)

// The line about connections that ignored the proxy agrees with its count.
func TestRunSummaryRawLineAgrees(t *testing.T) {
	for _, c := range []struct {
		raw, total int
		want       string
	}{
		{1, 1, "1 of 1 connection ignored HTTP_PROXY/HTTPS_PROXY and was caught by the transparent path: behind a plain HTTP proxy it would not get out"},
		{2, 3, "2 of 3 connections ignored HTTP_PROXY/HTTPS_PROXY and were caught by the transparent path: behind a plain HTTP proxy they would not get out"},
	} {
		s := newRunSummary(nil)
		s.raw, s.total = c.raw, c.total
		var b strings.Builder
		s.write(&b)
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("raw %d of %d: summary\n%s\nlacks %q", c.raw, c.total, b.String(), c.want)
		}
	}
}
