package reload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

const (
	denyAll  = "version: 1\ndefault: deny\n"
	allowAll = "version: 1\ndefault: allow\n"
	// broken has an unknown field on line 3, column 1.
	broken = "version: 1\ndefault: deny\nallwo: []\n"
)

type result struct {
	p   *policy.Policy
	err error
}

// syncBuffer is a log destination read while the watcher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start returns a started Watcher on path and the channel its OnReload
// feeds.
func start(t *testing.T, path string) (*Watcher, <-chan result, *syncBuffer) {
	t.Helper()
	w, err := New(path)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	logs := &syncBuffer{}
	w.Logger = zerolog.New(zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t)))
	w.Debounce = 20 * time.Millisecond
	ch := make(chan result, 16)
	w.OnReload = func(p *policy.Policy, err error) { ch <- result{p, err} }
	if err := w.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w, ch, logs
}

func wait(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no reload within 5s")
	}
	return result{}
}

// waitOK waits for a successful reload. A write in place may be read
// half done (truncated, then written) and refused before the final event
// reloads it; the test is about the final state.
func waitOK(t *testing.T, ch <-chan result) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case r := <-ch:
			if r.err == nil {
				return
			}
			t.Logf("intermediate refusal: %v", r.err)
		case <-deadline:
			t.Fatal("no successful reload within 5s")
		}
	}
}

// quiet asserts no reload attempt happens for a while.
func quiet(t *testing.T, ch <-chan result) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("unexpected reload attempt: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestNewRefusesAnInvalidFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write(t, path, broken)
	_, err := New(path)
	var diags policy.Errors
	if !errors.As(err, &diags) {
		t.Fatalf("New: got %v, want policy.Errors", err)
	}
	if !strings.Contains(err.Error(), path+":3:") {
		t.Errorf("error %q does not cite %s:3:COL", err, path)
	}
	if _, err := New(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New on a missing file: got %v, want ErrNotExist", err)
	}
}

func TestFileChangesReload(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, dir, path string)
	}{
		{"a write in place reloads", func(t *testing.T, dir, path string) {
			write(t, path, allowAll)
		}},
		{"an editor's rename over the file reloads", func(t *testing.T, dir, path string) {
			tmp := filepath.Join(dir, ".policy.yaml.swp")
			write(t, tmp, allowAll)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"removing and recreating the file reloads", func(t *testing.T, dir, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			write(t, path, allowAll)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "policy.yaml")
			write(t, path, denyAll)
			w, ch, _ := start(t, path)
			if got := w.Current().Default; got != policy.Deny {
				t.Fatalf("initial default = %v, want deny", got)
			}
			before := w.LoadedAt()
			tt.change(t, dir, path)
			waitOK(t, ch)
			if got := w.Current().Default; got != policy.Allow {
				t.Errorf("after reload default = %v, want allow", got)
			}
			if !w.LoadedAt().After(before) {
				t.Errorf("LoadedAt did not move: %v then %v", before, w.LoadedAt())
			}
		})
	}
}

// TestConfigMapSymlinkSwap reproduces how the kubelet updates a ConfigMap
// volume: policy.yaml -> ..data/policy.yaml, ..data -> ..TIMESTAMP; an
// update writes a new ..TIMESTAMP directory and renames a new symlink over
// ..data. The file policy.yaml itself never gets an event.
func TestConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..2026_11_25_10_00_00.000000001")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(v1, "policy.yaml"), denyAll)
	must(t, os.Symlink(filepath.Base(v1), filepath.Join(dir, "..data")))
	path := filepath.Join(dir, "policy.yaml")
	must(t, os.Symlink(filepath.Join("..data", "policy.yaml"), path))

	w, ch, _ := start(t, path)
	if got := w.Current().Default; got != policy.Deny {
		t.Fatalf("initial default = %v, want deny", got)
	}

	v2 := filepath.Join(dir, "..2026_11_25_10_05_00.000000002")
	must(t, os.Mkdir(v2, 0o755))
	write(t, filepath.Join(v2, "policy.yaml"), allowAll)
	must(t, os.Symlink(filepath.Base(v2), filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(v1))

	waitOK(t, ch)
	if got := w.Current().Default; got != policy.Allow {
		t.Errorf("after the swap default = %v, want allow", got)
	}
}

