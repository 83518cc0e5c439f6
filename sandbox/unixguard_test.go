//go:build linux

package sandbox

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// unixServer is a unix stream listener outside the sandbox that answers
// "ping" with "pong" and counts the connections it accepted.
type unixServer struct {
	path    string
	accepts atomic.Int64
}

func serveUnix(t *testing.T, path string) *unixServer {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o777)
	s := &unixServer{path: path}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepts.Add(1)
			go func() {
				defer c.Close()
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write([]byte("pong"))
				}
			}()
		}
	}()
	return s
}

// pythons are the interpreters to try: Python 3, and 2.7 where pyenv
// has it.
var pythons = []struct {
	name string
	env  []string
}{
	{"python3", nil},
	{"python2.7", []string{"PYENV_VERSION=2.7.18"}},
}

// pythonAvailable skips the test without the interpreter; it returns the
// environment that selects it.
func pythonAvailable(t *testing.T, name string, env []string) []string {
	t.Helper()
	env = append(os.Environ(), env...)
	check := exec.Command(name, "-c", "import socket")
	check.Env = env
	if err := check.Run(); err != nil {
		t.Skipf("%s is not available: %v", name, err)
	}
	return env
}

// guardProbe connects to unix sockets in every way the guard must answer
// and prints one line per attempt: its name, then "ok" and what the
// server answered, or the errno's name and the seconds it took.
const guardProbe = `
from __future__ import print_function
import errno, os, signal, socket, sys, time
allowed, forbidden, link_allowed, link_forbidden = sys.argv[1:5]

def attempt(name, f):
    t = time.time()
    try:
        print(name, "ok", f())
    except socket.error as e:
        print(name, errno.errorcode.get(e.errno, e.errno), "%.2f" % (time.time() - t))
    sys.stdout.flush()

def connect(path):
    def f():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"ping")
        return s.recv(4).decode()
    return f

def make(family, kind):
    return lambda: socket.socket(family, kind) and "created"

def pair(kind):
    def f():
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        a.sendall(b"pair")
        return b.recv(4).decode()
    return f

def serve_inside(name):
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l.bind(name)
    l.listen(1)
    pid = os.fork()
    if pid == 0:
        c, _ = l.accept()
        c.sendall(c.recv(4).replace(b"i", b"o"))
        os._exit(0)
    l.close()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(name)
        s.sendall(b"ping")
        return s.recv(4).decode()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

def abstract():
    return serve_inside("\0egress-guard-test-%d" % os.getpid())

def inside():
    return serve_inside(os.path.join(os.path.dirname(forbidden), "inside-%d.sock" % os.getpid()))

attempt("allowed", connect(allowed))
attempt("forbidden", connect(forbidden))
os.chdir(os.path.dirname(forbidden))
attempt("relative", connect(os.path.basename(forbidden)))
attempt("relative_magic", connect(os.path.join("magic", os.path.basename(forbidden))))
attempt("link_allowed", connect(link_allowed))
attempt("link_forbidden", connect(link_forbidden))
attempt("missing", connect(forbidden + ".missing"))
attempt("dgram", make(socket.AF_UNIX, socket.SOCK_DGRAM))
attempt("raw", make(socket.AF_UNIX, socket.SOCK_RAW))
attempt("pair_stream", pair(socket.SOCK_STREAM))
attempt("pair_dgram", pair(socket.SOCK_DGRAM))
attempt("abstract", abstract)
attempt("inside", inside)
`

