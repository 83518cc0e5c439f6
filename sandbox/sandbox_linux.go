// Package sandbox runs a command in a new network namespace whose only way
// out is egress: every TCP connection is redirected to a transparent
// listener, every DNS query to a DNS listener, and everything else is
// refused (see Configure). It works as root and, through a user namespace,
// without root where the kernel allows unprivileged user namespaces.
//
// The process calling Start stays in its own namespace and gets the
// listening sockets, created inside the new one, to serve: a connection
// accepted on them came from the sandbox, and whatever egress dials
// afterwards goes out through the original namespace. The package sets
// up the plumbing only; it decides nothing and serves nothing.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/firewall/nflog"
	"github.com/egress-proxy/egress/firewall/nfqueue"
	"github.com/egress-proxy/egress/policy"
)

// childEnv marks the re-executed egress as the sandbox's setup process;
// its value is the descriptor of the socket back to the parent.
const childEnv = "_EGRESS_SANDBOX_CHILD"

// filterEnv, when set, is the descriptor of a file holding the connect
// filter as JSON (see Config.Filter).
const filterEnv = "_EGRESS_SANDBOX_FILTER"

// noGuardEnv, set by tests only (Config.noUnixGuard), makes the setup
// process leave the unix socket guard out.
const noGuardEnv = "_EGRESS_SANDBOX_NO_UNIX_GUARD"

// holdEnv, when set (Config.Hold), makes the setup process hold each new
// connection's SYN in queue holdQueue (see firewall.AddHold).
const holdEnv = "_EGRESS_SANDBOX_HOLD"

const holdQueue = 0x6567

// logGroup is the NFLOG group of refused packets inside the namespace
// (each namespace has its own groups).
const logGroup = 0x6567 // "eg"

// setupTimeout bounds the namespace's setup: the wait for its sockets.
const setupTimeout = 10 * time.Second

// Exit codes of a sandbox that could not run its command, as env(1),
// chroot(1) and docker use them.
const (
	ExitSetupFailed = 125 // the sandbox itself failed
	ExitCannotExec  = 126 // the command was found but could not run
	ExitNotFound    = 127 // the command was not found
)

// Config says what to run.
type Config struct {
	// Args is the command and its arguments; Args[0] is looked up in
	// Env's PATH inside the sandbox.
	Args []string
	// Env is the command's environment; nil means os.Environ(). Start
	// adds the proxy variables (see ProxyEnv).
	Env []string
	// Stdin, Stdout, Stderr as in os/exec; nil means os.Stdin and so on.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Exe is the egress executable to re-execute as the setup process;
	// "" means /proc/self/exe. The executable must call MaybeChild early.
	Exe string
	// ExeArgs are the arguments that make Exe reach MaybeChild, before
	// the command's ("run" for egress).
	ExeArgs []string
	// Filter, when set, makes a connect() to a destination it refuses fail
	// at once with ECONNREFUSED (a TCP reset to the SYN), as a firewall
	// would, instead of reaching Transparent; Lease lets the addresses of
	// allowed names through. Nil sends every TCP connection to
	// Transparent, which can only refuse it after the kernel accepted it.
	Filter *policy.ConnectFilter
	// AllowUnix are the socket files (absolute paths; symlinks to them
	// count as them) the command may connect() to. Every other socket
	// file is refused with EACCES, and unix datagram sockets are not
	// created at all (see unixguard_linux.go). Abstract unix sockets,
	// scoped to the namespace, stay open.
	AllowUnix []string
	// UnixRefused, when set, is called for each refusal, from another
	// goroutine, until Close.
	UnixRefused func(UnixRefusal)
	// Hold, when set, holds the SYN of each new TCP connection that the
	// filter passes until Queue's reader answers it (issue 21: the
	// connect() ends as the destination answers). Where the kernel has
	// no NFQUEUE target, HoldError says why, and connections go on at
	// once, as without Hold.
	Hold bool

	noUnixGuard bool // tests: measure without the guard
}

// Drop is one packet the namespace's rules refused (see Configure).
type Drop = nflog.Packet

