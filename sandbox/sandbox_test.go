//go:build linux

package sandbox

import (
	"bytes"
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary be the sandbox's setup process, as egress
// is in production.
func TestMain(m *testing.M) {
	flag.Parse()
	MaybeChild(flag.Args(), os.Stderr)
	os.Exit(m.Run())
}

func startSandbox(t *testing.T, stdout *bytes.Buffer, args ...string) *Sandbox {
	t.Helper()
	return startConfig(t, Config{Args: args, Stdout: stdout, Stderr: os.Stderr})
}

// startConfig starts a sandbox with cfg, this test binary as its setup
// process, skipping the test where no sandbox can be created; the sandbox
// is closed when the test ends.
func startConfig(t *testing.T, cfg Config) *Sandbox {
	t.Helper()
	cfg.ExeArgs = []string{"-test.run=^$", "--"}
	sb, err := Start(cfg)
	if err != nil {
		if strings.Contains(err.Error(), "namespace") {
			t.Skipf("cannot create the sandbox here: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}

func TestStart(t *testing.T) {
	t.Run("the command runs with the proxy variables and its exit code comes back", func(t *testing.T) {
		var out bytes.Buffer
		sb := startSandbox(t, &out, "sh", "-c", `echo "$HTTP_PROXY|$https_proxy|$NO_PROXY|$EGRESS_RUN|$_EGRESS_SANDBOX_CHILD"; exit 3`)
		code, err := sb.Wait()
		if err != nil || code != 3 {
			t.Fatalf("Wait = %d, %v", code, err)
		}
		want := sb.ProxyURL + "|" + sb.ProxyURL + "||1|\n"
		if out.String() != want || !strings.HasPrefix(sb.ProxyURL, "http://127.0.0.1:") {
			t.Fatalf("output %q, want %q", out.String(), want)
		}
	})

	t.Run("a TCP connection to anywhere arrives on Transparent, and its process is found", func(t *testing.T) {
		if _, err := exec.LookPath("python3"); err != nil {
			t.Skip("needs python3")
		}
		var out bytes.Buffer
		sb := startSandbox(t, &out, "python3", "-c", `
import socket, time
s = socket.create_connection(("192.0.2.10", 5432), timeout=5)
print(s.recv(5).decode())
`)
		sb.Transparent.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := sb.Transparent.Accept()
		if err != nil {
			t.Fatal(err)
		}
		client := netip.MustParseAddrPort(c.RemoteAddr().String())
		if !client.Addr().Unmap().IsLoopback() {
			t.Errorf("client address %s, want a loopback one", client)
		}
		p, ok := sb.Owner(client)
		if !ok || p.Comm != "python3" || p.PID == 0 {
			t.Errorf("Owner(%s) = %+v, %v", client, p, ok)
		}
		c.Write([]byte("hello"))
		c.Close()
		if code, _ := sb.Wait(); code != 0 || out.String() != "hello\n" {
			t.Fatalf("exit %d, output %q", code, out.String())
		}
	})

	t.Run("refused UDP is reported with its destination", func(t *testing.T) {
		if _, err := exec.LookPath("python3"); err != nil {
			t.Skip("needs python3")
		}
		var out bytes.Buffer
		sb := startSandbox(t, &out, "python3", "-c", `
import socket
for dst in [("192.0.2.10", 443), ("2001:db8::9", 8443)]:
    s = socket.socket(socket.AF_INET6 if ":" in dst[0] else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", dst)
        print("sent")
    except OSError as e:
        print(e.errno)
`)
		drops := make(chan Drop, 10)
		sb.ReadDrops(func(d Drop) { drops <- d })
		sb.Wait()
		sb.Close()
		close(drops)
		var got []string
		for d := range drops {
			got = append(got, d.String())
		}
		if strings.Join(got, ",") != "udp 192.0.2.10:443,udp [2001:db8::9]:8443" {
			t.Errorf("drops %q", got)
		}
		if out.String() != "1\n1\n" {
			t.Errorf("the sender saw %q, want EPERM (1) twice", out.String())
		}
	})

	t.Run("a command that does not exist exits 127", func(t *testing.T) {
		var out bytes.Buffer
		sb := startSandbox(t, &out, "/nonexistent/cmd")
		if code, _ := sb.Wait(); code != ExitNotFound {
			t.Fatalf("exit %d", code)
		}
	})
}

// TestConfigure checks the rules Configure installs, from inside a
// namespace entered by this thread.
func TestConfigure(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test goroutine
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	tl, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	dnsl, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	tport := uint16(tl.Addr().(*net.TCPAddr).Port)
	dport := uint16(dnsl.LocalAddr().(*net.UDPAddr).Port)
	if err := Configure(Redirect{TCP: tport, DNS: dport, Exempt: []uint16{tport}}); err != nil {
		t.Fatal(err)
	}

	for _, dst := range []string{"192.0.2.1:80", "127.0.0.1:5432", "[2001:db8::1]:443", "[::1]:22"} {
		c, err := net.DialTimeout("tcp", dst, 2*time.Second)
		if err != nil {
			t.Errorf("dial %s: %v", dst, err)
			continue
		}
		s, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		s.Close()
	}

	u, err := net.Dial("udp", "192.0.2.53:53")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("query"))
	dnsl.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 10)
	if n, _, err := dnsl.ReadFrom(buf); err != nil || string(buf[:n]) != "query" {
		t.Errorf("DNS redirect: %q, %v", buf[:n], err)
	}

	q, err := net.Dial("udp", "192.0.2.1:443")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Write([]byte("quic")); err == nil {
		t.Errorf("UDP to 192.0.2.1:443 was not refused")
	}

	// UDP between processes on loopback stays possible.
	lu, _ := net.ListenPacket("udp", "127.0.0.1:0")
	lc, _ := net.Dial("udp", lu.LocalAddr().String())
	if _, err := lc.Write([]byte("local")); err != nil {
		t.Errorf("loopback UDP refused: %v", err)
	}
}

func TestParseProcAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"00000000000000000000000001000000:0016", "[::1]:22"},
		{"0000000000000000FFFF00000100007F:0050", "127.0.0.1:80"},
	}
	for _, tt := range tests {
		got, ok := parseProcAddr(tt.in)
		if !ok || got.String() != tt.want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
		}
	}
}