// TestUnixGuard: a socket file outside the sandbox is reachable only when
// allowed; datagram sockets are refused; the rest of unix sockets work.
func TestUnixGuard(t *testing.T) {
	dir := guardDir(t)
	allowed := serveUnix(t, filepath.Join(dir, "allow.sock"))
	forbidden := serveUnix(t, filepath.Join(dir, "forbd.sock"))
	linkAllowed, linkForbidden := filepath.Join(dir, "link-allow"), filepath.Join(dir, "link-forbd")
	os.Symlink(allowed.path, linkAllowed)
	os.Symlink(forbidden.path, linkForbidden)
	// A relative path through a magic link: resolved by egress, /proc/self
	// would be egress and its cwd egress's (issue 19).
	os.Symlink("/proc/self/cwd", filepath.Join(dir, "magic"))
	probe := filepath.Join(dir, "probe.py")
	os.WriteFile(probe, []byte(guardProbe), 0o644)

	for _, py := range pythons {
		t.Run(py.name, func(t *testing.T) {
			env := pythonAvailable(t, py.name, py.env)
			before := forbidden.accepts.Load()
			var mu sync.Mutex
			var refusals []UnixRefusal
			var out bytes.Buffer
			sb := startConfig(t, Config{Args: []string{py.name, probe, allowed.path, forbidden.path, linkAllowed, linkForbidden},
				Env: env, Stdout: &out, Stderr: os.Stderr,
				AllowUnix: []string{allowed.path},
				UnixRefused: func(r UnixRefusal) {
					mu.Lock()
					refusals = append(refusals, r)
					mu.Unlock()
				}})
			code, _ := sb.Wait()
			sb.Close()
			t.Logf("exit %d, output:\n%s", code, out.String())
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				name, rest, _ := strings.Cut(line, " ")
				got[name] = rest
			}
			want := map[string]string{
				"allowed":        "ok pong",
				"forbidden":      "EACCES",
				"relative":       "EACCES",
				"relative_magic": "ELOOP",   // never egress's own /proc/self
				"link_allowed":   "ok pong", // the socket reached decides, not the name
				"link_forbidden": "EACCES",
				"missing":        "ENOENT", // what the kernel says; nothing refused
				"dgram":          "EACCES",
				"raw":            "EACCES", // the kernel makes it a datagram socket
				"pair_stream":    "ok pair",
				"pair_dgram":     "EACCES",
				"abstract":       "ok pong", // scoped to the sandbox's namespace
				"inside":         "ok pong", // a socket file the sandbox's own process listens on
			}
			for name, w := range want {
				g := got[name]
				if !strings.HasPrefix(g, w) {
					t.Errorf("%s: %q, want %q", name, g, w)
				}
				if f := strings.Fields(g); len(f) == 2 && !strings.HasPrefix(w, "ok") {
					if secs, _ := strconv.ParseFloat(f[1], 64); secs > 1 {
						t.Errorf("%s: refused after %ss, want at once", name, f[1])
					}
				}
			}
			if n := forbidden.accepts.Load() - before; n != 0 {
				t.Errorf("the forbidden socket accepted %d connections", n)
			}

			mu.Lock()
			defer mu.Unlock()
			var paths []string
			for _, r := range refusals {
				paths = append(paths, fmt.Sprintf("%s %s %q %s", r.Reason, r.Socket, r.Path, r.Process.Comm))
				if r.Process.PID == 0 || !strings.HasPrefix(r.Process.Comm, "python") {
					t.Errorf("refusal %+v: the process is not the probe", r)
				}
			}
			wantRefusals := []string{
				fmt.Sprintf("unix_socket_refused %s %q", forbidden.path, forbidden.path),
				fmt.Sprintf("unix_socket_refused %s %q", forbidden.path, "forbd.sock"),
				fmt.Sprintf("unix_socket_refused %s %q", forbidden.path, linkForbidden),
				`unix_dgram_refused  ""`, `unix_dgram_refused  ""`, `unix_dgram_refused  ""`,
			}
			if len(paths) != len(wantRefusals) {
				t.Fatalf("refusals:\n%s\nwant:\n%s", strings.Join(paths, "\n"), strings.Join(wantRefusals, "\n"))
			}
			for i, w := range wantRefusals {
				if !strings.HasPrefix(paths[i], w+" ") {
					t.Errorf("refusal %d: %s, want %s", i, paths[i], w)
				}
			}
		})
	}
}

// guardDir is a temporary directory with no symlink on its path, so that
// the sockets' resolved paths are the paths made here.
func guardDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	return dir
}

