package main

// Measures of egress at scale (issue 13): memory per idle tunnel on each
// tunnel path (CONNECT, WebSocket upgrade, transparent), and how memory
// and setup latency grow with the number of open tunnels and with the
// number of policy rules.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/transparent"
)

// scalePoint is one step of a growing number of idle tunnels.
type scalePoint struct {
	open     int
	rss      int64
	p50, p99 time.Duration // CONNECT setup latency with open tunnels idle
}

// rulesPoint is egress started with a policy of rules rules.
type rulesPoint struct {
	rules      int
	rss        int64 // at start, after one tunnel
	perTunnel  float64
	p50, p99   time.Duration
	tunnelsSec float64
}

// holdScale opens idle tunnels through a fresh proxy with open, step by
// step to n, recording RSS at each step and, with setups > 0, CONNECT
// setup latencies to idle while they are open. It closes them all and
// returns the RSS before the first and the points.
func holdScale(name string, pid int, steps []int, setups int, open func() net.Conn, setup func(), origin *idleServer) (int64, []scalePoint) {
	c0 := open() // first use: lazily built state is not a tunnel's cost
	c0.Close()
	origin.waitOpen(0, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	before := rss(pid)
	var conns []net.Conn
	var pts []scalePoint
	for i, n := range steps {
		for len(conns) < n {
			conns = append(conns, open())
		}
		origin.waitOpen(int64(n), 20*time.Second)
		settle := 500 * time.Millisecond
		if i == len(steps)-1 {
			settle = 2 * time.Second // let allocators and the Go scavenger settle
		}
		time.Sleep(settle)
		pt := scalePoint{open: n, rss: rss(pid)}
		if setups > 0 && setup != nil {
			ds := latencies(setups, setup)
			pt.p50, pt.p99 = pct(ds, 50), pct(ds, 99)
		}
		pts = append(pts, pt)
		progress("scale      %-18s %5d tunnels open: RSS %d KiB (%.2f KiB per tunnel), setup p50 %.0f µs p99 %.0f µs",
			name, n, pt.rss>>10, float64(pt.rss-before)/float64(n)/1024, us(pt.p50), us(pt.p99))
	}
	for _, c := range conns {
		c.Close()
	}
	origin.waitOpen(0, 20*time.Second)
	return before, pts
}

// scaleSteps are the numbers of open tunnels measured up to n.
func scaleSteps(n int) []int {
	var s []int
	for _, v := range []int{100, 1000, 5000} {
		if v < n {
			s = append(s, v)
		}
	}
	return append(s, n)
}

// upgradeServer answers every request with 101 Switching Protocols and
// then holds the connection, idle, as a WebSocket server would; it counts
// those open.
func newUpgradeServer() *idleServer {
	return newHoldingServer(func(c net.Conn, br *bufio.Reader) bool {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return false
			}
			if line == "\r\n" {
				break
			}
		}
		_, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		return err == nil
	})
}

// upgrade opens a WebSocket-style upgraded connection to origin through
// the proxy, reading the 101 byte by byte so nothing is left buffered.
func upgrade(proxy, origin string) net.Conn {
	c := mustDial(proxy)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "GET http://"+origin+"/chat HTTP/1.1\r\nHost: "+origin+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	check(err)
	head := readHead(c, proxy, origin)
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		fail("upgrade to %s via %s: %q", origin, proxy, head)
	}
	c.SetDeadline(time.Time{})
	return c
}

func readHead(c net.Conn, proxy, target string) []byte {
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(b); err != nil {
			fail("%s via %s: %v after %q", target, proxy, err, head)
		}
		head = append(head, b[0])
	}
	return head
}

// startTransparent starts this program as the transparent child (see
// serveTransparent), forwarding every connection to origin.
func startTransparent(dir, origin string) *subject {
	self, err := os.Executable()
	check(err)
	addr := freeAddr()
	s := &subject{name: "egress transparent", kind: "transparent", addr: addr, log: filepath.Join(dir, "transparent.log")}
	s.start(exec.Command(self, "-serve-transparent", addr, "-transparent-origin", origin, "-transparent-log", s.log), filepath.Join(dir, "transparent.stderr"))
	return s
}