// Sandbox is a running command and the listeners of its namespace. Serve
// the listeners, call Wait, then Close.
type Sandbox struct {
	// Transparent receives every TCP connection of the sandbox, except
	// those to its own listeners.
	Transparent net.Listener
	// HTTP is the listener HTTP_PROXY and HTTPS_PROXY point at.
	HTTP net.Listener
	// DNS and DNSTCP receive every DNS query (port 53, UDP and TCP).
	DNS    net.PacketConn
	DNSTCP net.Listener
	// ProxyURL is the value of HTTP_PROXY and HTTPS_PROXY in the sandbox.
	ProxyURL string
	// Rootless is true when the sandbox runs in a user namespace.
	Rootless bool

	cmd    *exec.Cmd
	nflog  *os.File
	leases *firewall.Leaser // nil without Config.Filter
	queue  *nfqueue.Queue   // nil without Config.Hold or where it failed
	// HoldError says why Config.Hold could not be done ("" when it was).
	HoldError string
	guard     *unixGuard
	drops     *nflog.Reader
	netns     string   // "net:[inode]" of the namespace
	tty       *os.File // egress's controlling terminal among the command's streams, or nil
	closed    bool

	ownerMu sync.Mutex
	pids    []int // processes in the namespace, as last listed by Owner
}

// ProxyEnv is the environment the command gets on top of Config.Env:
// HTTP(S)_PROXY in both cases, and an empty NO_PROXY so that a NO_PROXY
// from the caller's shell does not send a proxy-aware client around the
// proxy (it would reach the transparent listener anyway, less well
// identified). EGRESS_RUN=1 tells code that checks its own requirements
// (examples/plugin-python/egress_requirements.py) that it runs under egress
// run, and EGRESS_PROXY, which survives unsetting the proxy variables,
// where to ask whether a connect() refused under it was refused by
// egress's policy or by the destination (both are ECONNREFUSED, since
// egress run holds the SYN until the destination answered: issue 21).
func ProxyEnv(proxyURL string) []string {
	return []string{
		"HTTP_PROXY=" + proxyURL, "HTTPS_PROXY=" + proxyURL,
		"http_proxy=" + proxyURL, "https_proxy=" + proxyURL,
		"NO_PROXY=", "no_proxy=",
		"EGRESS_RUN=1", "EGRESS_PROXY=" + proxyURL,
	}
}

// message is what the setup process sends back with the sockets.
type message struct {
	Error    string `json:"error,omitempty"`
	HTTPPort uint16 `json:"http_port"`
	DropLog  bool   `json:"drop_log"`
	Leases   bool   `json:"leases"` // the nftables socket follows the drop log's
	Guard    bool   `json:"guard"`  // the seccomp listener follows, then a sock_diag socket
	Queue    bool   `json:"queue"`  // the NFQUEUE socket follows the guard's
	HoldErr  string `json:"hold_error,omitempty"`
	NetNS    string `json:"netns"` // readlink /proc/self/ns/net
}

