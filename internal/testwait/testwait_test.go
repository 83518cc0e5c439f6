package testwait

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Run("returns nil once the condition holds", func(t *testing.T) {
		var n atomic.Int32
		if err := Poll(Timeout, func() error {
			if n.Add(1) < 3 {
				return errors.New("not yet")
			}
			return nil
		}); err != nil || n.Load() != 3 {
			t.Fatalf("Poll = %v after %d calls, want nil after 3", err, n.Load())
		}
	})
	t.Run("returns the last error at the deadline", func(t *testing.T) {
		began := time.Now()
		err := Poll(50*time.Millisecond, func() error { return errors.New("never") })
		if err == nil || err.Error() != "never" {
			t.Fatalf("Poll = %v, want never", err)
		}
		if el := time.Since(began); el < 50*time.Millisecond {
			t.Errorf("gave up after %v, before its 50ms", el)
		}
	})
}

func TestUntilBlockedIn(t *testing.T) {
	ch := make(chan struct{})
	go parkHere(ch)
	UntilBlockedIn(t, Timeout, "github.com/egress-proxy/egress/internal/testwait.parkHere")
	if ids := BlockedIn("github.com/egress-proxy/egress/internal/testwait.parkHere"); len(ids) != 1 || ids[0] <= 0 {
		t.Errorf("BlockedIn = %v, want the one goroutine's id", ids)
	}
	close(ch)
	if blockedIn("github.com/egress-proxy/egress/internal/testwait.neverCalled") != 0 {
		t.Error("blocked in a function nobody called")
	}
}

func TestUntilNoneIn(t *testing.T) {
	const fn = "github.com/egress-proxy/egress/internal/testwait.parkHere"
	ch := make(chan struct{})
	go parkHere(ch)
	UntilBlockedIn(t, Timeout, fn)
	if err := Poll(10*time.Millisecond, func() error {
		if len(inside(fn, false)) > 0 {
			return errors.New("inside")
		}
		return nil
	}); err == nil {
		t.Fatal("no goroutine counted inside parkHere while one is parked there")
	}
	close(ch)
	UntilNoneIn(t, Timeout, fn)
}

func parkHere(ch chan struct{}) { <-ch }
