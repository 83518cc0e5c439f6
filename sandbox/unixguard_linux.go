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
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
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

// struct seccomp_notif, seccomp_notif_resp (linux/seccomp.h).
type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

type seccompResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// pidfdThread is PIDFD_THREAD (Linux 6.9): a pidfd for a thread, not
// only a thread-group leader. A notification names the calling thread,
// whose descriptor table may be its own (unshare(CLONE_FILES)).
const pidfdThread = unix.O_EXCL

// threadPidfds reports whether this kernel has PIDFD_THREAD (a variable:
// tests take the older kernels' way).
var threadPidfds = sync.OnceValue(func() bool {
	fd, err := unix.PidfdOpen(os.Getpid(), pidfdThread)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})

// pidfdOf opens a pidfd whose descriptor table is the calling thread's:
// the thread's own (Linux 6.9 and later), or its thread group's, which
// is the same table unless the thread unshared it (CLONE_FILES). Then the
// socket duplicated may not be the caller's; connecting that one is what
// the guard checks, so the caller reaches nothing it should not, only
// gets an answer about another of its sockets.
func pidfdOf(tid int) (int, error) {
	if threadPidfds() {
		return unix.PidfdOpen(tid, pidfdThread)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return -1, unix.ESRCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			tgid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				break
			}
			return unix.PidfdOpen(tgid, 0)
		}
	}
	return -1, unix.ESRCH
}

// unixGuard serves the filter's notifications: one goroutine reads them,
// one goroutine per notification answers it.
type unixGuard struct {
	f       *os.File
	rc      syscall.RawConn
	diag    *os.File // NETLINK_SOCK_DIAG, opened in the namespace; nil: none
	diagMu  sync.Mutex
	allow   []string // absolute paths, stat'ed at each check: daemons recreate their sockets
	refused func(UnixRefusal)

	busy chan struct{} // a slot per notification being answered: at most maxAnswering
	done chan struct{} // closed by close

	callsMu sync.Mutex
	calls   map[connectKey]*connectCall // connects made, until their answer reaches the caller

	mu     sync.Mutex
	closed bool
}

// maxAnswering bounds the notifications answered at once (each may block
// in a connect, and the command chooses how many it makes). At the bound
// egress stops receiving notifications until one is answered: the kernel
// keeps the next callers waiting in their syscall, as a blocking
// connect() waits, instead of failing them with EAGAIN, which blocking
// clients do not expect (issue 19).
var maxAnswering = 256 // a variable for a test of the bound

// newUnixGuard serves the listener f until close.
func newUnixGuard(f, diag *os.File, allow []string, refused func(UnixRefusal)) (*unixGuard, error) {
	// Non-blocking, the listener is polled by the runtime's poller, so
	// that close wakes the reader. NOTIF_RECV itself blocks regardless of
	// O_NONBLOCK: the reader receives only when poll says one is waiting.
	// os.NewFile registers a descriptor that is non-blocking already.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("unix socket filter: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("unix socket filter: %w", err)
	}
	pf := os.NewFile(uintptr(fd), "seccomp-listener")
	rc, err := pf.SyscallConn()
	if err != nil {
		pf.Close()
		return nil, fmt.Errorf("unix socket filter: %w", err)
	}
	g := &unixGuard{f: pf, rc: rc, diag: diag, allow: allow, refused: refused, busy: make(chan struct{}, maxAnswering), done: make(chan struct{}),
		calls: map[connectKey]*connectCall{}}
	go g.serve()
	return g, nil
}

// close stops serving: the kernel fails the syscalls waiting for an
// answer, and those to come, with ENOSYS. Refusals are no longer reported
// once it returns.
func (g *unixGuard) close() {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.done)
	}
	g.mu.Unlock()
	g.f.Close()
	if g.diag != nil {
		g.diagMu.Lock()
		g.diag.Close()
		g.diagMu.Unlock()
	}
}