// transparentConn opens a connection through the transparent child and
// returns once it reached the origin. Its first byte, 0x00, is neither a
// TLS record nor HTTP, so the decision is made at once, on the address,
// as for most binary protocols whose client speaks first (a silent client
// would cost every setup timeouts.peek); clients open one after another,
// as through a proxy, not thousands at once.
func transparentConn(addr string, origin *idleServer) net.Conn {
	was := origin.open.Load()
	c := mustDial(addr)
	_, err := c.Write([]byte{0})
	check(err)
	deadline := time.Now().Add(10 * time.Second)
	for origin.open.Load() <= was {
		if time.Now().After(deadline) {
			fail("transparent connection via %s did not reach the origin", addr)
		}
		time.Sleep(20 * time.Microsecond)
	}
	return c
}

// serveTransparent is the child process of the transparent measure:
// egress's transparent.Server (proxy/transparent) with a loopback policy
// and a log of every connection, as egress serve would run it, except
// that the original destination is given rather than read with
// SO_ORIGINAL_DST (a redirect needs a network namespace and nftables;
// the path from there on is the same).
func serveTransparent(listen, origin, logFile string) {
	pol, err := policy.Load("bench.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\nlimits:\n  max_tunnels: 100000\n"))
	check(err)
	dst, err := netip.ParseAddrPort(origin)
	check(err)
	f, err := os.Create(logFile)
	check(err)
	cur := func() *policy.Policy { return pol }
	srv := &transparent.Server{
		Policy:      cur,
		Dialer:      &dialer.Dialer{Policy: cur},
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return dst, nil },
		Events:      &eventlog.Sink{Logger: zerolog.New(f).With().Timestamp().Logger(), LogAllowed: true},
	}
	l, err := net.Listen("tcp", listen)
	check(err)
	check(srv.Serve(l))
}

// rulesConfig is egress's benchmark policy with n more rules: exact
// names, wildcards and CIDRs, none of which matches 127.0.0.1.
func rulesConfig(n int, logAllowed bool, logFile string) string {
	var b strings.Builder
	b.WriteString("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\n")
	for i := 0; i < n; i++ {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, "  - host: h%d.example.com\n    ports: [443]\n", i)
		case 1:
			fmt.Fprintf(&b, "  - host: \"*.w%d.example.net\"\n    ports: [443]\n", i)
		default:
			fmt.Fprintf(&b, "  - cidr: 10.%d.%d.0/24\n    ports: [5432]\n", (i/256)%256, i%256)
		}
	}
	fmt.Fprintf(&b, "limits:\n  max_tunnels: 100000\nlog:\n  allowed: %t\n  file: %s\n", logAllowed, logFile)
	return b.String()
}

// measureRules starts egress with policies of each number of rules and
// measures its RSS, memory per idle tunnel (with perRules tunnels) and
// CONNECT setup.
func measureRules(o options, dir string, counts []int, idle *idleServer) []rulesPoint {
	var out []rulesPoint
	for _, n := range counts {
		cfg := filepath.Join(configDir(dir), fmt.Sprintf("egress-rules-%d.yaml", n))
		logFile := filepath.Join(dir, fmt.Sprintf("egress-rules-%d.log", n))
		check(os.WriteFile(cfg, []byte(rulesConfig(n, o.logAllowed, logFile)), 0o644))
		addr := freeAddr()
		s := &subject{name: fmt.Sprintf("egress %d rules", n), kind: "egress", addr: addr}
		s.start(exec.Command(o.egress, "serve", "--config", cfg, "--listen", addr, "--admin", ""), filepath.Join(dir, fmt.Sprintf("egress-rules-%d.stderr", n)))
		one := func() { connect(addr, idle.addr).Close() }
		k := min(1000, o.tunnels)
		before, pts := holdScale(s.name, s.pid(), []int{k}, 0, func() net.Conn { return connect(addr, idle.addr) }, nil, idle)
		ds := latencies(o.setups, one)
		rate := perSecond(o.workers, o.rateDuration, one)
		idle.waitOpen(0, 10*time.Second)
		p := rulesPoint{rules: n, rss: before, perTunnel: float64(pts[0].rss-before) / float64(k) / 1024,
			p50: pct(ds, 50), p99: pct(ds, 99), tunnelsSec: rate}
		out = append(out, p)
		progress("rules      %6d rules: RSS %d KiB, %.2f KiB per tunnel, setup p50 %.0f µs p99 %.0f µs, %.0f tunnels/s",
			n, p.rss>>10, p.perTunnel, us(p.p50), us(p.p99), p.tunnelsSec)
		s.stop()
	}
	return out
}
