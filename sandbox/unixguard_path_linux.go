package sandbox

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/policy"
)

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