func (g *unixGuard) serve() {
	for {
		// A slot before the next notification, not after: at the bound
		// the callers wait in the kernel.
		select {
		case g.busy <- struct{}{}:
		case <-g.done:
			return
		}
		var n seccompNotif
		var rerr syscall.Errno
		hup := false
		err := g.rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			unix.Poll(pfd, 0)
			switch {
			case pfd[0].Revents&unix.POLLIN != 0:
			case pfd[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0:
				// Every process of the filter is gone: nothing more
				// will come (and NOTIF_RECV would fail at once, or
				// block on kernels before 6.6).
				hup = true
				return true
			default:
				// Nothing to receive (POLLOUT alone is a notification
				// received and not yet answered): wait for the poller.
				return false
			}
			_, _, rerr = unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n)))
			return true
		})
		switch {
		case err != nil || hup:
			return // closed, or no process left
		case rerr == unix.ENOENT || rerr == unix.EINTR:
			<-g.busy
			continue // the caller was killed before we read its notification
		case rerr != 0:
			return
		}
		go func() {
			defer func() { <-g.busy }()
			g.answer(n)
		}()
	}
}

// answer performs or refuses one syscall and sends the result.
func (g *unixGuard) answer(n seccompNotif) {
	val, errno, c := g.decide(&n)
	if c == nil {
		g.send(n.ID, val, errno)
		return
	}
	left, ok := g.await(c, n.ID)
	if !ok {
		return
	}
	select {
	case <-c.done:
	case <-left:
		return // a later notification of the thread waits for c instead
	case <-g.done:
		return // the kernel fails the caller with ENOSYS
	}
	// Under callsMu, so that no notification takes c's outcome once it
	// has reached the caller: a connect() the caller makes after that one
	// returned is a call of its own, answered by the kernel (EISCONN).
	g.callsMu.Lock()
	defer g.callsMu.Unlock()
	if g.send(n.ID, 0, c.errno) && g.calls[c.key] == c {
		delete(g.calls, c.key)
	}
}

// send answers a notification, and reports whether the caller was still
// waiting for the answer (the kernel says ENOENT for a caller killed, or
// interrupted by a signal, since it was notified).
func (g *unixGuard) send(id uint64, val int64, errno syscall.Errno) bool {
	resp := seccompResp{ID: id, Val: val}
	if errno != 0 {
		resp = seccompResp{ID: id, Error: -int32(errno)}
	}
	var e syscall.Errno
	if err := g.rc.Control(func(fd uintptr) {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&resp)))
	}); err != nil {
		return false
	}
	return e == 0
}

// valid says whether the notification's caller is still waiting for the
// answer: a pid read before it may have been reused since.
func (g *unixGuard) valid(id uint64) bool {
	ok := false
	g.rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, uintptr(unsafe.Pointer(&id)))
		ok = e == 0
	})
	return ok
}

func (g *unixGuard) report(r UnixRefusal, tid int) {
	r.Process = processInfo(threadGroup(tid))
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed && g.refused != nil {
		g.refused(r)
	}
}

// decide returns the syscall's result: a value, or an errno, or the
// connect whose outcome it is.
func (g *unixGuard) decide(n *seccompNotif) (int64, syscall.Errno, *connectCall) {
	a := nativeArch
	if n.Arch != a.arch && compatArch != nil && n.Arch == compatArch.arch {
		a = *compatArch
	}
	tid := int(n.Pid)
	switch uint32(n.Nr) {
	case a.connect:
		return g.connect(n, tid)
	case a.socket, a.socketpair:
		// A unix datagram socket (the filter lets every other through):
		// its arguments are values, not pointers, nothing to re-check.
		if g.valid(n.ID) {
			g.report(UnixRefusal{Reason: policy.ReasonUnixDatagram}, tid)
		}
		return 0, unix.EACCES, nil
	}
	return 0, unix.ENOSYS, nil
}

// sizeofSockaddrStorage is the longest address connect() takes (struct
// sockaddr_storage): C code passes that size for any family.
const sizeofSockaddrStorage = 128

