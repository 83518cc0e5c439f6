//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/internal/testwait"
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
	t.Parallel()
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
			testwait.Until(t, 20*time.Second, "the command to start", func() bool {
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
	t.Parallel()
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
	testwait.Until(t, 20*time.Second, "the command to start", func() bool { return len(recorded(out)) > 0 })

	ptm.Write([]byte{0x03}) // ^C
	testwait.Until(t, 10*time.Second, "the command to get the ^C", func() bool { return len(recorded(out)) > 1 })
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

// shellSession is an interactive bash on a pseudo-terminal, with job
// control, as a user's terminal runs egress run.
type shellSession struct {
	ptm    *os.File
	mu     sync.Mutex
	screen bytes.Buffer
}

func (s *shellSession) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.screen.String()
}

func (s *shellSession) typeIn(b string) { s.ptm.Write([]byte(b)) }

// command types line and Enter once the shell shows its prompt, again if
// the shell did not echo it (a shell taking the terminal back may flush
// what was typed meanwhile).
func (s *shellSession) command(t *testing.T, line string) {
	t.Helper()
	for attempt := 0; attempt < 5; attempt++ {
		from := len(s.text())
		testwait.Until(t, 10*time.Second, "the prompt", func() bool { return strings.HasSuffix(strings.TrimRight(stripCSI(s.text()), " "), "$") })
		s.typeIn(line + "\n")
		if testwait.Poll(2*time.Second, func() error {
			if !strings.Contains(stripCSI(s.text()[from:]), line) {
				return fmt.Errorf("no echo of %q", line)
			}
			return nil
		}) == nil {
			return
		}
	}
	t.Fatalf("the shell does not take %q; screen:\n%s", line, s.text())
}

// nudgeUntil does act, then waits up to pace for cond, again until cond
// holds, or fails the test after timeout saying what did not happen: for
// a key that a job takes only once it has the terminal.
func (s *shellSession) nudgeUntil(t *testing.T, timeout, pace time.Duration, what string, act func(), cond func() bool) {
	t.Helper()
	holds := func() error {
		if !cond() {
			return fmt.Errorf("%s; screen:\n%s", what, s.text())
		}
		return nil
	}
	testwait.UntilNil(t, timeout, func() error {
		if holds() == nil {
			return nil
		}
		act()
		return testwait.Poll(pace, holds)
	})
}

// stripCSI drops bash's bracketed-paste switches from the screen text.
func stripCSI(s string) string {
	return strings.NewReplacer("\x1b[?2004h", "", "\x1b[?2004l", "").Replace(s)
}

// startShell starts bash -i on a new pseudo-terminal with env added; $E in
// it runs "egress run" with EGRESS_RUN_ARGS.
func startShell(t *testing.T, env ...string) *shellSession {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	ptm, pts := openPTY(t)
	s := &shellSession{ptm: ptm}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			s.mu.Lock()
			s.screen.Write(buf[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	cmd := exec.Command(bash, "--norc", "--noprofile", "-i")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	cmd.Env = append(os.Environ(), append(env, "EGRESS_RUN_HELPER=1", "PS1=$ ",
		"E="+os.Args[0]+" -test.run=^TestRunHelperProcess$")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return s
}

// TestRunJobControl: in an interactive shell, egress run behaves as the
// command it runs would: ^Z stops the job and fg resumes it with the
// terminal, ^C then reaches the command once; started in the background,
// the command stops when it reads the terminal and fg gives it the
// terminal.
func TestRunJobControl(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	requireSandbox(t)
	t.Run("^Z, fg, ^C", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "signals")
		s := startShell(t, "EGRESS_RUN_ARGS="+strings.Join([]string{"run", "--quiet", "--", python, recorderScript(t), out, "stay"}, "\n"))
		s.command(t, "$E")
		testwait.Until(t, 20*time.Second, "the command to start", func() bool { return len(recorded(out)) > 0 })
		s.typeIn("\x1a") // ^Z
		testwait.Until(t, 10*time.Second, "the shell to say the job stopped", func() bool { return strings.Contains(s.text(), "Stopped") })
		s.command(t, "fg")
		// The command is in the foreground again once ^C reaches it; a ^C
		// gets 100 ms to be recorded before the next (one SIGINT is wanted).
		s.nudgeUntil(t, 10*time.Second, 100*time.Millisecond, "^C after fg did not reach the command",
			func() { s.typeIn("\x03") }, func() bool { return len(recorded(out)) >= 2 })
		s.typeIn("quit\n")
		testwait.Until(t, 10*time.Second, "the command to end", func() bool { return strings.Contains(strings.Join(recorded(out), " "), "quit") })
		if got := strings.Join(recorded(out), " "); got != "ready SIGINT quit" {
			t.Errorf("the command recorded %q, want one SIGINT; screen:\n%s", got, s.text())
		}
	})
	t.Run("started in the background, fg", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "read")
		script := filepath.Join(t.TempDir(), "read.py")
		os.WriteFile(script, []byte("import sys\nline = sys.stdin.readline()\nopen(sys.argv[1], 'w').write('READ:' + line)\n"), 0o644)
		s := startShell(t, "EGRESS_RUN_ARGS="+strings.Join([]string{"run", "--quiet", "--", python, script, out}, "\n"))
		s.command(t, "$E &")
		s.nudgeUntil(t, 20*time.Second, 200*time.Millisecond, "the job did not stop reading the terminal",
			func() { s.command(t, "jobs") }, func() bool { return strings.Contains(s.text(), "Stopped") })
		s.command(t, "fg")
		s.nudgeUntil(t, 10*time.Second, 200*time.Millisecond, "the command did not read the line after fg",
			func() { s.typeIn("hello\n") }, func() bool {
				b, _ := os.ReadFile(out)
				return strings.TrimSpace(string(b)) == "READ:hello"
			})
	})
}