func TestInvalidFileIsRefusedAndTheOldPolicyKept(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, denyAll)
	w, ch, logs := start(t, path)
	old := w.Current()

	write(t, path, broken)
	r := wait(t, ch)
	var diags policy.Errors
	if !errors.As(r.err, &diags) {
		t.Fatalf("reload of a broken file: err = %v, want policy.Errors", r.err)
	}
	if r.p != old || w.Current() != old {
		t.Errorf("the old policy was not kept")
	}
	if want := path + ":3:1"; !strings.Contains(logs.String(), want) {
		t.Errorf("log does not cite %s:\n%s", want, logs.String())
	}
	if !strings.Contains(logs.String(), "policy reload refused") {
		t.Errorf("log does not say the reload was refused:\n%s", logs.String())
	}
	// The same broken bytes again (a touch, a chmod) are not refused twice.
	must(t, os.Chmod(path, 0o600))
	quiet(t, ch)

	// Fixing the file reloads it.
	write(t, path, allowAll)
	waitOK(t, ch)
	if w.Current().Default != policy.Allow {
		t.Errorf("fixed file: default %v; want allow", w.Current().Default)
	}
}

func TestUnchangedBytesDoNotReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, denyAll)
	w, ch, _ := start(t, path)
	old := w.Current()
	write(t, path, denyAll)                                  // same bytes
	write(t, filepath.Join(dir, "unrelated.txt"), "hello\n") // another file
	quiet(t, ch)
	if w.Current() != old {
		t.Error("policy replaced although the file did not change")
	}
}

func TestSIGHUPReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, denyAll)
	w, ch, logs := start(t, path)
	old := w.Current()

	// Start has registered for SIGHUP, so this reloads rather than
	// terminates the test binary. The file is as loaded: nothing changes,
	// and nothing is counted.
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	waitLog(t, logs, "policy unchanged since the last reload")
	quiet(t, ch)
	if w.Current() != old {
		t.Error("a SIGHUP with nothing changed replaced the policy")
	}

	// A changed file and a SIGHUP: the new policy, counted once.
	write(t, path, allowAll)
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	if r := wait(t, ch); r.err != nil || r.p.Default != policy.Allow {
		t.Fatalf("SIGHUP reload: %v, %v", r.p, r.err)
	}
	quiet(t, ch)

	// A SIGHUP with a broken file refuses it.
	write(t, path, broken)
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	for {
		r := wait(t, ch)
		if r.err != nil {
			break
		}
	}
	if w.Current().Default != policy.Allow {
		t.Error("a broken file replaced the policy")
	}
}

// TestOneEditIsOneReload: an edit that the file watch reloads, then a
// SIGHUP (an operator's habit), is one reload; the SIGHUP after a refused
// edit logs the refusal again without counting it again.
func TestOneEditIsOneReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, denyAll)
	w, ch, logs := start(t, path)

	write(t, path, allowAll)
	if r := wait(t, ch); r.err != nil {
		t.Fatalf("file reload: %v", r.err)
	}
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	waitLog(t, logs, "policy unchanged since the last reload")
	quiet(t, ch)
	if w.Current().Default != policy.Allow {
		t.Fatalf("default %v, want allow", w.Current().Default)
	}

	write(t, path, broken)
	if r := wait(t, ch); r.err == nil {
		t.Fatal("a broken file was not refused")
	}
	before := strings.Count(logs.String(), "policy reload refused")
	must(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
	testwait.Until(t, testwait.Timeout, "SIGHUP on the broken file to log a refusal", func() bool {
		return strings.Count(logs.String(), "policy reload refused") != before
	})
	quiet(t, ch)
}