// connect performs connect(fd, addr, addrlen) for the caller: on the
// caller's own socket, with the address as it was when read.
func (g *unixGuard) connect(n *seccompNotif, tid int) (int64, syscall.Errno, *connectCall) {
	pidfd, err := pidfdOf(tid)
	if err != nil {
		return 0, errnoOf(err), nil
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, int(int32(n.Args[0])), 0)
	if err != nil {
		return 0, errnoOf(err), nil // EBADF, as connect() would say
	}
	defer unix.Close(fd)
	family, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, errnoOf(err), nil // ENOTSOCK
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, errnoOf(err), nil
	}
	key := connectKey{tid: tid, fd: int32(n.Args[0]), ino: st.Ino}
	addrlen := int(int32(n.Args[2]))
	if addrlen < 0 || addrlen > sizeofSockaddrStorage {
		return 0, unix.EINVAL, nil // move_addr_to_kernel's answer
	}
	addr := make([]byte, addrlen, sizeofSockaddrStorage)
	if addrlen > 0 {
		local := []unix.Iovec{{Base: &addr[0], Len: uint64(addrlen)}}
		remote := []unix.RemoteIovec{{Base: uintptr(n.Args[1]), Len: addrlen}}
		if k, err := unix.ProcessVMReadv(tid, local, remote, 0); err != nil || k != addrlen {
			return 0, unix.EFAULT, nil
		}
	}
	switch family {
	case unix.AF_INET, unix.AF_INET6:
		// The namespace's nftables rules decide these.
	case unix.AF_NETLINK:
		// netlink_connect checks CAP_NET_ADMIN, which egress may have and
		// the caller not, for any peer but the kernel.
		if addrlen >= 12 && !bytes.Equal(addr[4:12], make([]byte, 8)) {
			return 0, unix.EACCES, nil
		}
	case unix.AF_UNIX:
		if addrlen >= 2 && binary.NativeEndian.Uint16(addr[0:2]) != unix.AF_UNIX {
			return 0, unix.EINVAL, nil // as the kernel says
		}
		if addrlen > 2 && addr[2] != 0 {
			return g.connectPath(n, tid, fd, key, addr)
		}
		// Abstract and unnamed addresses: the kernel looks abstract names
		// up in the socket's own network namespace, the sandbox's, where
		// only its own processes listen.
	default:
		// Other families may bypass the namespace (AF_VSOCK reaches the
		// host of a virtual machine) or check a capability egress has.
		return 0, unix.EACCES, nil
	}
	if !g.valid(n.ID) {
		return 0, unix.ENOENT, nil
	}
	return g.connectOnce(key, fd, addr)
}

// connectPath connects fd to the socket file named in addr, if allowed.
func (g *unixGuard) connectPath(n *seccompNotif, tid, fd int, key connectKey, addr []byte) (int64, syscall.Errno, *connectCall) {
	path := string(addr[2:])
	if i := strings.IndexByte(path, 0); i >= 0 {
		path = path[:i]
	}
	// Resolve as the caller would: a relative path from its working
	// directory, an absolute one inside its root (a chroot). Magic links
	// (/proc/self/..., /proc/PID/cwd) are not followed, in either kind of
	// path: egress would follow its own, not the caller's, so the answer
	// is ELOOP rather than a socket the caller did not name (issue 19).
	// An absolute symlink met on a relative path resolves from egress's
	// root, not the caller's: a CMD that chroots should connect by
	// absolute paths (README: the unix socket guard).
	proc := "/proc/" + strconv.Itoa(tid) + "/"
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_MAGICLINKS}
	dir := proc + "cwd"
	if filepath.IsAbs(path) {
		dir = proc + "root"
		how.Resolve |= unix.RESOLVE_IN_ROOT
	}
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, unix.ENOENT, nil
	}
	sock, err := unix.Openat2(dirfd, path, &how)
	unix.Close(dirfd)
	if err != nil {
		return 0, errnoOf(err), nil // ENOENT, ENOTDIR, EACCES, ELOOP: as the kernel would say
	}
	defer unix.Close(sock)
	var st unix.Stat_t
	if err := unix.Fstat(sock, &st); err != nil {
		return 0, errnoOf(err), nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, unix.ECONNREFUSED, nil // unix_find_bsd's answer for a file that is no socket
	}
	self := "/proc/self/fd/" + strconv.Itoa(sock)
	if !g.allowed(st) && !g.listening(st) {
		resolved, _ := os.Readlink(self)
		if !g.valid(n.ID) {
			return 0, unix.ENOENT, nil
		}
		g.report(UnixRefusal{Path: path, Socket: resolved, Reason: policy.ReasonUnixSocket}, tid)
		// EACCES, not ECONNREFUSED: the kernel's own answer to a socket
		// one may not write to. Clients say "permission denied" instead of
		// "is the daemon running?", and do not retry.
		return 0, unix.EACCES, nil
	}
	if !g.valid(n.ID) {
		return 0, unix.ENOENT, nil
	}
	// The file opened and checked, through its /proc magic link: the
	// path is not looked up again (and need not fit in sun_path).
	sa := make([]byte, 2, unix.SizeofSockaddrAny)
	*(*uint16)(unsafe.Pointer(&sa[0])) = unix.AF_UNIX
	sa = append(append(sa, self...), 0)
	return g.connectOnce(key, fd, sa)
}

