// Package testwait is egress's one way for a test to wait on a condition:
// it polls a predicate until it holds or a deadline passes, then fails
// the test saying what it waited for. A fixed sleep before an assertion
// lets a test pass without testing (the thing may not have happened yet,
// or may have happened and undone itself); a wait on the condition
// neither passes early nor waits longer than it must.
//
// It is imported by tests only. It does not wait for time itself: a test
// whose subject is time (a timeout, a pacing) sleeps, and says so.
package testwait

import (
	"bytes"
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// Timeout is the deadline tests use unless they have a reason for
// another: long enough for a loaded CI machine, short enough to fail.
const Timeout = 5 * time.Second

// Until polls cond until it returns true, or fails tb after timeout
// with "waited TIMEOUT for WHAT".
func Until(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	UntilNil(tb, timeout, func() error {
		if cond() {
			return nil
		}
		return errNotYet(what)
	})
}

// UntilNil polls cond until it returns nil, or fails tb after timeout
// with the last error it returned.
func UntilNil(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	if err := Poll(timeout, cond); err != nil {
		tb.Fatalf("waited %v: %v", timeout, err)
	}
}

// Poll polls cond until it returns nil, backing off from 1 ms to 50 ms
// between calls, and returns nil, or cond's last error once timeout has
// passed. For a wait outside a test's goroutine, where Fatal must not be
// called.
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		err := cond()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// UntilBlockedIn waits until a goroutine is parked (not running) inside
// the function fn, named as in a stack trace
// ("github.com/egress-proxy/egress/proxy/proxyproto.(*Listener).Accept"):
// a test of "Close unblocks Accept" must know Accept was blocked when it
// closed, or it passes by calling Accept after Close.
func UntilBlockedIn(tb testing.TB, timeout time.Duration, fn string) {
	tb.Helper()
	UntilNBlockedIn(tb, timeout, 1, fn)
}

// UntilNBlockedIn waits until at least n goroutines are parked in fn (in
// a syscall, on a channel, a lock): n callers of a bounded resource, say.
func UntilNBlockedIn(tb testing.TB, timeout time.Duration, n int, fn string) {
	tb.Helper()
	UntilNil(tb, timeout, func() error {
		if k := blockedIn(fn); k < n {
			return fmt.Errorf("for %d goroutines blocked in %s (%d are)", n, fn, k)
		}
		return nil
	})
}

// UntilNoneIn waits until no goroutine is inside fn, parked or running:
// the work a test set going has ended, not only paused.
func UntilNoneIn(tb testing.TB, timeout time.Duration, fn string) {
	tb.Helper()
	UntilNil(tb, timeout, func() error {
		if k := len(inside(fn, false)); k > 0 {
			return fmt.Errorf("for no goroutine in %s (%d are)", fn, k)
		}
		return nil
	})
}

// BlockedIn returns the ids of the goroutines parked in fn: a test that
// waits for a new caller of fn tells it from those already there.
func BlockedIn(fn string) []int { return inside(fn, true) }

// blockedIn counts the goroutines parked in fn.
func blockedIn(fn string) int { return len(inside(fn, true)) }

// inside returns the ids of the goroutines in fn: only those parked, or
// all.
func inside(fn string, parked bool) []int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var ids []int
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		head, _, _ := bytes.Cut(g, []byte("\n"))
		if parked && (bytes.Contains(head, []byte("[running]")) || bytes.Contains(head, []byte("[runnable]"))) {
			continue
		}
		if !bytes.Contains(g, []byte("\n"+fn+"(")) {
			continue
		}
		// "goroutine 12 [chan receive]:"
		if f := bytes.Fields(head); len(f) > 1 {
			if id, err := strconv.Atoi(string(f[1])); err == nil {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

type errNotYet string

func (e errNotYet) Error() string { return "for " + string(e) }

// RunParallel runs m's tests as m.Run does, with the parallel ones
// (t.Parallel) up to twice GOMAXPROCS at once unless -test.parallel is
// given: for a package whose tests spend their time waiting on the
// processes and sockets they start (a client's timeout, a lease running
// out, a drain) rather than on a CPU, go test's default of GOMAXPROCS
// leaves the machine idle. Call it from TestMain.
func RunParallel(m *testing.M) int {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		flag.Set("test.parallel", strconv.Itoa(2*runtime.GOMAXPROCS(0)))
	}
	return m.Run()
}
