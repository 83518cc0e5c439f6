package reload_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/reload"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// openLog opens a log file named name in a fresh directory.
func openLog(t *testing.T, name string) (*reload.LogFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	f, err := reload.OpenLogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return f, path
}

func TestLineBufferConcurrentWritersNeverTear(t *testing.T) {
	f, path := openLog(t, "egress.log")
	// A small buffer, so that it fills and is written many times over.
	b := f.Buffered(time.Millisecond, 4<<10)
	const writers, lines = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				// Lines of varied length, some larger than the buffer.
				pad := strings.Repeat("x", (i*37+w*11)%600)
				if i%500 == 0 {
					pad = strings.Repeat("y", 5<<10)
				}
				fmt.Fprintf(b, "{\"w\":%d,\"i\":%d,\"pad\":%q}\n", w, i, pad)
			}
		}()
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	seen := map[string]bool{}
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(readFile(t, path), "\n"), "\n") {
		var w, i int
		var pad string
		if _, err := fmt.Sscanf(line, "{\"w\":%d,\"i\":%d,\"pad\":%q}", &w, &i, &pad); err != nil || !strings.HasSuffix(line, "\"}") {
			t.Fatalf("torn or interleaved line %.80q: %v", line, err)
		}
		if i != next[w] {
			t.Fatalf("writer %d: line %d after %d: out of order or lost", w, i, next[w]-1)
		}
		next[w]++
		seen[line] = true
	}
	if len(seen) != writers*lines {
		t.Errorf("%d lines in the file, want %d", len(seen), writers*lines)
	}
}

func TestLineBufferFlushes(t *testing.T) {
	t.Run("not at once, then on the timer", func(t *testing.T) {
		f, path := openLog(t, "a.log")
		defer f.Close()
		slow := f.Buffered(time.Hour, 0)
		slow.Write([]byte("buffered\n"))
		if got := readFile(t, path); got != "" {
			t.Fatalf("written before a flush: %q", got)
		}
		slow.Close()
		fast := reload.NewLineBuffer(f, 50*time.Millisecond, 0)
		defer fast.Close()
		fast.Write([]byte("timed\n"))
		testwait.Until(t, testwait.Timeout, "the timer to flush the line", func() bool { return strings.Contains(readFile(t, path), "timed\n") })
		if got := readFile(t, path); got != "buffered\ntimed\n" {
			t.Errorf("file %q", got)
		}
	})
	t.Run("when full", func(t *testing.T) {
		f, path := openLog(t, "b.log")
		defer f.Close()
		b := f.Buffered(time.Hour, 100)
		defer b.Close()
		line := strings.Repeat("a", 39) + "\n"
		b.Write([]byte(line))
		b.Write([]byte(line))
		if got := readFile(t, path); got != "" {
			t.Fatalf("written before full: %q", got)
		}
		b.Write([]byte(line)) // does not fit: the first two go out
		if got := readFile(t, path); got != line+line {
			t.Errorf("after the buffer filled: %q, want the first two lines", got)
		}
	})
	t.Run("on reopen, into the old file", func(t *testing.T) {
		f, path := openLog(t, "c.log")
		b := f.Buffered(time.Hour, 0)
		b.Write([]byte("before rotation\n"))
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		if err := f.Reopen(); err != nil {
			t.Fatal(err)
		}
		b.Write([]byte("after rotation\n"))
		b.Close()
		f.Close()
		if got := readFile(t, path+".1"); got != "before rotation\n" {
			t.Errorf("rotated file %q", got)
		}
		if got := readFile(t, path); got != "after rotation\n" {
			t.Errorf("new file %q", got)
		}
	})
	t.Run("on close, and straight through after", func(t *testing.T) {
		f, path := openLog(t, "d.log")
		defer f.Close()
		b := f.Buffered(time.Hour, 0)
		b.Write([]byte("one\n"))
		b.Close()
		b.Write([]byte("two\n"))
		if got := readFile(t, path); got != "one\ntwo\n" {
			t.Errorf("file %q", got)
		}
	})
}
