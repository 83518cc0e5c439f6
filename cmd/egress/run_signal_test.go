//go:build linux

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/internal/testnet"
)

// signalRecorder is a CMD that writes "ready", then the name of every
// signal it gets, to argv[1]; it exits 100+N on the first signal N unless
// argv[2] is "stay", then it reads lines from stdin until "quit".
const signalRecorder = `
import os, signal, sys
out = sys.argv[1]
stay = len(sys.argv) > 2 and sys.argv[2] == "stay"
def rec(s):
    with open(out, "a") as f:
        f.write(s + "\n")
def handler(n, frame):
    rec(signal.Signals(n).name)
    if not stay:
        os._exit(100 + n)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, handler)
signal.alarm(30)  # never outlive a failed test
rec("ready")
if stay:
    for line in iter(sys.stdin.readline, ""):
        if line.strip() == "quit":
            break
    rec("quit")
else:
    while True:
        signal.pause()
`

func startEgressCmd(t *testing.T, cmd *exec.Cmd, args ...string) {
	t.Helper()
	cmd.Path = os.Args[0]
	cmd.Args = []string{os.Args[0], "-test.run=^TestRunHelperProcess$"}
	cmd.Env = append(os.Environ(), "EGRESS_RUN_HELPER=1", "EGRESS_RUN_ARGS="+strings.Join(args, "\n"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
}

// recorderScript writes signalRecorder to a file: egress run's
// arguments travel to the helper process one per line.
func recorderScript(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "record.py")
	if err := os.WriteFile(path, []byte(signalRecorder), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func recorded(path string) []string {
	b, _ := os.ReadFile(path)
	return strings.Fields(string(b))
}

func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("egress run did not end in 20s after its command got the signal")
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		t.Fatalf("egress run was killed by %v", ws.Signal())
	}
	return ws.ExitStatus()
}

// TestRunForwardsSignals: a signal sent to egress run reaches CMD once,
// and egress ends with CMD's exit code, as timeout(1) and sudo do.
func TestRunForwardsSignals(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	requireSandbox(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "signals")
			var stderr bytes.Buffer
			cmd := &exec.Cmd{Stderr: &stderr}
			startEgressCmd(t, cmd, "run", "--quiet", "--", python, recorderScript(t), out)
			testnet.WaitFor(t, 20*time.Second, "the command to start", func() bool {
				return len(recorded(out)) > 0 || cmd.ProcessState != nil
			})
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			code := waitExit(t, cmd)
			if got, want := recorded(out), []string{"ready", unix.SignalName(sig)}; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("the command recorded %q, want %q; egress's stderr:\n%s", got, want, stderr.String())
			}
			if code != 100+int(sig) {
				t.Errorf("egress run exited %d, want the command's %d", code, 100+int(sig))
			}
		})
	}
}

// openPTY opens a pseudo-terminal: its controlling side and the terminal
// a session can take as its own.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

// TestRunTerminalSignalsReachCommandOnce: ^C typed in the terminal egress
// run was started from reaches CMD once (not once from the terminal and
// again from egress), and egress keeps running until CMD ends; ^Z stops
// and resumes CMD without leaving it stopped.
func TestRunTerminalSignalsReachCommandOnce(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	requireSandbox(t)
	ptm, pts := openPTY(t)
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	out := filepath.Join(t.TempDir(), "signals")
	cmd := &exec.Cmd{Stdin: pts, Stdout: pts, Stderr: pts,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}}
	startEgressCmd(t, cmd, "run", "--quiet", "--", python, recorderScript(t), out, "stay")
	testnet.WaitFor(t, 20*time.Second, "the command to start", func() bool { return len(recorded(out)) > 0 })

	ptm.Write([]byte{0x03}) // ^C
	testnet.WaitFor(t, 10*time.Second, "the command to get the ^C", func() bool { return len(recorded(out)) > 1 })
	ptm.Write([]byte{0x1a}) // ^Z: stops the command; egress must resume it
	ptm.Write([]byte("quit\n"))
	code := waitExit(t, cmd)
	pts.Close()
	if got, want := recorded(out), []string{"ready", "SIGINT", "quit"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the command recorded %q, want %q (one SIGINT)", got, want)
	}
	if code != 0 {
		t.Errorf("egress run exited %d, want the command's 0", code)
	}
}
