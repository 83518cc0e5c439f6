//go:build linux

package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

// connectProbe connects to each destination named on a line of standard
// input and prints "open", or the errno's name and how long connect() took.
// Nothing leaves the sandbox's namespace: it has no interface but lo, and
// nobody serves the transparent listener, whose backlog takes what passes.
const connectProbe = `
import errno, socket, sys, time
for line in iter(sys.stdin.readline, ""):
    host, port = line.split()
    t = time.time()
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        r = "open"
    except socket.error as e:
        r = "%s %d" % (errno.errorcode.get(e.errno, e.errno), (time.time() - t) * 1000)
    print(r)
    sys.stdout.flush()
`

// probeSandbox starts connectProbe in a sandbox with filter f; ask sends it
// a destination and returns its answer.
func probeSandbox(t *testing.T, f *policy.ConnectFilter) (sb *Sandbox, ask func(dst string) string) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3")
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	sb = startConfig(t, Config{Args: []string{"python3", "-c", connectProbe},
		Stdin: inR, Stdout: outW, Stderr: os.Stderr, Filter: f})
	t.Cleanup(func() {
		inW.Close()
		sb.Wait()
		sb.Close()
		outW.Close()
	})
	lines := bufio.NewScanner(outR)
	return sb, func(dst string) string {
		t.Helper()
		i := strings.LastIndexByte(dst, ':')
		io.WriteString(inW, strings.Trim(dst[:i], "[]")+" "+dst[i+1:]+"\n")
		if !lines.Scan() {
			t.Fatalf("the probe stopped: %v", lines.Err())
		}
		return lines.Text()
	}
}

