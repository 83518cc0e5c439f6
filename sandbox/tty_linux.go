package sandbox

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The command runs in a process group of its own, as sudo runs one, so
// that a signal egress forwards reaches it once: a signal sent to egress's
// group (a shell's job, timeout(1)) reaches egress alone, which forwards
// it. When egress is the foreground of the terminal on its standard input,
// output or error, the command's group becomes the foreground instead: a
// ^C, ^\ or ^Z typed there reaches the command alone, once. Job control
// follows the command: when it stops (^Z, or reading the terminal from the
// background) egress's job stops too, so that the shell regains the
// terminal, and fg or bg resumes both.

// controlTerminal returns which of the command's standard streams (0, 1,
// 2) is egress's controlling terminal, that file, and whether egress's
// process group is its foreground; false when none is.
func controlTerminal(cmd *exec.Cmd) (fd int, tty *os.File, foreground, ok bool) {
	for i, s := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		f, isFile := s.(*os.File)
		if !isFile || f == nil {
			continue
		}
		// ENOTTY for a file, a pipe or a terminal that is not ours.
		if pg, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP); err == nil {
			return i, f, pg == unix.Getpgrp(), true
		}
	}
	return 0, nil, false, false
}

// ownGroup sets attr to start the command in a process group of its own,
// in the terminal's foreground when egress holds it; it returns egress's
// controlling terminal, or nil.
func ownGroup(cmd *exec.Cmd, attr *syscall.SysProcAttr) *os.File {
	attr.Setpgid = true
	fd, tty, foreground, ok := controlTerminal(cmd)
	if !ok {
		return nil
	}
	if foreground {
		attr.Foreground = true
		attr.Ctty = fd
	}
	return tty
}

func foregroundOf(tty *os.File) int {
	pg, err := unix.IoctlGetInt(int(tty.Fd()), unix.TIOCGPGRP)
	if err != nil {
		return -1
	}
	return pg
}

// setForeground makes pgrp the foreground of tty. From a background group
// that asks for SIGTTOU, which would stop egress: it is ignored meanwhile.
func setForeground(tty *os.File, pgrp int) {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	unix.IoctlSetPointerInt(int(tty.Fd()), unix.TIOCSPGRP, pgrp)
}

// giveBack returns the terminal to egress's group when the command's group
// holds it (the command ended or stopped): never from a shell that has it.
func (sb *Sandbox) giveBack() {
	if foregroundOf(sb.tty) == sb.cmd.Process.Pid {
		setForeground(sb.tty, unix.Getpgrp())
	}
}

const cldStopped = 5 // si_code of a SIGCHLD for a stop (<asm-generic/siginfo.h>)

// followStops answers the command's stops by the terminal (SIGTSTP,
// SIGTTIN, SIGTTOU) until it ends. When egress's group holds the terminal
// (fg brought egress back while the command was in the background), the
// command gets it and goes on. Otherwise egress's job stops the same way,
// the terminal back with egress's group first, so that the shell regains
// it; once continued, the command is too, in the terminal's foreground if
// egress got it back (fg), else in the background (bg).
func (sb *Sandbox) followStops() {
	pid := sb.cmd.Process.Pid
	for {
		var info unix.Siginfo
		// WNOWAIT: the exit status is cmd.Wait's to take.
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || info.Code != cldStopped {
			return
		}
		sig := stopSignal(&info)
		// Take the stop report, then answer it.
		unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WNOHANG, nil)
		if sig != unix.SIGTSTP && sig != unix.SIGTTIN && sig != unix.SIGTTOU {
			continue // a SIGSTOP someone sent: theirs to continue
		}
		own := unix.Getpgrp()
		if foregroundOf(sb.tty) != own {
			sb.giveBack()
			unix.Kill(-own, sig) // as the terminal would have; returns once continued
		}
		if foregroundOf(sb.tty) == own {
			setForeground(sb.tty, pid)
		}
		unix.Kill(-pid, unix.SIGCONT)
	}
}

// stopSignal is si_status of a SIGCHLD siginfo: for CLD_STOPPED, the
// signal that stopped the child. unix.Siginfo leaves its union
// unexported: struct siginfo is si_signo, si_errno, si_code, then the union,
// aligned as a pointer, whose SIGCHLD member is si_pid, si_uid, si_status.
func stopSignal(info *unix.Siginfo) syscall.Signal {
	off := 3*4 + (unsafe.Sizeof(uintptr(0))-4)%8 + 2*4
	return syscall.Signal(*(*int32)(unsafe.Add(unsafe.Pointer(info), off)))
}
