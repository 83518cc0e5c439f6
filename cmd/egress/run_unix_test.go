//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// unixProbe connects to the unix sockets it is given and prints one line
// per attempt: "NAME ok ANSWER" or "NAME ERRNO". Python 2.7 and 3.
const unixProbe = `
from __future__ import print_function
import errno, os, socket, sys
allowed, forbidden = sys.argv[1:3]

def attempt(name, f):
    try:
        print(name, "ok", f())
    except socket.error as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
    sys.stdout.flush()

def connect(path):
    def f():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"ping")
        return s.recv(4).decode()
    return f

attempt("forbidden", connect(forbidden))
attempt("allowed", connect(allowed))
os.chdir(os.path.dirname(forbidden))
attempt("relative", connect(os.path.basename(forbidden)))
attempt("dgram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) and "created")
`

// pongServer listens on a unix socket at path, answers "ping" with
// "pong", and counts what it accepted.
func pongServer(t *testing.T, path string) *atomic.Int64 {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o777)
	t.Cleanup(func() { l.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write([]byte("pong"))
				}
			}()
		}
	}()
	return &n
}

// TestRunUnixSockets: egress run refuses a unix socket file outside the
// sandbox unless --allow-unix names it, and says so in the summary and
// the log, one line per refusal. Python 3 and 2.7, as root and rootless.
func TestRunUnixSockets(t *testing.T) {
	t.Parallel()
	requireSandbox(t)
	dir, err := os.MkdirTemp("", "egress-unix")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	allowed := filepath.Join(dir, "allowed.sock")
	forbidden := filepath.Join(dir, "forbidden.sock")
	pongServer(t, allowed)
	forbiddenAccepts := pongServer(t, forbidden)
	probe := filepath.Join(dir, "probe.py")
	os.WriteFile(probe, []byte(unixProbe), 0o644)

	check := func(t *testing.T, stdout, stderr, logFile string) {
		t.Helper()
		want := "forbidden EACCES\nallowed ok pong\nrelative EACCES\ndgram EACCES\n"
		if stdout != want {
			t.Errorf("probe output %q, want %q", stdout, want)
		}
		if n := forbiddenAccepts.Load(); n != 0 {
			t.Errorf("the forbidden socket accepted %d connections", n)
		}
		for _, line := range []string{
			"; 3 unix sockets refused",
			"  unix sockets refused (files outside the sandbox, reachable only with --allow-unix):",
			forbidden + "    2x  connect()  by python",
			"        reason: unix_socket_refused",
			"        to allow: egress run --allow-unix " + forbidden,
			"(datagram socket)",
			"reason: unix_dgram_refused",
			"egress: denied unix " + forbidden + " (unix_socket_refused) from python",
		} {
			if !strings.Contains(stderr, line) {
				t.Errorf("stderr lacks %q", line)
			}
		}
		if strings.Contains(stderr, "allowed.sock") {
			t.Errorf("the allowed socket is reported")
		}
		log, _ := os.ReadFile(logFile)
		var lines []map[string]any
		for _, l := range bytes.Split(bytes.TrimSpace(log), []byte("\n")) {
			var m map[string]any
			if json.Unmarshal(l, &m) == nil && m["proto"] == "unix" {
				lines = append(lines, m)
			}
		}
		if len(lines) != 3 {
			t.Fatalf("%d unix log lines, want 3 (one per refusal):\n%s", len(lines), log)
		}
		for i, want := range []struct{ path, reason, hint string }{
			{forbidden, "unix_socket_refused", "egress run --allow-unix " + forbidden},
			{"forbidden.sock", "unix_socket_refused", "egress run --allow-unix " + forbidden},
			{"", "unix_dgram_refused", "a unix datagram socket can send to any socket file: use SOCK_STREAM or SOCK_SEQPACKET"},
		} {
			m := lines[i]
			if m["event"] != "deny" || m["path"] != want.path || m["reason"] != want.reason || m["hint"] != want.hint ||
				!strings.HasPrefix(m["process"].(string), "python") || m["pid"].(float64) == 0 {
				t.Errorf("log line %d: %v, want path %q, reason %s, hint %q and the process", i, m, want.path, want.reason, want.hint)
			}
		}
	}

	for _, py := range []struct {
		name string
		env  []string
	}{{"python3", nil}, {"python2.7", []string{"PYENV_VERSION=2.7.18"}}} {
		t.Run(py.name, func(t *testing.T) {
			t.Parallel()
			c := exec.Command(py.name, "-c", "import socket")
			c.Env = append(os.Environ(), py.env...)
			if err := c.Run(); err != nil {
				t.Skipf("%s is not available: %v", py.name, err)
			}
			logFile := filepath.Join(t.TempDir(), "egress.log")
			r := runEgress(t, py.env, "run", "--allow-unix", allowed, "--log", logFile, "--", py.name, probe, allowed, forbidden)
			if r.code != 0 {
				t.Fatalf("exit %d", r.code)
			}
			check(t, r.stdout, r.stderr, logFile)
		})
	}

	t.Run("rootless", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() != 0 {
			t.Skip("needs root to switch to an unprivileged user; as non-root the cases above are rootless")
		}
		py := "/usr/bin/python3"
		if _, err := os.Stat(py); err != nil {
			t.Skip("no /usr/bin/python3 an unprivileged user can run")
		}
		nd := nobodyDir(t)
		logFile := filepath.Join(nd, "egress.log")
		os.WriteFile(logFile, nil, 0o666)
		os.Chmod(logFile, 0o666)
		stdout, stderr := runAsNobody(t, nd, "run", "--allow-unix", allowed, "--log", logFile, "--", py, probe, allowed, forbidden)
		check(t, stdout, stderr, logFile)
	})
}
