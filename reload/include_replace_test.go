package reload

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// An included file in another directory replaced the way editors and
// deploy tools do it (a new file renamed over the old one), or through a
// symlink switched to another target, is reloaded like a write in place.
func TestIncludedFileReplacedIsReloaded(t *testing.T) {
	dir, shared := t.TempDir(), t.TempDir()
	base := filepath.Join(shared, "base.yaml")
	write(t, base, "version: 1\ndefault: deny\n")
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, "version: 1\ninclude: ["+base+"]\n")
	w, ch, _ := start(t, path)
	allowed := func(host string) bool {
		return w.Current().Decide(policy.Request{Host: host, Port: 443}).Allowed()
	}

	tmp := filepath.Join(shared, ".base.yaml.tmp")
	write(t, tmp, "version: 1\ndefault: deny\nallow: [{host: b.example.com}]\n")
	if err := os.Rename(tmp, base); err != nil {
		t.Fatal(err)
	}
	waitOK(t, ch)
	if !allowed("b.example.com") {
		t.Fatal("b.example.com refused after the included file was renamed over")
	}

	// Now base.yaml is a symlink, switched from one target to another.
	v1, v2 := filepath.Join(shared, "v1.yaml"), filepath.Join(shared, "v2.yaml")
	write(t, v1, "version: 1\ndefault: deny\nallow: [{host: c.example.com}]\n")
	write(t, v2, "version: 1\ndefault: deny\nallow: [{host: d.example.com}]\n")
	link := filepath.Join(shared, ".base.link")
	if err := os.Symlink(v1, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link, base); err != nil {
		t.Fatal(err)
	}
	waitOK(t, ch)
	if !allowed("c.example.com") {
		t.Fatal("c.example.com refused after base.yaml became a symlink to v1.yaml")
	}
	if err := os.Symlink(v2, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link, base); err != nil {
		t.Fatal(err)
	}
	waitOK(t, ch)
	if !allowed("d.example.com") || allowed("c.example.com") {
		t.Fatal("the symlink's switch to v2.yaml was not reloaded")
	}
}

// A policy edited to include a file not written yet, in a directory not
// watched yet, is refused; writing that file then loads it, without a
// SIGHUP or a second edit of the policy.
func TestIncludeOfAFileWrittenLaterIsLoadedWhenWritten(t *testing.T) {
	dir, shared := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, "version: 1\ndefault: deny\n")
	w, ch, _ := start(t, path)
	base := filepath.Join(shared, "base.yaml")
	write(t, path, "version: 1\ninclude: ["+base+"]\n")
	if r := wait(t, ch); r.err == nil {
		t.Fatal("a policy including a missing file was taken")
	}
	write(t, base, "version: 1\ndefault: deny\nallow: [{host: b.example.com}]\n")
	waitOK(t, ch)
	if !w.Current().Decide(policy.Request{Host: "b.example.com", Port: 443}).Allowed() {
		t.Fatal("b.example.com refused once the included file was written")
	}
}
