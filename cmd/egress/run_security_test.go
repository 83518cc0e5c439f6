//go:build linux

package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/egress-proxy/egress/internal/testnet"
)

// escapeScript tries to leave the sandbox's network namespace other than
// through egress: by joining the namespace of its parent (egress run
// itself) with setns, and by opening egress run's memory, which a process
// may write to take egress over (ptrace rules). It then tries to connect
// to a loopback port of the host that the policy refuses.
const escapeScript = `
import ctypes, os, socket, sys
port = int(sys.argv[1])
abstract = sys.argv[2]
try:
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect("\0" + abstract)
    print("abstract: " + repr(u.recv(6)))
except Exception as e:
    print("abstract: " + type(e).__name__)
libc = ctypes.CDLL(None, use_errno=True)
ppid = os.getppid()
try:
    fd = os.open("/proc/%d/mem" % ppid, os.O_RDWR)
    os.close(fd)
    print("mem: opened")
except Exception as e:
    print("mem: " + type(e).__name__)
if libc.ptrace(0x4206, ppid, 0, 0) == 0:  # PTRACE_SEIZE: does not stop the tracee
    print("ptrace: attached")
    libc.ptrace(17, ppid, 0, 0)  # PTRACE_DETACH
else:
    print("ptrace: " + os.strerror(ctypes.get_errno()))
try:
    fd = os.open("/proc/%d/ns/net" % ppid, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        print("setns: " + os.strerror(ctypes.get_errno()))
    else:
        print("setns: joined")
except Exception as e:
    print("setns: " + type(e).__name__)
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"x")
    print("connect: " + repr(s.recv(6)))
except Exception as e:
    print("connect: " + type(e).__name__)
`

// TestSecuritySandboxEscape runs a command under egress run that tries to
// get out of the namespace without egress. The host's listener must never
// see a connection, and the ways out must be closed.
func TestSecuritySandboxEscape(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	port, hits := escapeTarget(t)
	abstract := abstractListener(t, hits)
	script := filepath.Join(t.TempDir(), "escape.py")
	if err := os.WriteFile(script, []byte(escapeScript), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runEgress(t, nil, "run", "--quiet", "--", py, script, port, abstract)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	checkNoEscape(t, r.stdout, hits)
}

// TestSecuritySandboxEscapeRootless is TestSecuritySandboxEscape for an
// unprivileged user, whose command runs with egress's own uid: the kernel's
// uid check alone would let it ptrace egress run.
func TestSecuritySandboxEscapeRootless(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user; as non-root TestSecuritySandboxEscape is the rootless case")
	}
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 an unprivileged user can run")
	}
	dir := nobodyDir(t)
	script := filepath.Join(dir, "escape.py")
	if err := os.WriteFile(script, []byte(escapeScript), 0o644); err != nil {
		t.Fatal(err)
	}
	port, hits := escapeTarget(t)
	abstract := abstractListener(t, hits)
	stdout, _ := runAsNobody(t, dir, "run", "--quiet", "--", py, script, port, abstract)
	checkNoEscape(t, stdout, hits)
}

// escapeTarget listens on the host's loopback, a guarded address no rule
// allows, and counts every connection that reaches it (answering ESCAPE).
func escapeTarget(t *testing.T) (port string, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	addr := testnet.ServeTCP(t, func(c net.Conn) {
		hits.Add(1)
		c.Write([]byte("ESCAPE"))
	})
	return strconv.Itoa(addr.Port), hits
}

// checkNoEscape fails the test if the escape script reports a way out or
// the host's listeners were reached.
func checkNoEscape(t *testing.T, stdout string, hits *atomic.Int64) {
	t.Helper()
	for _, bad := range []string{"mem: opened", "ptrace: attached", "setns: joined", "ESCAPE"} {
		if strings.Contains(stdout, bad) {
			t.Errorf("the sandboxed command got out: %q", bad)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the host's guarded loopback port was reached %d times from the sandbox", n)
	}
}

// abstractListeners numbers the listeners of abstractListener.
var abstractListeners atomic.Int64

// abstractListener listens on an abstract unix socket of the host's
// network namespace (abstract names are per namespace: the sandbox must
// not reach it) and returns its name without the leading NUL.
func abstractListener(t *testing.T, hits *atomic.Int64) string {
	t.Helper()
	// Unique in the machine's namespace: tests calling this run at once.
	name := "egress-security-test-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(abstractListeners.Add(1), 10)
	l, err := net.Listen("unix", "@"+name)
	if err != nil {
		t.Skipf("abstract unix socket: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			c.Write([]byte("ESCAPE"))
			c.Close()
		}
	}()
	return name
}
