//go:build linux

package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
)

// restartProbe fills the backlog of a listener that accepts only when
// told, then connects a second blocking socket with SIGUSR1 caught under
// SA_RESTART (siginterrupt(False)): each signal interrupts the wait and
// the kernel restarts connect() with the same arguments. It prints
// "waiting", then "ok" once the second socket is connected and has sent
// "ping", or the errno's name.
const restartProbe = `
from __future__ import print_function
import errno, signal, socket, sys
path = sys.argv[1]
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.siginterrupt(signal.SIGUSR1, False)  # SA_RESTART
first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
first.connect(path)
print("waiting")
sys.stdout.flush()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
    s.sendall(b"ping")
    print("ok")
except socket.error as e:
    print(errno.errorcode.get(e.errno, e.errno))
sys.stdout.flush()
`

// Issue 19: a blocking connect() interrupted by a caught signal and
// restarted by the kernel (SA_RESTART) arrives as a new notification.
// Before, the guard started a second connect on the same socket beside
// the one still in flight for the interrupted notification: the first
// connected the socket, and the restarted one, the one the caller waits
// for, failed with EISCONN; restarted twice, the caller waited forever
// (the last connect waits for the listener's next accept, and no
// connection is left to accept). Now each restart joins the connect in
// flight and gets its outcome: one connection, and connect() returns 0.
func TestUnixGuardRestartedConnectJoins(t *testing.T) {
	for _, py := range pythons {
		for _, signals := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s restarted %d times", py.name, signals), func(t *testing.T) {
				env := pythonAvailable(t, py.name, py.env)
				dir := guardDir(t)
				probe := filepath.Join(dir, "restart.py")
				os.WriteFile(probe, []byte(restartProbe), 0o644)
				r := startSlowConnect(t, dir, env, func(path string) []string { return []string{py.name, probe, path} })
				// Each signal interrupts the caller's wait for the guard's
				// answer; the restart is one more notification in the
				// guard, with the first still connecting.
				for k := 1; k <= signals; k++ {
					r.restart(t, k)
				}
				r.finish(t, r.acceptUntilResult(t))
			})
		}
	}
}

// A thread signalled again and again during one long connect holds two
// answering slots (the connect and its latest restart), not one more per
// signal: with 3 slots, every one of 5 restarts is received at once,
// where each used to hold a slot until the connect ended, and the third
// would have waited for one (and with it every connect of the sandbox).
func TestUnixGuardRestartsHoldTwoSlots(t *testing.T) {
	defer func(n int) { maxAnswering = n }(maxAnswering)
	maxAnswering = 3
	env := pythonAvailable(t, "python3", nil)
	dir := guardDir(t)
	probe := filepath.Join(dir, "restart.py")
	os.WriteFile(probe, []byte(restartProbe), 0o644)
	r := startSlowConnect(t, dir, env, func(path string) []string { return []string{"python3", probe, path} })
	for k := 1; k <= 5; k++ {
		r.restart(t, k)
	}
	r.finish(t, r.acceptUntilResult(t))
}

// restartC is restartProbe in C, with a SIGUSR1 handler that holds the
// thread until a byte arrives on the FIFO argv[2], so that the connect
// egress makes for the interrupted call ends before the call is made
// again: restarted by the kernel (argv[3] "restart": SA_RESTART), or
// retried by the program after EINTR ("retry").
const restartC = `
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int gate;

static void held(int sig) {
	char b;
	write(1, "handler\n", 8);
	read(gate, &b, 1);
}

int main(int argc, char **argv) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
	gate = open(argv[2], O_RDWR);
	struct sigaction sa = {.sa_handler = held};
	sa.sa_flags = strcmp(argv[3], "restart") == 0 ? SA_RESTART : 0;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	setvbuf(stdout, NULL, _IONBF, 0);
	int first = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(first, (struct sockaddr *)&a, sizeof a) != 0)
		return 1;
	printf("waiting\n");
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	int r = connect(s, (struct sockaddr *)&a, sizeof a);
	if (r != 0 && errno == EINTR && strcmp(argv[3], "retry") == 0)
		r = connect(s, (struct sockaddr *)&a, sizeof a);
	if (r != 0) {
		printf("%s\n", strerror(errno));
		return 0;
	}
	write(s, "ping", 4);
	printf("ok\n");
	return 0;
}
`

