package testnet

import (
	"testing"
	"time"
)

// WaitFor polls cond every 10ms until it holds, failing tb with "timed
// out waiting for WHAT" after d: tests wait on a condition, never on a
// clock.
func WaitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}
