//go:build linux

package firewall

import (
	"errors"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/internal/testnet"
)

// TestHold holds SYNs in a namespace of its own and answers them each
// way: the connect() in the namespace ends as the verdict says.
func TestHold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread() // the thread dies with the test goroutine
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	c, err := NewConn()
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: testTable})
	AddHold(c, tbl, 7, nil, nil)
	if err := c.Flush(); err != nil {
		t.Skipf("the NFQUEUE target is not available here: %v", err)
	}
	f, err := nfqueue.Open(7)
	if err != nil {
		t.Fatal(err)
	}
	q := nfqueue.New(f, 7)
	defer q.Close()
	dst := testnet.ServeTCP(t, func(net.Conn) {}).AddrPort()

	verdicts := make(chan nfqueue.Verdict, 1)
	held := make(chan nfqueue.Packet, 10)
	go q.Read(func(p nfqueue.Packet) {
		held <- p
		go func() {
			v := <-verdicts
			if err := q.Verdict(p.ID, v); err != nil {
				t.Error(err)
			}
		}()
	})
	for _, tt := range []struct {
		name string
		v    nfqueue.Verdict
		want error // nil: connected
	}{
		{"an accepted SYN connects, once accepted", nfqueue.Verdict{Accept: true}, nil},
		{"a SYN accepted with MarkRefused is refused", nfqueue.Verdict{Accept: true, Mark: MarkRefused}, syscall.ECONNREFUSED},
		{"a SYN accepted with MarkHostUnreach is unreachable", nfqueue.Verdict{Accept: true, Mark: MarkHostUnreach}, syscall.EHOSTUNREACH},
		{"a SYN accepted with MarkNetUnreach has no route", nfqueue.Verdict{Accept: true, Mark: MarkNetUnreach}, syscall.ENETUNREACH},
		{"a dropped SYN leaves the client to its own timeout", nfqueue.Verdict{}, os.ErrDeadlineExceeded},
	} {
		t.Logf("step: %s", tt.name)
		const hold = 200 * time.Millisecond
		go func() {
			p := <-held
			if p.Dst != dst || !p.Src.Addr().IsLoopback() {
				t.Errorf("held %v -> %v, want a connection to %v", p.Src, p.Dst, dst)
			}
			time.Sleep(hold) // the verdict comes late, as after a dial
			verdicts <- tt.v
		}()
		start := time.Now()
		conn, err := net.DialTimeout("tcp", dst.String(), time.Second)
		took := time.Since(start)
		if conn != nil {
			conn.Close()
		}
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		if !errors.Is(err, tt.want) && !(tt.want == nil && err == nil) && !(tt.want == os.ErrDeadlineExceeded && timedOut) {
			t.Errorf("%s: connect: %v, want %v", tt.name, err, tt.want)
		}
		if took < hold {
			t.Errorf("%s: connect ended after %v, before the verdict", tt.name, took)
		}
	}
}

// TestHostHold: a Host with Hold holds its users' SYNs (here the test's
// own uid) in HostQueue, in a namespace of the test's own.
func TestHostHold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread() // the thread dies with the test goroutine
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	lo, _ := netlink.LinkByName("lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	h, err := InstallHost(HostConfig{UIDs: []uint32{uint32(os.Geteuid())}, Hold: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Queue() == nil {
		t.Skipf("the NFQUEUE target is not available here: %s", h.HoldError)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan nfqueue.Packet, 10)
	go h.Queue().Read(func(p nfqueue.Packet) {
		held <- p
		h.Queue().Verdict(p.ID, nfqueue.Verdict{Accept: true, Mark: MarkRefused})
	})
	_, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a listening port whose SYN egress answered as refused: %v, want ECONNREFUSED", err)
	}
	select {
	case p := <-held:
		if p.Dst.String() != ln.Addr().String() {
			t.Errorf("held a SYN to %v", p.Dst)
		}
	default:
		t.Error("the SYN was not held")
	}
}