func TestConnectFilter(t *testing.T) {
	t.Run("default deny refuses at connect what is neither allowed nor leased", func(t *testing.T) {
		f := &policy.ConnectFilter{RefuseRest: true, Allow: []policy.Dest{
			{Prefix: netip.MustParsePrefix("192.0.2.0/28"), Ports: []policy.PortRange{{Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8100}}},
			{Prefix: netip.MustParsePrefix("2001:db8::/64")},
		}}
		sb, ask := probeSandbox(t, f)
		drops := make(chan Drop, 20)
		sb.ReadDrops(func(d Drop) { drops <- d })
		for _, tt := range []struct{ dst, want string }{
			{"192.0.2.1:443", "open"},
			{"192.0.2.1:8050", "open"},
			{"192.0.2.1:5432", "ECONNREFUSED"},
			{"192.0.2.20:443", "ECONNREFUSED"},
			{"[2001:db8::7]:5432", "open"},
			{"[2001:db8:1::7]:5432", "ECONNREFUSED"},
			{"127.0.0.1:5432", "ECONNREFUSED"},
			{"[::1]:5432", "ECONNREFUSED"},
		} {
			got := ask(tt.dst)
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("connect %s: %s, want %s", tt.dst, got, tt.want)
				continue
			}
			if tt.want != "open" {
				select {
				case d := <-drops:
					if d.Proto != "tcp" || d.Dst.String() != tt.dst || !d.Src.Addr().IsLoopback() || d.Src.Port() == 0 {
						t.Errorf("refusal of %s logged as %+v", tt.dst, d)
					}
				case <-time.After(2 * time.Second):
					t.Errorf("refusal of %s was not logged", tt.dst)
				}
			}
		}
	})

	t.Run("a lease opens an address on its ports, and a renewal makes it last longer", func(t *testing.T) {
		sb, ask := probeSandbox(t, &policy.ConnectFilter{RefuseRest: true})
		a := netip.MustParseAddr("192.0.2.5")
		if got := ask("192.0.2.5:5432"); !strings.HasPrefix(got, "ECONNREFUSED") {
			t.Fatalf("before the lease: %s", got)
		}
		if err := sb.Lease(a, []policy.PortRange{{Lo: 5432, Hi: 5432}}, false, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := sb.Lease(netip.MustParseAddr("2001:db8::5"), nil, true, time.Minute); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct{ dst, want string }{
			{"192.0.2.5:5432", "open"},
			{"192.0.2.5:5433", "ECONNREFUSED"},
			{"[2001:db8::5]:1", "open"},
			{"[2001:db8::5]:65535", "open"},
		} {
			if got := ask(tt.dst); !strings.HasPrefix(got, tt.want) {
				t.Errorf("connect %s: %s, want %s", tt.dst, got, tt.want)
			}
		}
		// Renewing a lease makes it last longer.
		if err := sb.Lease(a, []policy.PortRange{{Lo: 5432, Hi: 5432}}, false, time.Minute); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // time under test: past the first lease's 2 s, within the renewal's minute
		if got := ask("192.0.2.5:5432"); got != "open" {
			t.Errorf("after a renewal: %s", got)
		}
	})

	t.Run("a lease runs out", func(t *testing.T) {
		sb, ask := probeSandbox(t, &policy.ConnectFilter{RefuseRest: true})
		if err := sb.Lease(netip.MustParseAddr("192.0.2.6"), []policy.PortRange{{Lo: 80, Hi: 81}}, false, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := ask("192.0.2.6:81"); got != "open" {
			t.Fatalf("during the lease: %s", got)
		}
		testwait.UntilNil(t, 15*time.Second, func() error {
			if got := ask("192.0.2.6:81"); !strings.HasPrefix(got, "ECONNREFUSED") {
				return fmt.Errorf("the lease never ran out: %s", got)
			}
			return nil
		})
	})

	t.Run("default allow refuses only the refused ranges", func(t *testing.T) {
		_, ask := probeSandbox(t, &policy.ConnectFilter{Refuse: []policy.Dest{
			{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
			{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: []policy.PortRange{{Lo: 25, Hi: 25}}},
			{Prefix: netip.MustParsePrefix("fc00::/7")},
		}})
		for _, tt := range []struct{ dst, want string }{
			{"10.1.2.3:443", "ECONNREFUSED"},
			{"192.0.2.1:25", "ECONNREFUSED"},
			{"192.0.2.1:443", "open"},
			{"[fd00::1]:443", "ECONNREFUSED"},
			{"[2001:db8::1]:443", "open"},
		} {
			if got := ask(tt.dst); !strings.HasPrefix(got, tt.want) {
				t.Errorf("connect %s: %s, want %s", tt.dst, got, tt.want)
			}
		}
	})

	t.Run("default allow refuses the IPv6 forms of guarded IPv4 at connect (issue 18)", func(t *testing.T) {
		p, err := policy.Load("p.yaml", []byte("version: 1\ndefault: allow\nnat64_prefixes: [\"2001:db8:64::/96\"]\nallow:\n  - {cidr: 10.1.2.3, ports: [5432]}\n"))
		if err != nil {
			t.Fatal(err)
		}
		f := p.ConnectFilter()
		_, ask := probeSandbox(t, &f)
		for _, tt := range []struct{ dst, want string }{
			{"[64:ff9b::169.254.169.254]:80", "ECONNREFUSED"}, // NAT64, well-known prefix
			{"[2001:db8:64::10.0.0.1]:443", "ECONNREFUSED"},   // NAT64, a declared prefix
			{"[::ffff:0:192.168.1.1]:443", "ECONNREFUSED"},    // SIIT
			{"[::10.0.0.1]:443", "ECONNREFUSED"},              // IPv4-compatible
			{"[2002:a9fe:a9fe::1]:80", "ECONNREFUSED"},        // 6to4 of 169.254.169.254
			{"[::ffff:127.0.0.1]:443", "ECONNREFUSED"},        // mapped: IPv4 on the wire
			{"[64:ff9b::10.1.2.3]:5432", "open"},              // the cidr rule lifts the guard
			{"[64:ff9b::10.1.2.3]:443", "ECONNREFUSED"},
			{"[64:ff9b::93.184.216.34]:443", "open"},
			{"[2001:db8:64::93.184.216.34]:443", "open"},
			{"[2002:5db8:d822::1]:443", "open"},
			{"[::93.184.216.34]:443", "open"},
		} {
			if got := ask(tt.dst); !strings.HasPrefix(got, tt.want) {
				t.Errorf("connect %s: %s, want %s", tt.dst, got, tt.want)
			}
		}
	})
}

func TestConnectFilterOpenConnectionOutlivesLease(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3")
	}
	var out strings.Builder
	inR, inW := io.Pipe()
	// Connect while the lease holds, wait until it has run out, then use
	// the connection again and try a new one.
	sb := startConfig(t, Config{Args: []string{"python3", "-c", `
import errno, socket, sys
sys.stdin.readline()
s = socket.create_connection(("192.0.2.7", 5432), timeout=5)
s.sendall(b"a"); print(s.recv(1).decode())
sys.stdout.flush()
sys.stdin.readline()
s.sendall(b"b"); print(s.recv(1).decode())
try:
    socket.create_connection(("192.0.2.7", 5432), timeout=5)
    print("open")
except socket.error as e:
    print(errno.errorcode[e.errno])
`}, Stdin: inR, Stdout: &syncWriter{w: &out}, Stderr: os.Stderr,
		Filter: &policy.ConnectFilter{RefuseRest: true}})
	defer sb.Close()
	if err := sb.Lease(netip.MustParseAddr("192.0.2.7"), []policy.PortRange{{Lo: 5432, Hi: 5432}}, false, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	io.WriteString(inW, "connect\n")
	// Serve: echo what arrives (the probe's connection, redirected here).
	go func() {
		c, err := sb.Transparent.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
	}()
	time.Sleep(3500 * time.Millisecond) // time under test: the lease (2 s) runs out meanwhile
	io.WriteString(inW, "go on\n")
	inW.Close()
	code, _ := sb.Wait()
	if got := out.String(); code != 0 || got != "a\nb\nECONNREFUSED\n" {
		t.Fatalf("exit %d, output %q; want the open connection to keep working and a new one refused", code, got)
	}
}

// syncWriter serialises writes for a Stdout the test reads afterwards.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
