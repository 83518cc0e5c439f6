package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// subject is one way to reach the origins: directly or through a proxy.
type subject struct {
	name string
	kind string // "direct", "egress", "squid", "tinyproxy", "smokescreen", "go-minimal"
	addr string // proxy address; empty for direct
	cmd  *exec.Cmd
	wait chan struct{}
	log  string // log file, for the report
}

func (s *subject) pid() int { return s.cmd.Process.Pid }

const egressConfig = `version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
limits:
  max_tunnels: 100000
log:
  allowed: %t
  file: %s
`

func startEgress(bin, dir, name string, logAllowed bool) *subject {
	// The policy in a directory of its own, as in a deployment
	// (/etc/egress, /var/log): egress watches the policy's directory, and
	// a log written there would wake its watcher on every line.
	cfg := filepath.Join(configDir(dir), name+".yaml")
	logFile := filepath.Join(dir, name+".log")
	check(os.WriteFile(cfg, []byte(fmt.Sprintf(egressConfig, logAllowed, logFile)), 0o644))
	addr := freeAddr()
	s := &subject{name: name, kind: "egress", addr: addr, log: logFile}
	// No admin listener: the bench reads none, and a busy 9090 (another
	// egress) would stop serve.
	s.start(exec.Command(bin, "serve", "--config", cfg, "--listen", addr, "--admin", ""), filepath.Join(dir, name+".stderr"))
	return s
}

// configDir is where egress's policies are written, under dir.
func configDir(dir string) string {
	d := filepath.Join(dir, "etc")
	check(os.MkdirAll(d, 0o755))
	return d
}

func startSmokescreen(bin, dir string) *subject {
	addr := freeAddr()
	_, port, _ := net.SplitHostPort(addr)
	// No --egress-acl-file: smokescreen allows every destination its IP
	// ranges allow ("Egress ACL is not configured"); --allow-range lifts
	// its guard of loopback for 127.0.0.1 only. It logs one line per
	// request or tunnel (CANONICAL-PROXY-DECISION) on stderr.
	log := filepath.Join(dir, "smokescreen.log")
	s := &subject{name: "smokescreen", kind: "smokescreen", addr: addr, log: log}
	s.start(exec.Command(bin, "--listen-ip", "127.0.0.1", "--listen-port", port, "--allow-range", "127.0.0.1/32"), log)
	return s
}

func startSquid(bin, peers, dir string) *subject {
	addr := freeAddr()
	cfg := fillTemplate(filepath.Join(peers, "squid.conf"), filepath.Join(dir, "squid.conf"), addr, dir)
	s := &subject{name: "squid", kind: "squid", addr: addr, log: filepath.Join(dir, "squid-access.log")}
	// -N: no daemon, no kid process, so the pid is the process that serves.
	s.start(exec.Command(bin, "-N", "-f", cfg), filepath.Join(dir, "squid.stderr"))
	return s
}

func startTinyproxy(bin, peers, dir string) *subject {
	addr := freeAddr()
	cfg := fillTemplate(filepath.Join(peers, "tinyproxy.conf"), filepath.Join(dir, "tinyproxy.conf"), addr, dir)
	s := &subject{name: "tinyproxy", kind: "tinyproxy", addr: addr, log: filepath.Join(dir, "tinyproxy.log")}
	// -d: foreground.
	s.start(exec.Command(bin, "-d", "-c", cfg), filepath.Join(dir, "tinyproxy.stderr"))
	return s
}

func fillTemplate(src, dst, addr, dir string) string {
	b, err := os.ReadFile(src)
	check(err)
	_, port, _ := net.SplitHostPort(addr)
	text := strings.ReplaceAll(strings.ReplaceAll(string(b), "@PORT@", port), "@DIR@", dir)
	check(os.WriteFile(dst, []byte(text), 0o644))
	return dst
}

func (s *subject) start(cmd *exec.Cmd, stderrFile string) {
	f, err := os.Create(stderrFile)
	check(err)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr() // never outlive the benchmark
	check(cmd.Start())
	s.cmd = cmd
	started.Lock()
	started.list = append(started.list, s)
	started.Unlock()
	s.wait = make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(s.wait) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.wait:
			out, _ := os.ReadFile(stderrFile)
			fail("%s exited at start: %s", s.name, out)
		default:
		}
		if time.Now().After(deadline) {
			fail("%s does not accept on %s: %v", s.name, s.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *subject) stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.wait:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.wait:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.wait
	}
}

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

// started are the proxies this program started, stopped on failure and
// on SIGINT or SIGTERM: squid changes its user id, which clears the
// parent-death signal, so it would outlive us otherwise.
var started struct {
	sync.Mutex
	list []*subject
	dir  string // their configs and logs
}

func stopAll() {
	started.Lock()
	defer started.Unlock()
	for _, s := range started.list {
		s.stop()
	}
	if started.dir != "" {
		os.RemoveAll(started.dir)
	}
}
