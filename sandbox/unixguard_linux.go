package sandbox

// The unix socket guard. A network namespace scopes TCP, UDP and abstract
// unix sockets, not filesystem ones: without the guard, a process in the
// sandbox reaches any daemon listening on a socket file (a container
// runtime's, another proxy's) and through it the network.
//
// The setup process installs a seccomp filter (seccomp_unotify(2)) on the
// thread that executes the command, so that the command and everything it
// starts inherit it:
//
//   - connect() is handed to egress (SECCOMP_RET_USER_NOTIF), which
//     performs it itself on a duplicate of the caller's socket
//     (pidfd_getfd(2): the same socket object) with the address it read
//     from the caller's memory, and returns the result. It never lets the
//     caller's own syscall go on (SECCOMP_USER_NOTIF_FLAG_CONTINUE): the
//     kernel would read the address again, and another thread may have
//     rewritten it in between, or made the descriptor another socket.
//     A filesystem address is resolved by egress, compared with the
//     allowed sockets by device and inode, and reached through
//     /proc/self/fd/N of the file it opened, so what was checked is what
//     is connected. A socket file a process of the sandbox listens on is
//     allowed too: sock_diag, asked inside the namespace (a unix socket
//     belongs to the namespace of its creator), lists those files.
//     A caught signal interrupts the caller's wait for the answer, not
//     egress's connect; restarted (SA_RESTART), the call arrives as a new
//     notification, which takes the outcome of the connect in flight
//     (connectOnce).
//   - socket() and socketpair() of AF_UNIX datagram sockets (SOCK_DGRAM,
//     and SOCK_RAW, which the kernel makes a datagram socket) fail with
//     EACCES, reported like a refused connect(): such a socket can
//     sendmsg() to any path, behind a pointer the filter cannot follow,
//     and a connected pair too (unix_dgram_sendmsg honours msg_name). Stream and seqpacket sockets reach a peer
//     only through connect() (their sendmsg refuses an address).
//   - io_uring fails with ENOSYS: its IORING_OP_CONNECT bypasses seccomp.
//   - the 32-bit compatibility syscalls are watched likewise; socketcall,
//     whose arguments sit behind a pointer, fails with EACCES; a syscall
//     of any other architecture kills the process.

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// archSyscalls are the numbers of the syscalls the filter watches on one
// architecture (AUDIT_ARCH_*).
type archSyscalls struct {
	arch                        uint32
	socket, connect, socketpair uint32
	seccomp                     uint32
	socketcall                  int // -1: the architecture has none
	ioUring                     [3]uint32
	x32                         bool // refuse x86-64's x32 ABI (nr with bit 30 set)
}

// Offsets in struct seccomp_data (linux/seccomp.h); the arguments are
// 64-bit, their low halves first on these little-endian machines.
const (
	dataNr   = 0
	dataArch = 4
	dataArg0 = 16
	dataArg1 = 24
)

