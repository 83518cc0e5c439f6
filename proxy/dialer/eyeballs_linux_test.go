//go:build linux

package dialer_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall/nftexpr"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// netnsEnv marks the child process that runs inside a network namespace
// of its own.
const netnsEnv = "EGRESS_DIALER_TEST_NETNS"

// inNetns runs the test named run again as a child process in a new
// network namespace (every thread of it: no dial can happen from the
// host's), and reports its result. It returns true in the child, which
// goes on with the test.
func inNetns(t *testing.T) bool {
	if os.Getenv(netnsEnv) == "1" {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if os.Geteuid() != 0 {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	t.Logf("in a network namespace of its own:\n%s", out)
	switch {
	case err != nil:
		t.Fatalf("the test failed in its namespace: %v", err)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skip("skipped in its namespace (see the log)")
	}
	return false
}

// dropTCP makes the namespace drop TCP packets to each address's port
// (nftables, output hook): a destination that never answers a SYN, as a
// firewalled host does.
func dropTCP(t *testing.T, port uint16, addrs ...netip.Addr) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Skipf("nftables: %v", err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "dialer_test"})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "drop", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, a := range addrs {
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: nftexpr.Concat(
			nftexpr.DstIn(netip.PrefixFrom(a, a.BitLen())), nftexpr.L4(unix.IPPROTO_TCP), nftexpr.DPort(port),
			nftexpr.Verdict(expr.VerdictDrop))})
	}
	if err := c.Flush(); err != nil {
		t.Skipf("nftables rules: %v", err)
	}
}

// TestHappyEyeballs: addresses that drop packets must not keep the dialer
// from the one that answers (RFC 8305). Runs in a network namespace of its
// own, where loopback addresses can be made to drop packets.
func TestHappyEyeballs(t *testing.T) {
	if !inNetns(t) {
		return
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	// The origin: 127.0.0.1 and ::1 on one port; each connection is told
	// which address it reached.
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	port := uint16(l4.Addr().(*net.TCPAddr).Port)
	ls := []net.Listener{l4}
	if l6, err := net.Listen("tcp6", "[::1]:"+strconv.Itoa(int(port))); err == nil {
		defer l6.Close()
		ls = append(ls, l6)
	}
	for _, l := range ls {
		go acceptAndClose(l)
	}
	// A listener on an address the policy refuses: it must never be
	// reached. The dialer's connection, if any, would be accepted before
	// the probe this test makes afterwards, and carry no "probe".
	refused, err := net.Listen("tcp4", "127.0.0.6:"+strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer refused.Close()
	firstAtRefused := make(chan string, 1)
	go func() {
		c, err := refused.Accept()
		if err != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		firstAtRefused <- line
	}()

	a := netip.MustParseAddr
	dropTCP(t, port, a("127.0.0.2"), a("127.0.0.3"), a("127.0.0.4"), a("127.0.0.5"))
	pol := load(t, "version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.0/30\n  - cidr: 127.0.0.4/31\n  - cidr: \"::1/128\"\n")
	res := mapResolver{
		"silent-first.test": {a("127.0.0.2"), a("127.0.0.1")},
		"v4-silent.test":    {a("127.0.0.2"), a("127.0.0.3"), a("127.0.0.4"), a("127.0.0.5"), a("::1")},
		"all-silent.test":   {a("127.0.0.2"), a("127.0.0.3")},
		"refused.test":      {a("127.0.0.6"), a("127.0.0.2"), a("127.0.0.1")},
	}
	dial := func(name string, timeout time.Duration) (net.Conn, time.Duration, error) {
		d := &dialer.Dialer{Policy: pol, Resolver: res, Timeout: timeout}
		start := time.Now()
		c, _, err := d.Dial(context.Background(), "tcp", policy.Request{Host: name, Port: port})
		return c, time.Since(start), err
	}

	t.Run("an address that drops packets does not hold up the next", func(t *testing.T) {
		c, took, err := dial("silent-first.test", 5*time.Second)
		if err != nil {
			t.Fatalf("Dial after %s: %v; want a connection to 127.0.0.1", took, err)
		}
		defer c.Close()
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != a("127.0.0.1") || took > 2*time.Second {
			t.Fatalf("connected to %s after %s; want 127.0.0.1 after about %s", got, took, dialer.ConnectionAttemptDelay)
		}
	})
	t.Run("families are interleaved", func(t *testing.T) {
		if len(ls) < 2 {
			t.Skip("no IPv6 loopback in the namespace")
		}
		c, took, err := dial("v4-silent.test", 5*time.Second)
		if err != nil {
			t.Fatalf("Dial after %s: %v", took, err)
		}
		defer c.Close()
		// In the resolver's order ::1 is fifth (1s of attempt delays);
		// interleaved, it is second.
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != a("::1") || took >= 4*dialer.ConnectionAttemptDelay {
			t.Fatalf("connected to %s after %s; want ::1, tried second", got, took)
		}
	})
	t.Run("the whole dial is bounded by its timeout and names every address", func(t *testing.T) {
		_, took, err := dial("all-silent.test", 600*time.Millisecond)
		if !errors.Is(err, os.ErrDeadlineExceeded) || took > 2*time.Second {
			t.Fatalf("Dial after %s: %v; want a timeout after 600ms", took, err)
		}
		for _, want := range []string{"127.0.0.2 timed out", "127.0.0.3 timed out"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
	t.Run("an address the policy refuses is never dialled", func(t *testing.T) {
		c, took, err := dial("refused.test", 5*time.Second)
		if err != nil {
			t.Fatalf("Dial after %s: %v", took, err)
		}
		c.Close()
		probe, err := net.Dial("tcp4", refused.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		probe.Write([]byte("probe\n"))
		defer probe.Close()
		if first := <-firstAtRefused; first != "probe\n" {
			t.Fatalf("the refused address was dialled (first connection sent %q)", first)
		}
	})
}
