//go:build linux

package transparentbench

import (
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/sandbox"
)

const chunk = 1 << 20

// sink accepts connections and discards what they send, at most rate
// bytes a second (0: as fast as it can), like an upstream behind a link of
// that speed.
func sink(b *testing.B, rate int64) *net.TCPAddr {
	return testnet.ServeTCP(b, func(c net.Conn) {
		if rate == 0 {
			io.Copy(io.Discard, c)
			return
		}
		buf := make([]byte, 64<<10)
		start, n := time.Now(), int64(0)
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				return
			}
			if ahead := time.Duration(n*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	})
}

func pump(b *testing.B, c net.Conn) {
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.Close()
}

// BenchmarkTunnel sends 1 MiB writes through a connection, directly and
// through the transparent path. "loopback" is CPU-bound on loopback: the
// transparent path does the kernel's TCP work twice (client to egress,
// egress to upstream) on the same cores, so it cannot reach 0.9x there.
// "relay" is a bare splice relay (accept, dial, io.Copy) in the same
// place, the floor of any proxy. "1gbit" puts the upstream behind a 1 Gbit/s link (the sink reads at
// 125 MB/s), the case of a real deployment.
func BenchmarkTunnel(b *testing.B) {
	for _, link := range []struct {
		name string
		rate int64
	}{{"loopback", 0}, {"1gbit", 125_000_000}} {
		dst := sink(b, link.rate)
		b.Run(link.name+"/direct", func(b *testing.B) {
			c, err := net.Dial("tcp", dst.String())
			if err != nil {
				b.Fatal(err)
			}
			pump(b, c)
		})
		b.Run(link.name+"/relay", func(b *testing.B) {
			// The floor of any TCP relay on this machine: accept, dial,
			// io.Copy (splice), no namespace, no policy.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						up, err := net.Dial("tcp", dst.String())
						if err != nil {
							return
						}
						defer up.Close()
						io.Copy(up, c)
					}()
				}
			}()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			pump(b, c)
		})
		b.Run(link.name+"/transparent", func(b *testing.B) {
			ns, l := redirectNetns(b)
			pol, err := policy.Builtin().WithAllows("bench", []string{dst.String()})
			if err != nil {
				b.Fatal(err)
			}
			cur := func() *policy.Policy { return pol }
			srv := &transparent.Server{Policy: cur, Dialer: &dialer.Dialer{Policy: cur}}
			go srv.Serve(l)
			defer srv.Shutdown(context.Background())
			var c net.Conn
			ns.do(func() { c, err = net.Dial("tcp", dst.String()) })
			if err != nil {
				b.Fatal(err)
			}
			pump(b, c)
		})
	}
}

type netns struct{ orig, ns int }

// redirectNetns creates a network namespace configured as egress run's
// sandbox, with its transparent listener.
func redirectNetns(b *testing.B) (*netns, net.Listener) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	n := &netns{orig: orig}
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		b.Skipf("network namespaces unavailable: %v", err)
	}
	defer n.leave()
	if n.ns, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		b.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	if err := sandbox.Configure(sandbox.Redirect{TCP: port, DNS: 53, Exempt: []uint16{port}}); err != nil {
		b.Skipf("nftables: %v", err)
	}
	b.Cleanup(func() { l.Close(); unix.Close(n.ns); unix.Close(n.orig) })
	return n, l
}

func (n *netns) leave() {
	if unix.Setns(n.orig, unix.CLONE_NEWNET) == nil {
		runtime.UnlockOSThread()
	}
}

func (n *netns) do(f func()) {
	runtime.LockOSThread()
	if err := unix.Setns(n.ns, unix.CLONE_NEWNET); err != nil {
		panic(err)
	}
	defer n.leave()
	f()
}
