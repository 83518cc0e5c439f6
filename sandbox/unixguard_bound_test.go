//go:build linux

package sandbox

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/egress-proxy/egress/internal/testwait"
)

// boundProbe connects n threads, blocking, to a socket file and prints
// "start" as each begins and its result as each ends.
const boundProbe = `
import errno, socket, sys, threading
path, n = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
def say(s):
    with lock:
        sys.stdout.write(s + "\n")
        sys.stdout.flush()
def one():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    say("start")
    try:
        s.connect(path)
        say("ok")
    except socket.error as e:
        say(errno.errorcode.get(e.errno, str(e.errno)))
ts = [threading.Thread(target=one) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join()
`

// busyListener listens on a socket file with a backlog of 0 and accepts
// only when told: past the first connection queued, each connect blocks
// until an accept. It is closed when the test ends.
func busyListener(t *testing.T, path string) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o777)
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	return fd
}

// Issue 19: past maxAnswering connects in flight, a blocking connect()
// got EAGAIN, which blocking clients do not expect. At the bound the
// guard now stops receiving, and the kernel keeps the caller waiting, as
// a blocking connect to a busy listener waits.
func TestUnixGuardBoundQueuesCallers(t *testing.T) {
	defer func(n int) { maxAnswering = n }(maxAnswering)
	maxAnswering = 2
	env := pythonAvailable(t, "python3", nil)
	dir := guardDir(t)
	path := filepath.Join(dir, "busy.sock")
	fd := busyListener(t, path)
	probe := filepath.Join(dir, "bound.py")
	os.WriteFile(probe, []byte(boundProbe), 0o644)

	const n = 4
	pr, pw := io.Pipe()
	sb := startConfig(t, Config{Args: []string{"python3", probe, path, "4"}, Env: env, Stdout: pw, Stderr: os.Stderr,
		AllowUnix: []string{path}})
	lines := make(chan string, 2*n)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var results []string
	started := 0
	for started < n {
		l := <-lines
		if l == "start" {
			started++
		} else {
			results = append(results, l)
		}
	}
	// Every answering slot holds a connect blocked on the full backlog:
	// the next caller is over the bound now.
	testwait.UntilNBlockedIn(t, testwait.Timeout, maxAnswering, "github.com/egress-proxy/egress/sandbox.rawConnect")
	// Then accept whatever waits, until every thread has its result.
	if err := syscall.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	testwait.UntilNil(t, testwait.Timeout, func() error {
		if c, _, err := syscall.Accept4(fd, syscall.SOCK_CLOEXEC); err == nil {
			syscall.Close(c)
		}
		for {
			select {
			case l := <-lines:
				results = append(results, l)
				continue
			default:
			}
			break
		}
		if len(results) < n {
			return fmt.Errorf("%d of %d connects ended: %v", len(results), n, results)
		}
		return nil
	})
	code, _ := sb.Wait()
	pw.Close()
	sb.Close()
	for l := range lines {
		if l != "start" {
			results = append(results, l)
		}
	}
	if code != 0 || len(results) != n || strings.Count(strings.Join(results, " "), "ok") != n {
		t.Fatalf("exit %d, results %v; want all %d connects ok (none failed with EAGAIN at the bound)", code, results, n)
	}
}