// Start creates the namespace, its listeners and rules, and starts the
// command in it. The command is running when Start returns; its
// connections wait in the listeners' backlogs until they are served.
func Start(cfg Config) (*Sandbox, error) {
	if len(cfg.Args) == 0 {
		return nil, errors.New("sandbox: no command")
	}
	for _, p := range cfg.AllowUnix {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("sandbox: unix socket %q: not an absolute path", p)
		}
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: socketpair: %w", err)
	}
	parentEnd := os.NewFile(uintptr(pair[0]), "sandbox-parent")
	childEnd := os.NewFile(uintptr(pair[1]), "sandbox-child")
	defer parentEnd.Close()

	exe := cfg.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	env = append(withoutVar(withoutVar(withoutVar(withoutVar(env, childEnv), filterEnv), noGuardEnv), holdEnv), childEnv+"=3")
	if cfg.noUnixGuard {
		env = append(env, noGuardEnv+"=1")
	}
	if cfg.Hold {
		env = append(env, holdEnv+"=1")
	}
	extra := []*os.File{childEnd}
	if cfg.Filter != nil {
		ff, err := filterFile(cfg.Filter)
		if err != nil {
			childEnd.Close()
			return nil, err
		}
		defer ff.Close()
		extra = append(extra, ff)
		env = append(env, filterEnv+"=4")
	}
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       append(append([]string{"egress"}, cfg.ExeArgs...), cfg.Args...),
		Env:        env,
		Stdin:      cfg.Stdin,
		Stdout:     cfg.Stdout,
		Stderr:     cfg.Stderr,
		ExtraFiles: extra,
	}
	if cmd.Stdin == nil {
		cmd.Stdin = os.Stdin
	}
	if cmd.Stdout == nil {
		cmd.Stdout = os.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	sb := &Sandbox{cmd: cmd}
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if os.Geteuid() != 0 {
		// Map only ourselves, to the same ids, so that the command sees
		// its usual uid; CAP_NET_ADMIN (ambient, held across the exec of
		// the setup process) lets the setup configure the namespace. The
		// setup drops it before it executes the command.
		sb.Rootless = true
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
		attr.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN}
	}
	sb.tty = ownGroup(cmd, attr)
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		childEnd.Close()
		return nil, fmt.Errorf("sandbox: start namespace: %w%s", err, namespaceHint(sb.Rootless, err))
	}
	childEnd.Close()

	msg, files, err := receive(parentEnd, setupTimeout)
	if err == nil && msg.Error != "" {
		err = errors.New(msg.Error)
	}
	if err == nil && len(files) < 4 {
		err = fmt.Errorf("got %d sockets, want 4", len(files))
	}
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("sandbox: set up namespace: %w", err)
	}
	defer func() {
		for _, f := range files[:4] {
			f.Close() // the net.* values hold their own duplicates
		}
	}()
	ls := make([]net.Listener, 0, 3)
	for _, f := range []*os.File{files[0], files[1], files[3]} {
		l, err := net.FileListener(f)
		if err != nil {
			sb.closeListeners(ls)
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("sandbox: listener: %w", err)
		}
		ls = append(ls, l)
	}
	pc, err := net.FilePacketConn(files[2])
	if err != nil {
		sb.closeListeners(ls)
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("sandbox: dns socket: %w", err)
	}
	sb.Transparent, sb.HTTP, sb.DNSTCP, sb.DNS = ls[0], ls[1], ls[2], pc
	rest := files[4:]
	if msg.DropLog && len(rest) > 0 {
		sb.nflog, rest = rest[0], rest[1:]
	}
	if msg.Leases && len(rest) > 0 {
		sb.leases, rest = firewall.NewLeaser(rest[0], TableName), rest[1:]
	}
	if msg.Guard && len(rest) > 1 {
		if sb.guard, err = newUnixGuard(rest[0], rest[1], cfg.AllowUnix, cfg.UnixRefused); err != nil {
			sb.closeListeners(ls)
			pc.Close()
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		rest = rest[2:]
	}
	if msg.Queue && len(rest) > 0 {
		sb.queue, rest = nfqueue.New(rest[0], holdQueue), rest[1:]
	}
	sb.HoldError = msg.HoldErr
	for _, f := range rest {
		f.Close()
	}
	if sb.guard == nil && !cfg.noUnixGuard {
		sb.closeListeners(ls)
		pc.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, errors.New("sandbox: the namespace handed over no unix socket guard")
	}
	if cfg.Filter != nil && sb.leases == nil {
		sb.closeListeners(ls)
		pc.Close()
		if sb.nflog != nil {
			sb.nflog.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
		return nil, errors.New("sandbox: the namespace handed over no nftables socket for the connect filter")
	}
	sb.ProxyURL = "http://127.0.0.1:" + strconv.Itoa(int(msg.HTTPPort))
	sb.netns = msg.NetNS
	if sb.tty != nil {
		go sb.followStops()
	}
	return sb, nil
}

func (sb *Sandbox) closeListeners(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// namespaceHint explains the usual reasons a namespace cannot be created.
func namespaceHint(rootless bool, err error) string {
	if !(errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOSPC)) {
		return ""
	}
	if !rootless {
		return " (creating a network namespace needs CAP_SYS_ADMIN: in a container, add that capability)"
	}
	return " (unprivileged user namespaces look disabled: see sysctl kernel.unprivileged_userns_clone, " +
		"user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns, or run egress run as root)"
}

// Pid is the command's process id.
func (sb *Sandbox) Pid() int { return sb.cmd.Process.Pid }

// NetNS is the namespace's identity as /proc/PID/ns/net shows it
// ("net:[4026532...]"), "" when unknown.
func (sb *Sandbox) NetNS() string { return sb.netns }

// Signal sends sig to the command (not to its process group: as a
// terminal's signal, a forwarded one reaches the command once).
func (sb *Sandbox) Signal(sig os.Signal) error { return sb.cmd.Process.Signal(sig) }

// ReadDrops calls fn, from another goroutine, for every packet the
// namespace refuses from now on until Close. Call it at most once.
func (sb *Sandbox) ReadDrops(fn func(Drop)) {
	if sb.nflog != nil && sb.drops == nil {
		sb.drops = nflog.NewReader(sb.nflog, fn)
	}
}

// Wait waits for the command and returns its exit code: its exit status,
// or 128 plus the signal that killed it.
func (sb *Sandbox) Wait() (int, error) {
	err := sb.cmd.Wait()
	if sb.tty != nil {
		sb.giveBack()
	}
	st := sb.cmd.ProcessState
	if st == nil {
		return ExitSetupFailed, err
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return st.ExitCode(), nil
}

// Close closes the listeners and the drop log (after reading what it
// holds), and stops the unix socket guard: from then on, the connect()s
// of processes left in the sandbox fail with ENOSYS. Connections already
// accepted are not touched.
func (sb *Sandbox) Close() error {
	if sb.closed {
		return nil
	}
	sb.closed = true
	sb.closeListeners([]net.Listener{sb.Transparent, sb.HTTP, sb.DNSTCP})
	sb.DNS.Close()
	if sb.drops != nil {
		sb.drops.Close()
	} else if sb.nflog != nil {
		sb.nflog.Close()
	}
	if sb.leases != nil {
		sb.leases.Close()
	}
	if sb.queue != nil {
		// The held SYNs are accepted (the target's bypass): they meet
		// the closed listener's reset.
		sb.queue.Close()
	}
	if sb.guard != nil {
		sb.guard.close()
	}
	return nil
}

// Queue is where the SYNs Config.Hold holds wait for a verdict (see
// firewall.AddHold for the marks); nil without Config.Hold, or where the
// kernel could not hold them (see HoldError).
func (sb *Sandbox) Queue() *nfqueue.Queue { return sb.queue }

// Lease lets new connections to addr on ports (on every port when all)
// through the connect filter for d, and returns once the kernel has it:
// call it before a DNS answer with addr reaches the command. Connections
// opened meanwhile outlive the lease. It fails without Config.Filter.
func (sb *Sandbox) Lease(addr netip.Addr, ports []policy.PortRange, all bool, d time.Duration) error {
	if sb.leases == nil {
		return errors.New("sandbox: no connect filter")
	}
	return sb.leases.Lease(addr, ports, all, d)
}

// filterFile writes f as JSON to an anonymous file the setup process
// inherits.
func filterFile(f *policy.ConnectFilter) (*os.File, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("sandbox: connect filter: %w", err)
	}
	fd, err := unix.MemfdCreate("egress-filter", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: connect filter: %w", err)
	}
	file := os.NewFile(uintptr(fd), "egress-filter")
	if _, err := file.Write(b); err != nil {
		file.Close()
		return nil, fmt.Errorf("sandbox: connect filter: %w", err)
	}
	return file, nil
}

// readFilter reads the connect filter the parent passed, if any.
func readFilter() (*policy.ConnectFilter, error) {
	v, ok := os.LookupEnv(filterEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(filterEnv)
	fd, err := strconv.Atoi(v)
	if err != nil {
		return nil, fmt.Errorf("bad %s", filterEnv)
	}
	f := os.NewFile(uintptr(fd), "egress-filter")
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("read connect filter: %w", err)
	}
	var cf policy.ConnectFilter
	if err := json.Unmarshal(b, &cf); err != nil {
		return nil, fmt.Errorf("read connect filter: %w", err)
	}
	return &cf, nil
}

// receive reads the setup process's message and descriptors.
func receive(f *os.File, timeout time.Duration) (message, []*os.File, error) {
	var msg message
	c, err := net.FileConn(f)
	if err != nil {
		return msg, nil, err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	uc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(16*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return msg, nil, err
	}
	if n == 0 {
		return msg, nil, errors.New("the setup process exited before sending its sockets")
	}
	var files []*os.File
	if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, cm := range cms {
			fds, err := unix.ParseUnixRights(&cm)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "sandbox-socket"))
			}
		}
	}
	if err := json.Unmarshal(buf[:n], &msg); err != nil {
		return msg, files, fmt.Errorf("bad setup message: %w", err)
	}
	return msg, files, nil
}