// toctouProbe races the guard. Phase "memory": one thread rewrites the
// address's bytes between an allowed and a forbidden path while another
// connects with it. Phase "fd": one thread makes descriptor 100 a TCP
// socket, then a unix one, then TCP again, while another connects it to
// the forbidden path. It prints how many connects succeeded.
const toctouProbe = `
import ctypes, errno, os, socket, sys, threading
allowed, forbidden = sys.argv[1].encode(), sys.argv[2].encode()
n = int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)

class SockaddrUn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("path", ctypes.c_char * 108)]

stop = threading.Event()

def memory_flipper(addr):
    base = ctypes.addressof(addr) + 2
    while not stop.is_set():
        ctypes.memmove(base, forbidden, len(forbidden))
        ctypes.memmove(base, allowed, len(allowed))

def fd_flipper():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    while not stop.is_set():
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.dup2(u.fileno(), 100)
        os.dup2(tcp.fileno(), 100)
        u.close()

def race(name, flipper, addr, fd):
    t = threading.Thread(target=flipper, args=flipper is memory_flipper and (addr,) or ())
    t.start()
    ok, errs = 0, {}
    for _ in range(n):
        s = None
        if fd is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        r = libc.connect(fd if s is None else s.fileno(), ctypes.byref(addr), ctypes.sizeof(addr))
        if r == 0:
            ok += 1
        else:
            e = errno.errorcode.get(ctypes.get_errno(), "?")
            errs[e] = errs.get(e, 0) + 1
        if s is not None:
            s.close()
    stop.set()
    t.join()
    stop.clear()
    print(name, ok, sorted(errs.items()))

race("memory", memory_flipper, SockaddrUn(socket.AF_UNIX, allowed), None)
race("fd", fd_flipper, SockaddrUn(socket.AF_UNIX, forbidden), 100)
`

// TestUnixGuardRaces: a process that changes the address or the socket
// while the guard decides never reaches the forbidden socket.
func TestUnixGuardRaces(t *testing.T) {
	pythonAvailable(t, "python3", nil)
	dir := guardDir(t)
	allowed := serveUnix(t, filepath.Join(dir, "allow.sock"))
	forbidden := serveUnix(t, filepath.Join(dir, "forbd.sock"))
	probe := filepath.Join(dir, "toctou.py")
	os.WriteFile(probe, []byte(toctouProbe), 0o644)
	var refused atomic.Int64
	var out bytes.Buffer
	sb := startConfig(t, Config{Args: []string{"python3", probe, allowed.path, forbidden.path, "3000"},
		Stdout: &out, Stderr: os.Stderr,
		AllowUnix:   []string{allowed.path},
		UnixRefused: func(UnixRefusal) { refused.Add(1) }})
	code, _ := sb.Wait()
	sb.Close()
	t.Logf("exit %d; %d refusals; the allowed socket accepted %d; output:\n%s", code, refused.Load(), allowed.accepts.Load(), out.String())
	if code != 0 {
		t.Fatalf("the probe exited %d", code)
	}
	if n := forbidden.accepts.Load(); n != 0 {
		t.Errorf("the forbidden socket accepted %d connections", n)
	}
	if refused.Load() == 0 {
		t.Errorf("no connect was refused: the race did not happen")
	}
	if !strings.Contains(out.String(), "memory ") || !strings.Contains(out.String(), "fd ") {
		t.Errorf("the probe did not finish both phases")
	}
}

// TestUnixGuardRootless runs TestUnixGuard and TestUnixGuardRaces again
// as user nobody: the sandbox in a user namespace, the filter installed
// with no_new_privs, egress reaching into the command as the owner of its
// user namespace.
func TestUnixGuardRootless(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user; as non-root TestUnixGuard is the rootless case")
	}
	if os.Getenv("EGRESS_GUARD_ROOTLESS") != "" {
		t.Skip("already rootless")
	}
	dir, err := os.MkdirTemp("", "egress-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	exe := filepath.Join(dir, "sandbox.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o777)
	os.Chmod(tmp, 0o777)
	cmd := exec.Command(exe, "-test.run=^TestUnixGuard(Races)?$", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "EGRESS_GUARD_ROOTLESS=1", "HOME="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody:\n%s", out)
	if bytes.Contains(out, []byte("cannot create the sandbox here")) {
		t.Skip("unprivileged user namespaces are not available")
	}
	if err != nil {
		t.Fatalf("the tests failed as nobody: %v", err)
	}
	if bytes.Count(out, []byte("--- PASS")) < 3 || bytes.Contains(out, []byte("--- SKIP: TestUnixGuardRaces")) {
		t.Errorf("the rootless run did not run the tests")
	}
}

