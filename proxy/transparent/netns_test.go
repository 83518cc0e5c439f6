//go:build linux

package transparent

import (
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/sandbox"
)

// testNetns is a network namespace set up like egress run's sandbox
// (every TCP connection redirected to Listener), entered by one locked
// thread at a time. Sockets created inside keep belonging to it; the rest
// of the test process stays in the original namespace, where the origins
// listen and where the Server dials.
type testNetns struct {
	orig, ns int
	Listener net.Listener
}

// newTestNetns creates the namespace, or skips the test where that is not
// possible (not root).
func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("transparent listener tests need root to create a network namespace with nftables redirects")
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Skipf("open own network namespace: %v", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		unix.Close(orig)
		runtime.UnlockOSThread()
		t.Skipf("network namespaces unavailable: %v", err)
	}
	n := &testNetns{orig: orig}
	defer n.leave()
	n.ns, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	if err := sandbox.Configure(sandbox.Redirect{TCP: port, DNS: 53, Exempt: []uint16{port}}); err != nil {
		l.Close()
		t.Skipf("cannot configure the test namespace (nftables unavailable?): %v", err)
	}
	n.Listener = l
	t.Cleanup(func() {
		l.Close()
		unix.Close(n.ns)
		unix.Close(n.orig)
	})
	return n
}

// leave returns the locked thread to the original namespace and unlocks
// it; if that fails the thread stays locked and dies with its goroutine.
func (n *testNetns) leave() {
	if err := unix.Setns(n.orig, unix.CLONE_NEWNET); err != nil {
		return
	}
	runtime.UnlockOSThread()
}

// Do runs f with the calling goroutine's thread inside the namespace: the
// sockets f creates (net.Dial) live there.
func (n *testNetns) Do(f func()) {
	runtime.LockOSThread()
	if err := unix.Setns(n.ns, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		panic(err)
	}
	defer n.leave()
	f()
}

// Dial connects from inside the namespace.
func (n *testNetns) Dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	n.Do(func() { c, err = net.Dial("tcp", addr) })
	if err != nil {
		t.Fatalf("dial %s in the namespace: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