func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// MaybeChild returns at once unless this process is a sandbox's setup
// process; then it sets up the namespace, hands the sockets over, and
// executes the command in args, never returning. Call it first thing in
// the code path that Config.ExeArgs leads to, with the arguments that
// follow them.
func MaybeChild(args []string, stderr io.Writer) {
	v, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	os.Unsetenv(childEnv)
	fd, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(stderr, "egress run: bad %s\n", childEnv)
		os.Exit(ExitSetupFailed)
	}
	os.Exit(child(os.NewFile(uintptr(fd), "sandbox-child"), args, stderr))
}

// child runs in the new namespace: listeners, rules, hand-over, exec.
func child(sock *os.File, args []string, stderr io.Writer) int {
	fail := func(err error) int {
		b, _ := json.Marshal(message{Error: err.Error()})
		unix.Sendmsg(int(sock.Fd()), b, nil, nil, 0)
		return ExitSetupFailed
	}
	if len(args) == 0 {
		return fail(errors.New("no command"))
	}
	var lc net.ListenConfig
	var files []*os.File
	var ports []uint16
	for _, network := range []string{"tcp", "tcp", "udp", "tcp"} { // transparent, http, dns, dns tcp
		var f *os.File
		var port uint16
		if network == "udp" {
			pc, err := lc.ListenPacket(context.Background(), "udp", ":0")
			if err != nil {
				return fail(fmt.Errorf("listen udp: %w", err))
			}
			port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			f, err = pc.(*net.UDPConn).File()
			if err != nil {
				return fail(err)
			}
		} else {
			l, err := lc.Listen(context.Background(), "tcp", ":0")
			if err != nil {
				return fail(fmt.Errorf("listen tcp: %w", err))
			}
			port = uint16(l.Addr().(*net.TCPAddr).Port)
			f, err = l.(*net.TCPListener).File()
			if err != nil {
				return fail(err)
			}
		}
		files = append(files, f)
		ports = append(ports, port)
	}
	filter, err := readFilter()
	if err != nil {
		return fail(err)
	}
	r := Redirect{TCP: ports[0], DNS: ports[2], DNSTCP: ports[3], Exempt: []uint16{ports[0], ports[1], ports[3]}, LogGroup: logGroup, Filter: filter}
	nflogf, err := nflog.Open(logGroup)
	if err != nil {
		r.LogGroup = 0 // refused packets are still refused, just not reported
	}
	var leases *os.File
	if filter != nil {
		if leases, err = firewall.OpenSocket(); err != nil {
			return fail(err)
		}
	}
	if err := Configure(r); err != nil {
		return fail(err)
	}
	var queue *os.File
	var holdErr string
	if _, ok := os.LookupEnv(holdEnv); ok {
		os.Unsetenv(holdEnv)
		if queue, err = configureHold(r.Exempt); err != nil {
			holdErr = err.Error()
		}
	}
	// The guard's filter is installed on the thread that executes the
	// command, before the listener is handed over: the command starts
	// under it.
	runtime.LockOSThread()
	var guard, diag *os.File
	if _, off := os.LookupEnv(noGuardEnv); !off {
		// The guard lists the sandbox's own listening unix sockets
		// through this socket: sock_diag answers for its namespace.
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fail(fmt.Errorf("sock_diag: %w", err))
		}
		diag = os.NewFile(uintptr(fd), "sock-diag")
		if guard, err = installUnixFilter(); err != nil {
			return fail(err)
		}
	}
	os.Unsetenv(noGuardEnv)
	msg := message{HTTPPort: ports[1], DropLog: nflogf != nil, Leases: leases != nil, Guard: guard != nil, Queue: queue != nil, HoldErr: holdErr}
	msg.NetNS, _ = os.Readlink("/proc/self/ns/net")
	if nflogf != nil {
		files = append(files, nflogf)
	}
	if leases != nil {
		files = append(files, leases)
	}
	if guard != nil {
		files = append(files, guard, diag)
	}
	if queue != nil {
		files = append(files, queue)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	b, _ := json.Marshal(msg)
	if err := unix.Sendmsg(int(sock.Fd()), b, unix.UnixRights(fds...), nil, 0); err != nil {
		return fail(fmt.Errorf("hand sockets over: %w", err))
	}
	for _, f := range files {
		f.Close()
	}
	sock.Close()

	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "egress run: %v\n", err)
		return ExitNotFound
	}
	env := os.Environ()
	proxyEnv := ProxyEnv("http://127.0.0.1:" + strconv.Itoa(int(ports[1])))
	for _, kv := range proxyEnv {
		name, _, _ := strings.Cut(kv, "=")
		env = withoutVar(env, name)
	}
	env = append(env, proxyEnv...)
	// Capabilities are per thread: drop the ambient set on the thread
	// that executes the command (locked above) so that it gets none
	// (rootless case).
	unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
	if err := dropCapabilities(); err != nil {
		fmt.Fprintf(stderr, "egress run: %v\n", err)
		return ExitSetupFailed
	}
	err = unix.Exec(path, args, env)
	fmt.Fprintf(stderr, "egress run: %s: %v\n", args[0], err)
	if errors.Is(err, unix.ENOENT) {
		return ExitNotFound
	}
	return ExitCannotExec
}

