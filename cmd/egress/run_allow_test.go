//go:build linux

package main

import (
	"bytes"
	"testing"
)

// TestRunAllowErrorsNameTheFlag: a bad --allow target is reported as the
// flag and its value, with the target it meant, not at a line and column a
// flag does not have.
func TestRunAllowErrorsNameTheFlag(t *testing.T) {
	var stderr bytes.Buffer
	if pol, ok := loadRunPolicy("", []string{"api.example.com:443", "https://api.example.com", "a b"}, &stderr); ok || pol != nil {
		t.Fatalf("loadRunPolicy accepted a URL as --allow")
	}
	want := `egress run: --allow "https://api.example.com" is a URL: a target is HOST[:PORT]; write --allow api.example.com:443` + "\n" +
		`egress run: --allow "a b": `
	if got := stderr.String(); !bytes.HasPrefix([]byte(got), []byte(want)) {
		t.Errorf("stderr:\n%s\nwant it to start:\n%s", got, want)
	}
}
