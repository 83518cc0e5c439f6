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
// ^C, ^\ or ^Z typed there reaches the command alone, once, and egress
// takes the terminal back when the command stops or ends.

// controlTerminal returns which of the command's standard streams (0, 1,
// 2) is the terminal whose foreground is egress's process group, and that
// file; false when none is.
func controlTerminal(cmd *exec.Cmd) (int, *os.File, bool) {
	for i, s := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		f, ok := s.(*os.File)
		if !ok || f == nil {
			continue
		}
		pg, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP)
		if err == nil && pg == unix.Getpgrp() {
			return i, f, true
		}
	}
	return 0, nil, false
}

// ownGroup sets attr to start the command in a process group of its own,
// in the terminal's foreground when egress holds it; it returns that
// terminal, or nil.
func ownGroup(cmd *exec.Cmd, attr *syscall.SysProcAttr) *os.File {
	attr.Setpgid = true
	fd, tty, ok := controlTerminal(cmd)
	if !ok {
		return nil
	}
	attr.Foreground = true
	attr.Ctty = fd
	return tty
}

// setForeground makes pgrp the foreground of tty. From a background group
// that asks for SIGTTOU, which would stop egress: it is ignored meanwhile.
func setForeground(tty *os.File, pgrp int) {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	unix.IoctlSetPointerInt(int(tty.Fd()), unix.TIOCSPGRP, pgrp)
}

const cldStopped = 5 // si_code of a SIGCHLD for a stop (<asm-generic/siginfo.h>)

// followStops stops egress's group when the command is stopped from the
// terminal (^Z, or a read from it while in the background), so that the
// shell gets the terminal back and can resume the job; when egress is
// continued (fg, bg), so is the command, in the foreground if egress got
// the terminal back. It returns when the command has ended.
func (sb *Sandbox) followStops() {
	pid := sb.cmd.Process.Pid
	for {
		var info unix.Siginfo
		// WNOWAIT: the exit status is cmd.Wait's to take.
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		if info.Code != cldStopped {
			return
		}
		sig := stopSignal(&info)
		// Take the stop report, then answer it.
		unix.Waitid(unix.P_PID, pid, &info, unix.WSTOPPED|unix.WNOHANG, nil)
		if sig != unix.SIGTSTP && sig != unix.SIGTTIN && sig != unix.SIGTTOU {
			continue // a SIGSTOP someone sent: theirs to continue
		}
		own := unix.Getpgrp()
		setForeground(sb.tty, own)
		unix.Kill(-own, sig) // as the terminal would have; returns once continued
		if pg, err := unix.IoctlGetInt(int(sb.tty.Fd()), unix.TIOCGPGRP); err == nil && pg == own {
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
