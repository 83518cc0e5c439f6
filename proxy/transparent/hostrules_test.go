//go:build linux

package transparent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
)

// hostRules is the nftables block of docs/transparent.md, for user uid.
func hostRules(t *testing.T, uid int) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/transparent.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```nft\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/transparent.md has no ```nft block")
	}
	return strings.ReplaceAll(string(m[1]), `"plugin"`, fmt.Sprint(uid))
}

// hostNetns is a namespace shaped like a host: lo, and an interface (one
// end of a veth pair) with default routes (IPv4 and IPv6), so that a connection to any address
// reaches netfilter as it would on a real host.
func hostNetns(t *testing.T) *testNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("host rule tests need root (network namespace, nftables, another user)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("the nft command (Debian package nftables) is needed to load the documented rules")
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Skip(err)
	}
	n := &testNetns{orig: orig}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		unix.Close(orig)
		runtime.UnlockOSThread()
		t.Skipf("network namespaces unavailable: %v", err)
	}
	defer n.leave()
	if n.ns, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(n.ns); unix.Close(n.orig) })
	lo, _ := netlink.LinkByName("lo")
	must(t, netlink.LinkSetUp(lo))
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0peer"}))
	eth, err := netlink.LinkByName("eth0")
	must(t, err)
	peer, err := netlink.LinkByName("eth0peer")
	must(t, err)
	must(t, netlink.LinkSetUp(peer))
	must(t, netlink.LinkSetUp(eth))
	a4, _ := netlink.ParseAddr("10.0.0.2/24")
	must(t, netlink.AddrAdd(eth, a4))
	a6, _ := netlink.ParseAddr("fd00::2/64")
	a6.Flags = unix.IFA_F_NODAD
	must(t, netlink.AddrAdd(eth, a6))
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("10.0.0.1")}))
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP("fd00::1")}))
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestHostRulesFromDocs(t *testing.T) {
	const uid = 65534
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("needs /usr/bin/python3 runnable by an unprivileged user")
	}
	ns := hostNetns(t)
	rules := hostRules(t, uid)

	// Load the documented rules inside the namespace (nft inherits the
	// locked thread's namespace), and egress's listeners at the
	// documented addresses.
	var tl net.Listener
	var dnsConn net.PacketConn
	var loadErr error
	var out []byte
	ns.Do(func() {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		out, loadErr = cmd.CombinedOutput()
		if loadErr != nil {
			return
		}
		if tl, loadErr = net.Listen("tcp", "127.0.0.1:3129"); loadErr != nil {
			return
		}
		dnsConn, loadErr = net.ListenPacket("udp", "127.0.0.1:5353")
	})
	if loadErr != nil {
		t.Fatalf("load the documented rules: %v\n%s", loadErr, out)
	}
	defer tl.Close()

	// A DNS server on egress's DNS port answers everything with 127.0.0.1,
	// and says which name it was asked.
	dsrv := &dns.Server{PacketConn: dnsConn, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 127.0.0.1")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go dsrv.ActivateAndServe()
	defer dsrv.Shutdown()

	// egress's transparent listener allows the greeter only.
	greet := greeter(t)
	pol, err := policy.Builtin().WithAllows("test", []string{greet.String()})
	must(t, err)
	cur := func() *policy.Policy { return pol }
	rec, sink := newRecorder(t)
	srv := &Server{Policy: cur, Dialer: &dialer.Dialer{Policy: cur, Timeout: 2 * time.Second}, PeekTimeout: 100 * time.Millisecond,
		Events: sink, Logger: zerolog.New(zerolog.NewTestWriter(t))}
	go srv.Serve(tl)
	defer srv.Shutdown(context.Background())

	script := fmt.Sprintf(`
import socket, sys, time
def tcp(host, port):
    t = time.time()
    try:
        s = socket.create_connection((host, port), timeout=5)
        data = s.recv(40)
        return "ok " + data.decode().strip() if data else "closed"
    except Exception as e:
        return "%%s %%.1fs" %% (type(e).__name__, time.time() - t)
def udp(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.sendto(b"x", (host, port))
        return "sent " + repr(s.recv(10))
    except Exception as e:
        return type(e).__name__
def dns(name):
    try:
        return socket.gethostbyname(name)
    except Exception as e:
        return type(e).__name__
checks = {
    "loopback": lambda: tcp("127.0.0.1", %d),
    "denied": lambda: tcp("10.9.9.9", 5432),
    "ipv6": lambda: tcp("2001:db8::1", 443),
    "quic": lambda: udp("10.9.9.9", 443),
    "dns": lambda: dns("anything.test"),
}
for name in sys.argv[1:]:
    print(name + ":", checks[name]())
`, greet.Port)
	// The client resolves through a nameserver that is not egress's (as on
	// a host): the rules must carry its query to egress's DNS port.
	resolv := t.TempDir() + "/resolv.conf"
	os.WriteFile(resolv, []byte("nameserver 10.0.0.53\n"), 0o644)
	os.Chmod(resolv[:strings.LastIndexByte(resolv, '/')], 0o755)

	runAs := func(uid uint32, checks ...string) string {
		var out []byte
		ns.Do(func() {
			// A mount namespace of its own, so that /etc/resolv.conf can
			// name a nameserver beyond the host's.
			shell := "mount --bind " + resolv + " /etc/resolv.conf && exec setpriv --reuid=" + fmt.Sprint(uid) +
				" --regid=" + fmt.Sprint(uid) + " --clear-groups " + py + " -c \"$0\" \"$@\""
			cmd := exec.Command("unshare", append([]string{"--mount", "sh", "-c", shell, script}, checks...)...)
			cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
			out, _ = cmd.CombinedOutput()
		})
		return string(out)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv and unshare (util-linux)")
	}

	got := runAs(uid, "loopback", "denied", "ipv6", "quic", "dns")
	t.Logf("as uid %d:\n%s", uid, got)
	checks := []struct{ prefix, want string }{
		{"loopback:", "ok 220 greeter ready"}, // redirected to egress, which dials the allowed greeter
		{"denied:", "ConnectionResetError"},   // redirected to egress, which denies 10.9.9.9:5432
		{"ipv6:", "PermissionError"},          // refused at once
		{"quic:", "PermissionError"},          // refused at once
		{"dns:", "127.0.0.1"},                 // 10.0.0.53:53 answered by egress's DNS port
	}
	for _, c := range checks {
		if !strings.Contains(got, c.prefix+" "+c.want) {
			t.Errorf("as the plugin user, %s want %q", c.prefix, c.want)
		}
	}
	// egress saw the denied connection with its original destination.
	deadline := time.After(5 * time.Second)
	sawDenied := false
	for !sawDenied {
		select {
		case e := <-rec.ch:
			if e.Decision.Denied() && e.Decision.IP == netip.MustParseAddr("10.9.9.9") && e.Decision.Port == 5432 {
				sawDenied = true
			}
		case <-deadline:
			t.Fatal("egress recorded no denial for 10.9.9.9:5432")
		}
	}

	// Another user (root here) is not redirected: nothing listens on the
	// greeter's port inside the namespace, and 10.9.9.9 is unreachable.
	other := runAs(0, "loopback")
	t.Logf("as root:\n%s", other)
	if !strings.Contains(other, "loopback: ConnectionRefusedError") {
		t.Errorf("another user's loopback connection was not left alone")
	}
}