// escapeCapabilities are the capabilities that would take a root command
// out of its network namespace: joining another one (setns needs
// CAP_SYS_ADMIN), taking over a process outside, egress run included
// (ptrace, /proc/PID/mem and pidfd_getfd need CAP_SYS_PTRACE against a
// process with capabilities the tracer lacks), rewriting the namespace's
// rules (CAP_NET_ADMIN), or the kernel itself (modules, raw I/O, BPF). A
// rootless command is held by its user namespace instead: it has no
// capability outside it.
var escapeCapabilities = []uintptr{
	unix.CAP_SYS_ADMIN, unix.CAP_SYS_PTRACE, unix.CAP_NET_ADMIN, unix.CAP_SYS_MODULE,
	unix.CAP_SYS_RAWIO, unix.CAP_BPF, unix.CAP_PERFMON,
}

// dropCapabilities removes escapeCapabilities from the bounding and
// inheritable sets of the calling thread, which then executes the command:
// a root command gets its permitted set from those two (capabilities(7),
// "Capabilities and execution of programs by root"), so it runs without
// them. Call it with the OS thread locked. A rootless setup process cannot
// change its bounding set (no CAP_SETPCAP) and need not: its command has
// no capabilities at all.
func dropCapabilities() error {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, c := range escapeCapabilities {
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, c, 0, 0, 0); err != nil || in == 0 {
			continue // unknown to this kernel, or already out of the bounding set
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for _, c := range escapeCapabilities {
		data[c/32].Inheritable &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// Settle waits until the connections already made to Transparent and HTTP
// have left the listeners' accept queues (they are being served), or ctx
// is done. Call it when the command has exited, before shutting the
// servers down: a connection the command made just before exiting may
// still wait there, and closing the listener would drop it unseen, from
// the log and the summary.
func (sb *Sandbox) Settle(ctx context.Context) {
	for _, l := range []net.Listener{sb.Transparent, sb.HTTP} {
		tl, ok := l.(*net.TCPListener)
		if !ok {
			continue
		}
		rc, err := tl.SyscallConn()
		if err != nil {
			continue
		}
		for {
			var queued uint32
			rc.Control(func(fd uintptr) {
				// For a listening socket, tcpi_unacked is the length of
				// the accept queue.
				if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
					queued = info.Unacked
				}
			})
			if queued == 0 {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}
