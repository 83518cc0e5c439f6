//go:build linux

package firewall

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
)

const testTable = "egress_test"

// inNewNetns moves the calling goroutine's thread into a new network
// namespace for good (the thread dies with the test goroutine) and makes
// a connect filter there.
func inNewNetns(t *testing.T) *nftables.Conn {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	c, err := NewConn()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: testTable})
	ch := c.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	if err := AddRules(c, tbl, ch, &policy.ConnectFilter{RefuseRest: true}, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestLeaser(t *testing.T) *Leaser {
	t.Helper()
	f, err := OpenSocket()
	if err != nil {
		t.Fatal(err)
	}
	l := NewLeaser(f, testTable)
	t.Cleanup(func() { l.Close() })
	return l
}

// timeouts returns the timeout of each element of set, by key.
func timeouts(t *testing.T, c *nftables.Conn, set string) map[string]time.Duration {
	t.Helper()
	s, err := c.GetSetByName(&nftables.Table{Family: nftables.TableFamilyINet, Name: testTable}, set)
	if err != nil {
		t.Fatal(err)
	}
	es, err := c.GetSetElements(s)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Duration{}
	for _, e := range es {
		out[string(e.Key)] = e.Timeout
	}
	return out
}

// TestLeaser runs its steps in order on the goroutine whose thread is in
// the test's namespace (subtests would run on other threads, outside it).
func TestLeaser(t *testing.T) {
	c := inNewNetns(t)
	l := newTestLeaser(t)
	a := netip.MustParseAddr("192.0.2.1")
	key := string(append(a.AsSlice(), 1, 187, 0, 0)) // port 443

	step(t, "a lease is written with a little slack", func() {
		if err := l.Lease(a, []policy.PortRange{{Lo: 443, Hi: 443}}, false, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := timeouts(t, c, setLease4)[key]; got != 11*time.Second {
			t.Errorf("timeout %v, want 11s", got)
		}
	})
	step(t, "a longer lease renews the element, on kernels that keep timeouts too", func() {
		if err := l.Lease(a, []policy.PortRange{{Lo: 443, Hi: 443}}, false, time.Minute); err != nil {
			t.Fatal(err)
		}
		if got := timeouts(t, c, setLease4)[key]; got != 65*time.Second {
			t.Errorf("timeout %v, want 65s", got)
		}
	})
	step(t, "a lease the kernel has expired is written again", func() {
		b := netip.MustParseAddr("192.0.2.2")
		if err := l.Lease(b, []policy.PortRange{{Lo: 80, Hi: 80}}, false, time.Second); err != nil {
			t.Fatal(err)
		}
		bkey := append(b.AsSlice(), 0, 80, 0, 0)
		deadline := time.Now().Add(10 * time.Second)
		for timeouts(t, c, setLease4)[string(bkey)] != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the element never expired")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := l.Lease(b, []policy.PortRange{{Lo: 80, Hi: 80}}, false, time.Minute); err != nil {
			t.Fatalf("renewing an expired lease: %v", err)
		}
		if got := timeouts(t, c, setLease4)[string(bkey)]; got != 65*time.Second {
			t.Errorf("timeout %v, want 65s", got)
		}
	})
	step(t, "more than 64 ports lease every port", func() {
		v6 := netip.MustParseAddr("2001:db8::1")
		if err := l.Lease(v6, []policy.PortRange{{Lo: 8000, Hi: 8100}}, false, time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, ok := timeouts(t, c, setLeaseAll6)[string(v6.AsSlice())]; !ok {
			t.Errorf("no every-port lease for %s", v6)
		}
	})
	step(t, "a missing table is an error, not a silent success", func() {
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: testTable})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		err := l.Lease(netip.MustParseAddr("192.0.2.9"), nil, true, time.Minute)
		if !errors.Is(err, unix.ENOENT) {
			t.Errorf("Lease = %v, want ENOENT", err)
		}
	})
	step(t, "a closed socket is an error", func() {
		l.Close()
		if err := l.Lease(netip.MustParseAddr("192.0.2.10"), nil, true, time.Minute); err == nil {
			t.Error("Lease on a closed socket succeeded")
		}
	})
}

// step runs one step of a test that must stay on its goroutine, and stops
// the test if it failed: later steps build on it.
func step(t *testing.T, name string, f func()) {
	t.Helper()
	t.Logf("step: %s", name)
	f()
	if t.Failed() {
		t.FailNow()
	}
}