// connectKey names one thread's connect() on one socket: the caller's
// thread, its descriptor number, and the socket's inode (the number may
// name another socket by the time the call is made again; sockfs numbers
// inodes from get_next_ino, a counter it shares with pipes and other
// in-memory files, which comes back to a number only after 2^32 of them).
type connectKey struct {
	tid int
	fd  int32
	ino uint64
}

// connectCall is a connect egress made on a caller's socket.
type connectCall struct {
	key   connectKey
	done  chan struct{} // closed once the connect has returned
	errno syscall.Errno // its outcome, set before done is closed

	// Under unixGuard.callsMu.
	waiter uint64        // the notification that waits for the outcome: the thread's latest
	left   chan struct{} // closed when a later one takes over the wait; nil: none waits
}

// await makes notification id the one that waits for c's outcome, and
// returns a channel closed when a later notification takes over, or
// false when one has already. A thread makes one syscall at a time: a
// later notification of the thread for the same call means it gave up
// waiting for the earlier one (the kernel withdrew it), so the earlier
// one's goroutine may end. Without that, a thread signalled again and
// again during a long connect would fill every answering slot with
// notifications nobody waits for (maxAnswering), and stall the connects
// of the whole sandbox until its own ended. Notification ids increase
// (seccomp_next_notify_id): the larger id is the later call.
func (g *unixGuard) await(c *connectCall, id uint64) (<-chan struct{}, bool) {
	g.callsMu.Lock()
	defer g.callsMu.Unlock()
	if c.left != nil {
		if int64(id-c.waiter) < 0 {
			return nil, false
		}
		close(c.left)
	}
	c.waiter, c.left = id, make(chan struct{})
	return c.left, true
}

// maxKeptCalls bounds the connects kept whose outcome has reached no
// caller (see connectOnce); past it, they are forgotten.
const maxKeptCalls = 1024

// connectOnce makes the connect a checked notification asked for, unless
// egress is making the same thread's connect on the same socket, or made
// one whose answer reached no caller: then it returns that one, whose
// outcome is this notification's answer.
//
// Why (issue 19): egress answers a connect() by performing it itself, on
// a duplicate of the caller's socket (pidfd_getfd: the same socket
// object), and sending its result (SECCOMP_IOCTL_NOTIF_SEND); the
// caller's own syscall never goes on (no SECCOMP_USER_NOTIF_FLAG_CONTINUE,
// see the top of the file) and no descriptor is injected (the socket
// is already the caller's). While egress's connect blocks (a listener's
// full backlog, a slow TCP handshake), the caller waits in the kernel for
// the answer, interruptibly: a caught signal ends the wait, the
// notification is withdrawn (the send fails with ENOENT), but egress's
// connect goes on. With SA_RESTART the kernel then restarts the call
// with the same arguments, which arrives as a new notification. A second
// connect on a unix socket would race the first (unix_stream_connect):
// one of them connects it, the other fails with EISCONN, and the caller
// saw the failure whenever it was the other that answered it; restarted
// twice, the last connect waited for a wake-up that an idle listener
// never gives (a blocking TCP connect's second connect waits for the
// handshake in flight, but is one more connect all the same). POSIX has
// a connect() interrupted by a signal go on asynchronously, and the
// kernel's own restart of a TCP connect waits for it and returns its
// outcome: so does a restart here, on any socket.
//
// SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV would avoid the restart by
// holding back every non-fatal signal until egress answers: timeouts and
// Ctrl-C too, for as long as a connect blocks. Not that.
//
// A connect whose answer reached no caller (every notification for it was
// interrupted) is kept, with its outcome, until the thread's next
// connect() on that socket takes it: the restart may come only once the
// connect has ended, and a thread that gave up on the call (EINTR,
// without SA_RESTART) finds the socket in the state egress's connect left
// it, as a TCP socket whose interrupted connect completed meanwhile
// answers the next connect() with that connect's outcome.
func (g *unixGuard) connectOnce(key connectKey, fd int, addr []byte) (int64, syscall.Errno, *connectCall) {
	g.callsMu.Lock()
	c, made := g.calls[key]
	if !made {
		if len(g.calls) >= maxKeptCalls {
			for k, old := range g.calls {
				select {
				case <-old.done:
					delete(g.calls, k)
				default: // in flight: fewer than maxAnswering
				}
			}
		}
		c = &connectCall{key: key, done: make(chan struct{})}
		g.calls[key] = c
	}
	g.callsMu.Unlock()
	if !made {
		c.errno = rawConnect(fd, addr)
		close(c.done)
	}
	return 0, 0, c
}