// waitLog waits until the log holds text.
func waitLog(t *testing.T, logs *syncBuffer, text string) {
	t.Helper()
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if s := logs.String(); !strings.Contains(s, text) {
			return fmt.Errorf("no %q in the log:\n%s", text, s)
		}
		return nil
	})
}

func TestReloadIsAtomicForReaders(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	write(t, path, denyAll)
	w, err := New(path)
	must(t, err)
	w.Logger = zerolog.New(zerolog.NewTestWriter(t))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if w.Current() == nil {
					t.Error("Current returned nil during a reload")
					return
				}
			}
		})
	}
	for i := range 20 {
		text := denyAll
		if i%2 == 1 {
			text = allowAll
		}
		write(t, path, text)
		must(t, w.Reload())
	}
	close(stop)
	wg.Wait()
	if w.Current().Default != policy.Allow {
		t.Errorf("after 20 reloads default = %v, want allow (the last file)", w.Current().Default)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestStartOnlySettingsAreNamed: every setting read only at start is named
// in the warning when a reload changes it, and keeps being named (it still
// differs from what egress runs with) until a restart.
func TestStartOnlySettingsAreNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write(t, path, denyAll)
	w, err := New(path)
	must(t, err)
	logs := &syncBuffer{}
	w.Logger = zerolog.New(logs)
	write(t, path, denyAll+"listen:\n  http: 127.0.0.1:3999\ntimeouts:\n  header: 3s\n  drain: 5s\nlimits:\n  max_header_bytes: 8192\nlog:\n  level: debug\n")
	must(t, w.Reload())
	if w.Current().Listen.HTTP != "127.0.0.1:3999" {
		t.Fatalf("listen.http = %q after reload", w.Current().Listen.HTTP)
	}
	want := "listen, log, timeouts.header, limits.max_header_bytes: changed; restart egress for that to apply"
	if !strings.Contains(logs.String(), want) {
		t.Errorf("want %q in the log:\n%s", want, logs.String())
	}
	if strings.Contains(logs.String(), "timeouts.drain") {
		t.Errorf("timeouts.drain applies on reload, yet it is named:\n%s", logs.String())
	}
	logs.Reset()
	write(t, path, denyAll+"timeouts:\n  header: 3s\n")
	must(t, w.Reload())
	if !strings.Contains(logs.String(), "timeouts.header: changed; restart egress") {
		t.Errorf("a second reload forgot that timeouts.header still needs a restart:\n%s", logs.String())
	}
}

// lineHook calls fn with every log line written.
type lineHook func(line string)

func (h lineHook) Write(p []byte) (int, error) { h(string(p)); return len(p), nil }

// TestReloadLogsAfterTheNewPolicyTakesEffect: whoever reads the log line
// "policy reloaded" and then connects must meet the new policy, so the
// line is written after OnReload (which installs it in serve) returns.
func TestReloadLogsAfterTheNewPolicyTakesEffect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write(t, path, denyAll)
	w, err := New(path)
	if err != nil {
		t.Fatal(err)
	}
	var inForce atomic.Pointer[policy.Policy] // what the data paths read
	inForce.Store(w.Current())
	w.OnReload = func(p *policy.Policy, err error) {
		if err == nil {
			inForce.Store(p)
		}
	}
	var seen atomic.Int32
	w.Logger = zerolog.New(zerolog.MultiLevelWriter(lineHook(func(line string) {
		if !strings.Contains(line, "policy reloaded") {
			return
		}
		seen.Add(1)
		if got := inForce.Load(); got.Default != policy.Allow {
			t.Errorf("policy reloaded logged while default %s is in force, want the new default allow", got.Default)
		}
	}), zerolog.NewTestWriter(t)))
	write(t, path, allowAll)
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != 1 {
		t.Fatalf("policy reloaded logged %d times, want once", seen.Load())
	}
}
