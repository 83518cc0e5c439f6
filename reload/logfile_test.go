package reload

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/egress-proxy/egress/internal/testwait"
)

func TestLogFileReopensOnSIGUSR1(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "egress.log")
	l, err := OpenLogFile(path)
	must(t, err)
	l.ReopenOnSignal(func(err error) { t.Errorf("reopen: %v", err) })

	if _, err := l.Write([]byte("before\n")); err != nil {
		t.Fatal(err)
	}
	// logrotate: move the file away, then signal.
	rotated := path + ".1"
	must(t, os.Rename(path, rotated))
	must(t, syscall.Kill(os.Getpid(), syscall.SIGUSR1))

	testwait.Until(t, testwait.Timeout, "the log file recreated after SIGUSR1", func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
	if _, err := l.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	must(t, l.Close())

	if got := read(t, rotated); got != "before\n" {
		t.Errorf("rotated file = %q, want %q", got, "before\n")
	}
	if got := read(t, path); got != "after\n" {
		t.Errorf("new file = %q, want %q", got, "after\n")
	}
	if _, err := l.Write([]byte("late\n")); err == nil {
		t.Error("Write after Close succeeded")
	}
}

func TestLogFileReopenFailureKeepsTheOldFile(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "logs")
	must(t, os.Mkdir(sub, 0o755))
	path := filepath.Join(sub, "egress.log")
	l, err := OpenLogFile(path)
	must(t, err)
	defer l.Close()
	// The directory goes away: reopen must fail and writes keep working.
	must(t, os.Rename(sub, filepath.Join(dir, "gone")))
	if err := l.Reopen(); err == nil {
		t.Fatal("Reopen into a missing directory succeeded")
	}
	if _, err := l.Write([]byte("still\n")); err != nil {
		t.Fatalf("Write after a failed reopen: %v", err)
	}
	if got := read(t, filepath.Join(dir, "gone", "egress.log")); got != "still\n" {
		t.Errorf("old file = %q, want %q", got, "still\n")
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	return string(b)
}
