package reload

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An included file that is not a regular file (a FIFO nobody writes, a
// directory, a device) or is far larger than any policy is refused at
// load, in bounded time and memory, instead of hanging or exhausting the
// process (a reload would otherwise stop for good).
func TestIncludeOfAnIrregularOrHugeFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	f.Close()
	for _, c := range []struct{ name, include, want string }{
		{"a FIFO", fifo, "not a regular file"},
		{"a directory", dir, "not a regular file"},
		{"a device", "/dev/zero", "not a regular file"},
		{"a 1 GiB file", huge, "larger than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, "policy.yaml")
			write(t, path, "version: 1\ndefault: deny\ninclude: ["+c.include+"]\n")
			done := make(chan error, 1)
			go func() { _, err := New(path); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path+":3:11") {
					t.Errorf("New = %v; want an error at %s:3:11 saying %q", err, path, c.want)
				}
			case <-time.After(10 * time.Second):
				// Unblock the reader so the goroutine ends.
				if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				t.Fatalf("New still loading after 10s")
			}
		})
	}
}

// The policy file itself is read as its includes are: a FIFO in its place
// is refused, not waited on.
func TestPolicyFileThatIsAFIFOIsRefused(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "policy.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("no FIFOs here: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := New(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("New = %v; want not a regular file", err)
		}
	case <-time.After(10 * time.Second):
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		t.Fatalf("New still reading the FIFO after 10s")
	}
}
