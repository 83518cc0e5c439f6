package sandbox

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Process is a process of the sandbox.
type Process struct {
	PID  int
	Comm string // /proc/PID/comm: the name ps shows
	Exe  string // /proc/PID/exe, "" when unreadable
}

func (p Process) String() string {
	if p.PID == 0 {
		return ""
	}
	return p.Comm + " (pid " + strconv.Itoa(p.PID) + ")"
}

// Owner finds the process in the sandbox that owns the TCP socket whose
// local address is client: the client address of a connection egress
// accepted from the sandbox. It must be called while the client's socket
// is open. It reads /proc: the namespace's TCP tables for the socket's
// inode, then the descriptors of the processes in the namespace.
func (sb *Sandbox) Owner(client netip.AddrPort) (Process, bool) {
	if sb.netns == "" {
		return Process{}, false
	}
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	sb.ownerMu.Lock()
	defer sb.ownerMu.Unlock()
	// The processes of the namespace are remembered: listing them means
	// reading every /proc/PID/ns/net of the host. A socket not found
	// among them (a process started since) triggers one fresh listing.
	for fresh := sb.pids == nil; ; fresh = true {
		if fresh {
			sb.pids = sb.pidsInNetns()
		}
		if p, ok := sb.owner(client); ok {
			return p, true
		}
		if fresh {
			return Process{}, false
		}
	}
}

func (sb *Sandbox) owner(client netip.AddrPort) (Process, bool) {
	var inode string
	for _, pid := range append([]int{sb.Pid()}, sb.pids...) {
		dir := "/proc/" + strconv.Itoa(pid) + "/net/"
		var ok bool
		if inode, ok = findInode(dir+"tcp", client); ok {
			break
		}
		if inode, ok = findInode(dir+"tcp6", client); ok {
			break
		}
		if _, err := os.Stat(dir + "tcp"); err == nil {
			break // the table was readable: the socket is not there
		}
	}
	if inode == "" || inode == "0" {
		return Process{}, false
	}
	target := "socket:[" + inode + "]"
	for _, pid := range sb.pids {
		fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && l == target {
				return processInfo(pid), true
			}
		}
	}
	return Process{}, false
}

// pidsInNetns lists the processes whose network namespace is the
// sandbox's, the command first.
func (sb *Sandbox) pidsInNetns() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := strconv.Itoa(os.Getpid())
	pids := []int{}
	for _, e := range ents {
		name := e.Name()
		if name == self || name[0] < '0' || name[0] > '9' {
			continue
		}
		if l, err := os.Readlink("/proc/" + name + "/ns/net"); err == nil && l == sb.netns {
			if pid, err := strconv.Atoi(name); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func processInfo(pid int) Process {
	p := Process{PID: pid}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil {
		p.Comm = strings.TrimSpace(string(b))
	}
	p.Exe, _ = os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return p
}

// findInode returns the inode of the socket with local address want in a
// /proc/net/tcp or tcp6 table.
func findInode(path string, want netip.AddrPort) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		local, ok := parseProcAddr(fields[1])
		if ok && local == want && fields[3] != "0A" { // 0A: LISTEN
			return fields[9], true
		}
	}
	return "", false
}

// parseProcAddr parses "0100007F:1F90" or the 32-digit IPv6 form: the
// address as 32-bit words in host byte order, the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	var ip netip.Addr
	if len(raw) == 4 {
		ip = netip.AddrFrom4([4]byte(raw))
	} else {
		ip = netip.AddrFrom16([16]byte(raw)).Unmap()
	}
	return netip.AddrPortFrom(ip, uint16(port)), true
}