// Issue 19: the call made again after the connect in flight for it has
// ended (the signal handler ran that long) takes that connect's outcome,
// kept for it: before, it connected the connected socket again and
// failed with EISCONN, restarted by the kernel or retried after EINTR.
func TestUnixGuardRestartAfterConnectEnded(t *testing.T) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("needs a C compiler (cc)")
	}
	dir := guardDir(t)
	src, exe := filepath.Join(dir, "restart.c"), filepath.Join(dir, "restart")
	os.WriteFile(src, []byte(restartC), 0o644)
	if out, err := exec.Command(cc, "-o", exe, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	for _, mode := range []string{"restart", "retry"} {
		t.Run(mode, func(t *testing.T) {
			dir := guardDir(t)
			gate := filepath.Join(dir, "gate")
			if err := syscall.Mkfifo(gate, 0o666); err != nil {
				t.Fatal(err)
			}
			os.Chmod(gate, 0o666)
			r := startSlowConnect(t, dir, nil, func(path string) []string { return []string{exe, path, gate, mode} })
			r.sb.Signal(syscall.SIGUSR1)
			if l := r.line(t); l != "handler" {
				t.Fatalf("probe: %q, want handler", l)
			}
			// The thread is in its handler: the connect egress makes for
			// the withdrawn notification ends when the backlog has room,
			// and its answer reaches nobody.
			r.acceptN(t, 2)
			testwait.UntilNoneIn(t, testwait.Timeout, guardAnswering)
			g, err := os.OpenFile(gate, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			g.Write([]byte{1})
			g.Close()
			r.finish(t, r.line(t))
		})
	}
}

// guardAnswering is the guard's function that answers one notification,
// as a stack trace names it.
const guardAnswering = "github.com/egress-proxy/egress/sandbox.(*unixGuard).answer"

// slowConnect is a probe in a sandbox whose second connect to a busy
// listener (an allowed socket file) waits in the guard.
type slowConnect struct {
	sb       *Sandbox
	fd       int // the listener
	lines    chan string
	out      *io.PipeWriter
	conns    []net.Conn
	notified map[int]bool // goroutines that answered the probe's notifications
}

// startSlowConnect starts the probe args(the listener's path) and waits
// until its second connect waits in the guard.
func startSlowConnect(t *testing.T, dir string, env []string, args func(path string) []string) *slowConnect {
	t.Helper()
	path := filepath.Join(dir, "slow.sock")
	r := &slowConnect{fd: busyListener(t, path), lines: make(chan string, 8)}
	pr, pw := io.Pipe()
	r.out = pw
	r.sb = startConfig(t, Config{Args: args(path), Env: env, Stdout: pw, Stderr: os.Stderr, AllowUnix: []string{path}})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	t.Cleanup(func() {
		pw.Close()
		for _, c := range r.conns {
			c.Close()
		}
	})
	if l := r.line(t); l != "waiting" {
		t.Fatalf("probe: %q, want waiting", l)
	}
	testwait.UntilBlockedIn(t, testwait.Timeout, "github.com/egress-proxy/egress/sandbox.rawConnect")
	r.notified = map[int]bool{}
	for _, id := range testwait.BlockedIn(guardAnswering) {
		r.notified[id] = true
	}
	if err := syscall.SetNonblock(r.fd, true); err != nil {
		t.Fatal(err)
	}
	return r
}

// restart signals the probe, whose connect is then restarted, and waits
// until the guard answers the restart's notification: a goroutine
// answers one that none answered before.
func (r *slowConnect) restart(t *testing.T, k int) {
	t.Helper()
	if err := r.sb.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, testwait.Timeout, fmt.Sprintf("restart %d to reach the guard", k), func() bool {
		for _, id := range testwait.BlockedIn(guardAnswering) {
			if !r.notified[id] {
				r.notified[id] = true
				return true
			}
		}
		return false
	})
}

// line is the probe's next line of output.
func (r *slowConnect) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-r.lines:
		if !ok {
			t.Fatal("the probe ended its output")
		}
		return l
	case <-time.After(testwait.Timeout):
		t.Fatalf("waited %v for the probe's output", testwait.Timeout)
	}
	return ""
}

// accept takes a connection waiting on the listener, if any.
func (r *slowConnect) accept(t *testing.T) {
	t.Helper()
	c, _, err := syscall.Accept4(r.fd, syscall.SOCK_CLOEXEC)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(c), "accepted")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	r.conns = append(r.conns, nc)
}

// acceptN accepts until n connections have been accepted.
func (r *slowConnect) acceptN(t *testing.T, n int) {
	t.Helper()
	testwait.UntilNil(t, testwait.Timeout, func() error {
		r.accept(t)
		if len(r.conns) < n {
			return fmt.Errorf("for %d connections (%d accepted)", n, len(r.conns))
		}
		return nil
	})
}

// acceptUntilResult accepts until the probe prints its result.
func (r *slowConnect) acceptUntilResult(t *testing.T) string {
	t.Helper()
	var result string
	testwait.UntilNil(t, testwait.Timeout, func() error {
		r.accept(t)
		select {
		case result = <-r.lines:
			return nil
		default:
			return fmt.Errorf("for the probe's second connect to return (%d accepted)", len(r.conns))
		}
	})
	return result
}

// finish checks the probe's result and that the listener got exactly two
// connections, the second of which carries "ping".
func (r *slowConnect) finish(t *testing.T, result string) {
	t.Helper()
	code, _ := r.sb.Wait()
	r.out.Close()
	r.accept(t) // a connection that came after the result
	if result != "ok" || code != 0 {
		t.Fatalf("the interrupted connect: %q (exit %d), want ok", result, code)
	}
	if len(r.conns) != 2 {
		t.Fatalf("the listener accepted %d connections, want 2 (the first socket's and the interrupted one's)", len(r.conns))
	}
	buf := make([]byte, 4)
	r.conns[1].SetReadDeadline(time.Now().Add(testwait.Timeout))
	if _, err := io.ReadFull(r.conns[1], buf); err != nil || string(buf) != "ping" {
		t.Fatalf("the second connection read %q, %v; want ping", buf, err)
	}
	var rest []string
	for l := range r.lines {
		rest = append(rest, l)
	}
	if len(rest) != 0 {
		t.Errorf("the probe said more: %q", strings.Join(rest, "\n"))
	}
}
