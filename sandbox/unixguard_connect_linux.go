package sandbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
// see the top of unixguard_linux.go) and no descriptor is injected (the socket
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
