package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
)

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