// unixFilter is the filter's BPF program for the native architecture and
// its compatibility mode, if any.
func unixFilter(native archSyscalls, compat *archSyscalls) ([]unix.SockFilter, error) {
	if native.arch == 0 {
		return nil, fmt.Errorf("the unix socket filter does not know the syscalls of %s", runtime.GOARCH)
	}
	const (
		ld    = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		and   = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		errno = unix.SECCOMP_RET_ERRNO
	)
	p := bpfProg{labels: map[string]int{}}
	p.stmt(ld, dataArch)
	p.jump(jeq, native.arch, "native", "")
	if compat != nil {
		p.jump(jeq, compat.arch, "compat", "")
	}
	p.stmt(ret, unix.SECCOMP_RET_KILL_PROCESS)
	watch := func(label string, a archSyscalls) {
		p.label(label)
		p.stmt(ld, dataNr)
		if a.x32 {
			p.jump(jge, 0x40000000, "enosys", "")
		}
		p.jump(jeq, a.connect, "notify", "")
		p.jump(jeq, a.socket, "socket", "")
		p.jump(jeq, a.socketpair, "socket", "")
		p.jump(jeq, a.seccomp, "seccomp", "")
		if a.socketcall >= 0 {
			p.jump(jeq, uint32(a.socketcall), "eacces", "")
		}
		for _, nr := range a.ioUring {
			p.jump(jeq, nr, "enosys", "")
		}
		p.stmt(ret, unix.SECCOMP_RET_ALLOW)
	}
	watch("native", native)
	if compat != nil {
		watch("compat", *compat)
	}
	// socket(domain, type, protocol), socketpair(domain, type, ...): only
	// AF_UNIX datagram sockets are refused; the type carries flags
	// (SOCK_CLOEXEC, SOCK_NONBLOCK) above SOCK_TYPE_MASK.
	// seccomp(SECCOMP_SET_MODE_FILTER, flags, ...): a filter of the
	// command's own with a listener would take the notifications from
	// egress's the moment egress's closes (the kernel hands them to the
	// newest listener), and could let every connect() through: refused,
	// as the kernel does while egress's listener is open.
	p.label("seccomp")
	p.stmt(ld, dataArg1)
	p.stmt(and, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER)
	p.jump(jeq, 0, "allow", "")
	p.stmt(ret, errno|uint32(unix.EBUSY))
	// Only unix, IPv4, IPv6 and netlink sockets are created: others
	// (AF_VSOCK reaches a virtual machine's host, AF_TIPC, AF_RDS, ...)
	// could get out without a connect() the supervisor sees.
	p.label("socket")
	p.stmt(ld, dataArg0)
	p.jump(jeq, unix.AF_INET, "allow", "")
	p.jump(jeq, unix.AF_INET6, "allow", "")
	p.jump(jeq, unix.AF_NETLINK, "allow", "")
	p.jump(jeq, unix.AF_UNIX, "", "eafnosupport")
	p.stmt(ld, dataArg1)
	p.stmt(and, 0xf)
	p.jump(jeq, unix.SOCK_STREAM, "allow", "")
	p.jump(jeq, unix.SOCK_SEQPACKET, "allow", "")
	p.label("notify") // the supervisor refuses it, to report it
	p.stmt(ret, unix.SECCOMP_RET_USER_NOTIF)
	p.label("allow")
	p.stmt(ret, unix.SECCOMP_RET_ALLOW)
	p.label("enosys")
	p.stmt(ret, errno|uint32(unix.ENOSYS))
	p.label("eacces")
	p.stmt(ret, errno|uint32(unix.EACCES))
	p.label("eafnosupport")
	p.stmt(ret, errno|uint32(unix.EAFNOSUPPORT))
	return p.assemble()
}

// bpfProg assembles classic BPF with jumps to labels.
type bpfProg struct {
	ins    []unix.SockFilter
	labels map[string]int
	jumps  []bpfJump
}

type bpfJump struct {
	at     int
	jt, jf string // "": the next instruction
}

func (p *bpfProg) label(name string) { p.labels[name] = len(p.ins) }
func (p *bpfProg) stmt(code uint16, k uint32) {
	p.ins = append(p.ins, unix.SockFilter{Code: code, K: k})
}

func (p *bpfProg) jump(code uint16, k uint32, jt, jf string) {
	p.jumps = append(p.jumps, bpfJump{at: len(p.ins), jt: jt, jf: jf})
	p.stmt(code, k)
}

func (p *bpfProg) assemble() ([]unix.SockFilter, error) {
	for _, j := range p.jumps {
		for _, t := range []struct {
			label string
			off   *uint8
		}{{j.jt, &p.ins[j.at].Jt}, {j.jf, &p.ins[j.at].Jf}} {
			if t.label == "" {
				continue
			}
			to, ok := p.labels[t.label]
			if d := to - j.at - 1; ok && d >= 0 && d <= 255 {
				*t.off = uint8(d)
			} else {
				return nil, fmt.Errorf("bpf: cannot jump from %d to %q", j.at, t.label)
			}
		}
	}
	return p.ins, nil
}

// installUnixFilter installs the filter on the calling thread, which must
// be locked to its goroutine and go on to execute the command, and
// returns the listener egress serves. As root the setup process still has
// CAP_SYS_ADMIN and installs it without no_new_privs, so that setuid
// programs keep working in the sandbox; without it (rootless) the kernel
// requires no_new_privs.
func installUnixFilter() (*os.File, error) {
	prog, err := unixFilter(nativeArch, compatArch)
	if err != nil {
		return nil, err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	seccomp := func() (uintptr, syscall.Errno) {
		fd, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
			unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
		return fd, e
	}
	fd, e := seccomp()
	if e == unix.EACCES {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("unix socket filter: no_new_privs: %w", err)
		}
		fd, e = seccomp()
	}
	runtime.KeepAlive(prog)
	if e != 0 {
		return nil, fmt.Errorf("unix socket filter: seccomp: %w", e)
	}
	return os.NewFile(fd, "seccomp-listener"), nil
}