// allowed says whether st is one of the allowed sockets, as they are now.
func (g *unixGuard) allowed(st unix.Stat_t) bool {
	for _, p := range g.allow {
		var a unix.Stat_t
		if unix.Stat(p, &a) == nil && a.Dev == st.Dev && a.Ino == st.Ino {
			return true
		}
	}
	return false
}

// listening says whether a socket of the sandbox's namespace listens on
// the file st: processes of the sandbox may serve each other over a
// socket file (Python's multiprocessing does). The kernel reports the
// file's inode number in 32 bits, enough on every filesystem whose inode
// numbers fit; an inode beyond them would need 2^32 files to collide.
func (g *unixGuard) listening(st unix.Stat_t) bool {
	if g.diag == nil {
		return false
	}
	g.diagMu.Lock()
	defer g.diagMu.Unlock()
	files, err := listeningFiles(int(g.diag.Fd()))
	if err != nil {
		return false
	}
	if st.Ino > 0xffffffff {
		// sock_diag reports 32 bits of the inode number: a longer one
		// cannot be told from another file's.
		return false
	}
	for _, f := range files {
		// s_dev, the kernel's dev_t: 12 bits of major, 20 of minor.
		if f.ino == uint32(st.Ino) && f.dev>>20 == unix.Major(uint64(st.Dev)) && f.dev&0xfffff == unix.Minor(uint64(st.Dev)) {
			return true
		}
	}
	return false
}

type vfsFile struct{ ino, dev uint32 }

// listeningFiles asks sock_diag (linux/unix_diag.h) for the files the
// listening unix sockets of the namespace are bound to.
func listeningFiles(fd int) ([]vfsFile, error) {
	const (
		sockDiagByFamily = 20
		udiagShowVFS     = 0x2
		unixDiagVFS      = 1
		tcpListen        = 10
	)
	req := make([]byte, unix.NLMSG_HDRLEN+24)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	body := req[unix.NLMSG_HDRLEN:]
	body[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(body[4:], 1<<tcpListen)
	binary.NativeEndian.PutUint32(body[12:], udiagShowVFS)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var files []vfsFile
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return files, nil
			case unix.NLMSG_ERROR:
				return nil, errors.New("sock_diag: error")
			}
			// struct unix_diag_msg (16 bytes), then attributes.
			for a := m.Data[min(16, len(m.Data)):]; len(a) >= 4; {
				l := int(binary.NativeEndian.Uint16(a))
				if l < 4 || l > len(a) {
					break
				}
				if binary.NativeEndian.Uint16(a[2:]) == unixDiagVFS && l >= 12 {
					files = append(files, vfsFile{ino: binary.NativeEndian.Uint32(a[4:]), dev: binary.NativeEndian.Uint32(a[8:])})
				}
				a = a[min((l+3)&^3, len(a)):]
			}
		}
	}
}

// rawConnect calls connect(2) with addr as it is, and returns its errno.
// A signal may interrupt a blocking connect; with SA_RESTART, as the Go
// runtime installs its handlers, the kernel resumes the wait.
func rawConnect(fd int, addr []byte) syscall.Errno {
	p := unsafe.Pointer(unsafe.SliceData(addr[:cap(addr)]))
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(p), uintptr(len(addr)))
	return e
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return unix.EIO
}

// threadGroup is the process (thread group) of thread tid.
func threadGroup(tid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return pid
			}
		}
	}
	return tid
}
