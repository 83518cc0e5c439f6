package reload

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// Issue 14: a policy that includes another is reloaded when the included
// file changes, in its own directory too, and a broken included file is
// refused at its FILE:LINE:COL.
func TestIncludedFileChangesReload(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(t.TempDir(), "shared") // another directory
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(shared, "base.yaml")
	write(t, base, "version: 1\ndefault: deny\n")
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, "version: 1\ninclude: ["+base+"]\nallow: [{host: a.example.com}]\n")
	w, ch, _ := start(t, path)
	if got := w.Current().Files(); len(got) != 2 || got[1] != base {
		t.Fatalf("Files() = %v", got)
	}
	if d := w.Current().Decide(policy.Request{Host: "b.example.com", Port: 443}); d.Allowed() {
		t.Fatalf("b.example.com allowed before the change")
	}

	write(t, base, "version: 1\ndefault: deny\nallow: [{host: b.example.com}]\n")
	waitOK(t, ch)
	if d := w.Current().Decide(policy.Request{Host: "b.example.com", Port: 443}); !d.Allowed() {
		t.Errorf("b.example.com refused after the included file allowed it: %s", d.Reason)
	}

	write(t, base, "version: 1\ndefault: deny\nallow: [{host: B.example.com}]\n")
	// A write in place may first be read half done (empty): wait for the
	// refusal of the whole file.
	for want := base + ":3:16: host"; ; {
		r := wait(t, ch)
		if r.err != nil && strings.Contains(r.err.Error(), want) {
			break
		}
		t.Logf("intermediate result: %v", r.err)
	}
	if d := w.Current().Decide(policy.Request{Host: "b.example.com", Port: 443}); !d.Allowed() {
		t.Errorf("the old policy was not kept")
	}
}