// BenchmarkUnixGuardTCPConnect measures what the guard adds to a TCP
// connect(): a Python probe times 2000 connects (each redirected to the
// transparent listener, accepted and closed) in a sandbox with the guard
// and one without, in the same run.
func BenchmarkUnixGuardTCPConnect(b *testing.B) {
	if _, err := exec.LookPath("python3"); err != nil {
		b.Skip("needs python3")
	}
	const probe = `
import socket, time
n = 2000
for i in range(200):  # warm up
    socket.create_connection(("192.0.2.10", 80)).close()
t = time.perf_counter()
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("192.0.2.10", 80))
    s.close()
print((time.perf_counter() - t) / n * 1e6)
`
	measure := func(guard bool) float64 {
		var out bytes.Buffer
		sb, err := Start(Config{Args: []string{"python3", "-c", probe}, ExeArgs: []string{"-test.run=^$", "--"},
			Stdout: &out, Stderr: os.Stderr, noUnixGuard: !guard})
		if err != nil {
			b.Skipf("cannot create the sandbox here: %v", err)
		}
		go func() {
			for {
				c, err := sb.Transparent.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		sb.Wait()
		sb.Close()
		us, err := strconv.ParseFloat(strings.TrimSpace(out.String()), 64)
		if err != nil {
			b.Fatalf("probe output %q", out.String())
		}
		return us
	}
	var on, off float64
	for i := 0; i < b.N; i++ {
		off += measure(false)
		on += measure(true)
	}
	n := float64(b.N)
	b.ReportMetric(off/n, "µs/connect-unguarded")
	b.ReportMetric(on/n, "µs/connect-guarded")
	b.ReportMetric((on-off)/n, "µs/connect-added")
}

// TestUnixGuardCannotBeReplaced: a command cannot install a seccomp
// filter with a listener of its own (which would take over the
// notifications once egress's listener closed, and let every connect()
// through), nor create sockets of families the guard does not supervise.
func TestUnixGuardCannotBeReplaced(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3")
	}
	var out bytes.Buffer
	sb := startConfig(t, Config{Args: []string{"python3", "-c", `
import ctypes, errno, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
insn = struct.pack("HBBI", 0x06, 0, 0, 0x7fff0000)  # ret SECCOMP_RET_ALLOW
buf = ctypes.create_string_buffer(insn)
prog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf))
pbuf = ctypes.create_string_buffer(prog)
libc.syscall.restype = ctypes.c_long
r = libc.syscall(317, 1, 8, pbuf)  # seccomp(SET_MODE_FILTER, NEW_LISTENER)
print("listener", errno.errorcode.get(ctypes.get_errno(), r) if r < 0 else "installed")
try:
    socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
    print("vsock created")
except OSError as e:
    print("vsock", errno.errorcode[e.errno])
`}, Stdout: &out, Stderr: os.Stderr})
	sb.Wait()
	sb.Close()
	if runtime.GOARCH != "amd64" {
		t.Skip("the probe uses x86-64's syscall number")
	}
	if got := out.String(); got != "listener EBUSY\nvsock EAFNOSUPPORT\n" {
		t.Fatalf("output %q, want a refused listener and no vsock socket", got)
	}
}

// TestUnixGuardBefore69: on kernels without PIDFD_THREAD (before 6.9),
// the guard takes the caller's thread group's descriptors: connects still
// work, and a forbidden socket is still refused.
func TestUnixGuardBefore69(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3")
	}
	saved := threadPidfds
	threadPidfds = func() bool { return false }
	defer func() { threadPidfds = saved }()
	dir := guardDir(t)
	allowed := serveUnix(t, filepath.Join(dir, "allow.sock"))
	forbidden := serveUnix(t, filepath.Join(dir, "forbd.sock"))
	var out bytes.Buffer
	sb := startConfig(t, Config{Args: []string{"python3", "-c", `
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("ok")
    except OSError as e:
        print(errno.errorcode[e.errno])
try:
    socket.create_connection(("192.0.2.1", 443), timeout=2)
    print("tcp open")
except OSError as e:
    print("tcp", errno.errorcode[e.errno])
`, allowed.path, forbidden.path}, Stdout: &out, Stderr: os.Stderr,
		AllowUnix: []string{allowed.path}})
	// Nobody serves the transparent listener: the TCP connect lands in its
	// backlog ("open"), redirected inside the namespace; nothing leaves.
	sb.Wait()
	sb.Close()
	if got := out.String(); got != "ok\nEACCES\ntcp open\n" {
		t.Fatalf("output %q", got)
	}
}
