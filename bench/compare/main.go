// Command compare measures egress's HTTP data path side by side with the
// forward proxies users would otherwise pick, squid and tinyproxy, and
// with direct connections, in one run on loopback (issue 8), and writes
// BENCHMARKS.md. bench/run.sh installs the tools, builds the binaries and
// runs it; see that script for the whole procedure.
//
// Every proxy runs as its own process with an allow-everything
// configuration for loopback and one log line per request or tunnel
// written to a file (egress: log.allowed: true; squid: access_log;
// tinyproxy: LogLevel Connect). The origins and the clients run in this
// process (wrk for requests/s). Measures, in this order:
//
//  1. resident memory per idle tunnel: RSS of each freshly started proxy
//     before and after opening -tunnels CONNECT tunnels that stay idle;
//  2. plain HTTP keep-alive requests/s (wrk, same connections and duration
//     for every subject, direct included);
//  3. CONNECT tunnel throughput: one tunnel downloading -bytes;
//  4. CONNECT setup latency (connect, CONNECT, read the 200) p50/p99, one
//     at a time, and new tunnels per second with -workers at a time.
//  5. with -only intercept (intercept.go): TLS interception against
//     squid-openssl with ssl_bump and mitmproxy: keep-alive requests/s,
//     new intercepted connections/s, memory per idle intercepted
//     connection, and CONNECT tunnels/s to a port without http: rules.
//
// Measures 2-4 run -runs rounds; each round takes every subject in turn
// (the order rotating), so a change in machine load hits every subject
// alike, and the median round of each subject is reported.
//
// The DNS figures (bench/dns/run.sh output, -dns) and the policy figures
// (go test -bench output of ./policy, -policy) are read from files and
// put in the same table.
//
// It is a benchmark, not a test: it is not part of go test ./...
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	egress, squid, tinyproxy, peers, out string
	smokescreen, rules                   string
	serveTransparent, transparentOrigin  string
	transparentLog                       string
	minproxy, notes                      string
	mitmproxy                            string
	dnsFile, policyFile, command         string
	only, extra                          string
	runs, conns, setups, workers         int
	interceptConns                       int
	logAllowed, egressNoLog              bool
	tunnels                              int
	bytes, pacedBytes, pacedRate         int64
	duration, rateDuration               time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.egress, "egress", "", "egress `binary` (required)")
	flag.StringVar(&o.squid, "squid", "squid", "squid `binary` (empty: skip squid)")
	flag.StringVar(&o.tinyproxy, "tinyproxy", "tinyproxy", "tinyproxy `binary` (empty: skip tinyproxy)")
	flag.StringVar(&o.smokescreen, "smokescreen", "", "Stripe's smokescreen `binary` (empty: skip smokescreen)")
	flag.StringVar(&o.rules, "rules", "10,1000,100000", "comma-separated numbers of policy rules egress is measured with (setup, memory)")
	flag.StringVar(&o.serveTransparent, "serve-transparent", "", "internal: serve egress's transparent path on `addr` (the child of the transparent measure)")
	flag.StringVar(&o.transparentOrigin, "transparent-origin", "", "internal: the original destination of -serve-transparent's connections")
	flag.StringVar(&o.transparentLog, "transparent-log", os.DevNull, "internal: -serve-transparent's log file")
	flag.StringVar(&o.minproxy, "minproxy", "", "bench/compare/minproxy `binary`, measured as the floor of a Go proxy (empty: skip)")
	flag.StringVar(&o.mitmproxy, "mitmproxy", "", "mitmdump `binary` (Debian's mitmproxy), measured in the intercept measure (empty: skip)")
	flag.IntVar(&o.interceptConns, "intercept-conns", 1000, "idle intercepted connections for the intercept measure's memory figure")
	flag.StringVar(&o.notes, "notes", "", "markdown `file` appended to the output (the analysis of the figures)")
	flag.StringVar(&o.peers, "peers", "bench/peers", "`dir`ectory of the squid.conf and tinyproxy.conf templates")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "markdown `file` to write (empty: only print)")
	flag.StringVar(&o.dnsFile, "dns", "", "output `file` of bench/dns/run.sh to include")
	flag.StringVar(&o.policyFile, "policy", "", "go test -bench output `file` of ./policy to include")
	flag.StringVar(&o.command, "command", "bench/run.sh", "the command line recorded in the output")
	flag.StringVar(&o.extra, "extra", "", "comma-separated `name=addr` of proxies already running, measured too (no memory figure)")
	flag.StringVar(&o.only, "only", "memory,paths,rules,rps,throughput,setup,intercept", "comma-separated measures to run (paths: memory per tunnel path; rules: egress with -rules; intercept: TLS interception against squid ssl-bump and mitmproxy)")
	flag.BoolVar(&o.logAllowed, "egress-log-allowed", true, "egress logs allowed requests and tunnels too (log.allowed), as squid and tinyproxy do")
	flag.BoolVar(&o.egressNoLog, "egress-nolog", true, "measure requests/s of a second egress with log.allowed: false too (subject egress-nolog)")
	flag.IntVar(&o.runs, "runs", 5, "rounds of each measure (the median counts)")
	flag.IntVar(&o.conns, "conns", 8, "wrk connections (one wrk thread)")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "wrk duration per subject and round")
	flag.Int64Var(&o.bytes, "bytes", 2<<30, "bytes downloaded per throughput run")
	flag.Int64Var(&o.pacedBytes, "paced-bytes", 128<<20, "bytes downloaded per run from the paced origin (0: skip that measure)")
	flag.Int64Var(&o.pacedRate, "paced-rate", 125_000_000, "bytes/s the paced origin sends: a 1 Gbit/s link")
	flag.IntVar(&o.setups, "setups", 1000, "CONNECT setups timed per subject and round")
	flag.IntVar(&o.workers, "workers", 4, "concurrent clients for new tunnels per second")
	flag.DurationVar(&o.rateDuration, "rate-duration", time.Second, "duration of a new-tunnels-per-second run")
	flag.IntVar(&o.tunnels, "tunnels", 20000, "idle tunnels for the memory figure (at most what the descriptor limit allows)")
	flag.Parse()
	if o.serveTransparent != "" {
		serveTransparent(o.serveTransparent, o.transparentOrigin, o.transparentLog)
		return
	}
	if o.egress == "" {
		fail("-egress is required")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		fail("interrupted")
	}()
	r := run(o)
	md := r.markdown(o)
	fmt.Println(md)
	if o.out != "" {
		check(os.WriteFile(o.out, []byte(md), 0o644))
		fmt.Fprintf(os.Stderr, "wrote %s\n", o.out)
	}
}

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

// results holds every figure by measure, then subject.
type results struct {
	start, end     time.Time
	loadStart      string
	loadEnd        string
	subjects       []string
	rssBefore      map[string]int64
	rssAfter       map[string]int64
	rps            map[string][]float64
	rpsErrors      map[string]string
	throughput     map[string][]float64
	paced          map[string][]float64
	cpuPerGB       map[string][]float64 // proxy CPU seconds per GB tunnelled
	cpuPerTunnel   map[string][]float64 // proxy CPU µs per new tunnel
	setup          map[string][]time.Duration
	rate           map[string][]float64
	versions       map[string]string
	logLines       map[string]int
	tunnelsOpened  int
	tunnelsWanted  int
	nofile         uint64
	scale          map[string][]scalePoint // by tunnel path: egress's RSS and setup as tunnels open
	scaleBefore    map[string]int64
	rules          []rulesPoint
	dns            *dnsFigures
	policy         []policyFigure
	policyBaseline float64
	intercept      *interceptResults
}

func run(o options) *results {
	dir, err := os.MkdirTemp("", "egress-compare")
	check(err)
	defer os.RemoveAll(dir)
	started.Lock()
	started.dir = dir
	started.Unlock()
	check(os.Chmod(dir, 0o777)) // squid drops privileges to the proxy user and writes its logs here

	r := &results{
		start: time.Now(), loadStart: loadavg(),
		rssBefore: map[string]int64{}, rssAfter: map[string]int64{},
		rps: map[string][]float64{}, rpsErrors: map[string]string{}, throughput: map[string][]float64{}, paced: map[string][]float64{}, cpuPerGB: map[string][]float64{}, cpuPerTunnel: map[string][]float64{},
		setup: map[string][]time.Duration{}, rate: map[string][]float64{},
		versions: map[string]string{}, logLines: map[string]int{},
		scale: map[string][]scalePoint{}, scaleBefore: map[string]int64{},
	}
	only := map[string]bool{}
	for _, m := range strings.Split(o.only, ",") {
		only[strings.TrimSpace(m)] = true
	}

	origin := httpOrigin()
	src := sourceServer(o.bytes, 0)
	pacedSrc := sourceServer(o.pacedBytes, o.pacedRate)
	idle := newIdleServer()

	kinds := []string{"egress"}
	if o.squid != "" {
		kinds = append(kinds, "squid")
	}
	if o.tinyproxy != "" {
		kinds = append(kinds, "tinyproxy")
	}
	if o.smokescreen != "" {
		kinds = append(kinds, "smokescreen")
	}
	if o.minproxy != "" {
		kinds = append(kinds, "go-minimal")
	}
	r.subjects = append([]string{"direct"}, kinds...)
	r.versions = versions(o)
	start := func(kind string) *subject {
		switch kind {
		case "egress":
			return startEgress(o.egress, dir, "egress", o.logAllowed)
		case "squid":
			return startSquid(o.squid, o.peers, dir)
		case "smokescreen":
			return startSmokescreen(o.smokescreen, dir)
		case "go-minimal":
			addr := freeAddr()
			s := &subject{name: kind, kind: kind, addr: addr}
			s.start(exec.Command(o.minproxy, "-listen", addr), filepath.Join(dir, "minproxy.stderr"))
			return s
		default:
			return startTinyproxy(o.tinyproxy, o.peers, dir)
		}
	}

	// 1. Memory per idle tunnel, on fresh processes, one at a time; for
	// egress, RSS and setup latency at steps on the way.
	r.tunnelsWanted, r.nofile = o.tunnels, uint64(2*fdBudget()+1000)
	ntun := min(o.tunnels, fdBudget())
	if ntun < o.tunnels {
		progress("memory: %d tunnels asked for, %d fit the descriptor limit (ulimit -n %d: two per tunnel in the proxy and two here)", o.tunnels, ntun, r.nofile)
	}
	procs := map[string]*subject{}
	for _, k := range kinds {
		p := start(k)
		procs[k] = p
		// go-minimal's io.Copy splices through a pipe per direction, even
		// idle: six descriptors per tunnel, past the limit of most
		// machines at 5,000 tunnels. It is a speed reference only.
		if !only["memory"] || k == "go-minimal" {
			continue
		}
		steps, setups := []int{ntun}, 0
		if k == "egress" {
			steps, setups = scaleSteps(ntun), o.setups
		}
		before, pts := holdScale(k+" CONNECT", p.pid(), steps, setups, func() net.Conn { return connect(p.addr, idle.addr) },
			func() { connect(p.addr, idle.addr).Close() }, idle)
		last := pts[len(pts)-1]
		r.rssBefore[k], r.rssAfter[k], r.tunnelsOpened = before, last.rss, ntun
		if k == "egress" {
			r.scale["CONNECT"], r.scaleBefore["CONNECT"] = pts, before
		}
		progress("memory %-9s RSS %d KiB -> %d KiB with %d idle tunnels: %.1f KiB per tunnel",
			k, r.rssBefore[k]>>10, r.rssAfter[k]>>10, ntun, float64(r.rssAfter[k]-r.rssBefore[k])/float64(ntun)/1024)
	}
	// 1b. The other tunnel paths of egress, each on a fresh process.
	if only["paths"] {
		ws := newUpgradeServer()
		e := startEgress(o.egress, dir, "egress-websocket", o.logAllowed)
		before, pts := holdScale("egress WebSocket", e.pid(), scaleSteps(ntun), 0, func() net.Conn { return upgrade(e.addr, ws.addr) }, nil, ws)
		r.scale["WebSocket"], r.scaleBefore["WebSocket"] = pts, before
		e.stop()
		tp := startTransparent(dir, idle.addr)
		before, pts = holdScale("egress transparent", tp.pid(), scaleSteps(ntun), 0, func() net.Conn { return transparentConn(tp.addr, idle) }, nil, idle)
		r.scale["transparent"], r.scaleBefore["transparent"] = pts, before
		tp.stop()
	}
	// 1c. egress with more and more policy rules.
	if only["rules"] && o.rules != "" {
		var counts []int
		for _, f := range strings.Split(o.rules, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			check(err)
			counts = append(counts, n)
		}
		r.rules = measureRules(o, dir, counts, idle)
	}
	subj := []*subject{{name: "direct", kind: "direct"}}
	for _, k := range kinds {
		subj = append(subj, procs[k])
	}
	for _, e := range strings.Split(o.extra, ",") {
		if name, addr, ok := strings.Cut(e, "="); ok {
			subj = append(subj, &subject{name: name, kind: "extra", addr: addr})
			r.subjects = append(r.subjects, name)
		}
	}
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()

	// rounds runs f for every subject, runs times, rotating the order.
	rounds := func(f func(s *subject)) {
		for i := 0; i < o.runs; i++ {
			for j := range subj {
				f(subj[(i+j)%len(subj)])
			}
		}
	}

	// 2. Plain HTTP keep-alive requests/s.
	if only["rps"] {
		if o.egressNoLog {
			// egress without a line per allowed request, in this
			// measure's rounds only.
			nl := startEgress(o.egress, dir, "egress-nolog", false)
			defer nl.stop()
			all := subj
			subj = append(append([]*subject(nil), subj...), nl)
			r.subjects = append(r.subjects, nl.name)
			defer func() { subj = all }()
		}
		script := filepath.Join(dir, "proxy.lua")
		check(os.WriteFile(script, []byte(fmt.Sprintf("wrk.path = %q\nwrk.headers[\"Host\"] = %q\n", "http://"+origin+"/", origin)), 0o644))
		rounds(func(s *subject) {
			v, errs := wrk(s, origin, script, o.conns, o.duration)
			r.rps[s.name] = append(r.rps[s.name], v)
			if errs != "" {
				r.rpsErrors[s.name] = errs
			}
			progress("rps        %-9s %8.0f req/s %s", s.name, v, errs)
		})
	}

	// 3. CONNECT throughput.
	if only["throughput"] {
		rounds(func(s *subject) {
			var v float64
			if s.addr == "" {
				v = download(func() net.Conn { return mustDial(src) }, o.bytes)
			} else {
				before := cpuTime(s)
				v = download(func() net.Conn { return connect(s.addr, src) }, o.bytes)
				if after := cpuTime(s); after >= 0 && before >= 0 {
					r.cpuPerGB[s.name] = append(r.cpuPerGB[s.name], (after-before)/(float64(o.bytes)/1e9))
				}
			}
			r.throughput[s.name] = append(r.throughput[s.name], v)
			progress("throughput %-9s %8.0f MB/s", s.name, v/1e6)
		})
	}

	// 3b. CONNECT throughput from an origin behind a 1 Gbit/s link.
	if only["throughput"] && o.pacedBytes > 0 {
		rounds(func(s *subject) {
			var v float64
			if s.addr == "" {
				v = download(func() net.Conn { return mustDial(pacedSrc) }, o.pacedBytes)
			} else {
				v = download(func() net.Conn { return connect(s.addr, pacedSrc) }, o.pacedBytes)
			}
			r.paced[s.name] = append(r.paced[s.name], v)
			progress("paced      %-9s %8.1f MB/s", s.name, v/1e6)
		})
	}

	// 4. CONNECT setup latency, then new tunnels per second.
	if only["setup"] {
		rounds(func(s *subject) {
			one := func() { mustDial(idle.addr).Close() }
			if s.addr != "" {
				one = func() { connect(s.addr, idle.addr).Close() }
			}
			ds := latencies(o.setups, one)
			r.setup[s.name] = append(r.setup[s.name], ds...)
			before := cpuTime(s)
			start := time.Now()
			v := perSecond(o.workers, o.rateDuration, one)
			if after := cpuTime(s); after >= 0 && before >= 0 && v > 0 {
				// CPU per tunnel is steadier than tunnels/s on a machine
				// with other load: it does not count the time waited.
				n := v * time.Since(start).Seconds()
				r.cpuPerTunnel[s.name] = append(r.cpuPerTunnel[s.name], (after-before)/n*1e6)
			}
			r.rate[s.name] = append(r.rate[s.name], v)
			idle.waitOpen(0, 10*time.Second)
			progress("setup      %-9s p50 %4.0f µs  p99 %5.0f µs  %6.0f tunnels/s", s.name, us(pct(ds, 50)), us(pct(ds, 99)), v)
		})
		for _, ds := range r.setup {
			slices.Sort(ds)
		}
	}

	// 5. Interception (issue 20), with its own proxies.
	if only["intercept"] {
		r.intercept = measureIntercept(o, dir, procs["egress"], idle)
	}

	for _, p := range procs {
		p.stop()
		if p.log != "" {
			r.logLines[p.name] = countLines(p.log)
		}
	}
	r.end, r.loadEnd = time.Now(), loadavg()
	if o.dnsFile != "" {
		r.dns = parseDNS(o.dnsFile)
	}
	if o.policyFile != "" {
		r.policy, r.policyBaseline = parsePolicy(o.policyFile)
	}
	return r
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// --- proxies ---

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

// --- origins ---

func httpOrigin() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	}))
	return l.Addr().String()
}

// sourceServer writes size bytes to every connection, then closes it;
// with rate > 0, at most rate bytes per second (a slower link).
func sourceServer(size, rate int64) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	chunk := int64(256 << 10)
	if rate > 0 {
		chunk = 64 << 10
	}
	buf := make([]byte, chunk)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				start := time.Now()
				var sent int64
				for sent < size {
					m, err := c.Write(buf[:min(size-sent, chunk)])
					if err != nil {
						return
					}
					sent += int64(m)
					if rate > 0 {
						if ahead := time.Duration(sent*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
							time.Sleep(ahead)
						}
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// idleServer accepts connections and holds them, idle, until the peer
// closes; it counts those open.
type idleServer struct {
	addr string
	open atomic.Int64
}

func newIdleServer() *idleServer { return newHoldingServer(nil) }

// newHoldingServer is an idleServer that first runs greet, if set, on
// each connection (which then reads the rest from r).
func newHoldingServer(greet func(c net.Conn, r *bufio.Reader) bool) *idleServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	s := &idleServer{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.open.Add(1)
			go func() {
				defer s.open.Add(-1)
				defer c.Close()
				var r io.Reader = c
				if greet != nil {
					br := bufio.NewReader(c)
					if !greet(c, br) {
						return
					}
					r = br
				}
				io.Copy(io.Discard, r)
			}()
		}
	}()
	return s
}

// waitOpen waits until n connections are open (bounded).
func (s *idleServer) waitOpen(n int64, d time.Duration) {
	deadline := time.Now().Add(d)
	for s.open.Load() != n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// --- clients ---

func mustDial(addr string) net.Conn {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	check(err)
	return c
}

// connect opens a CONNECT tunnel to target through the proxy. It reads
// the answer byte by byte so that no tunnelled byte is left in a buffer.
func connect(proxy, target string) net.Conn {
	c := mustDial(proxy)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	check(err)
	head := readHead(c, proxy, "CONNECT "+target)
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) && !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) {
		fail("CONNECT %s via %s: %q", target, proxy, head)
	}
	c.SetDeadline(time.Time{})
	return c
}

// download reads a connection to EOF and returns bytes/s.
func download(dial func() net.Conn, size int64) float64 {
	c := dial()
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			break
		}
	}
	if n != size {
		fail("downloaded %d bytes, want %d", n, size)
	}
	return float64(n) / time.Since(start).Seconds()
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkErrors = regexp.MustCompile(`(Socket errors:.*|Non-2xx or 3xx responses:.*)`)
)

// wrk runs wrk with one thread against the origin, through s's proxy when
// it has one, and returns requests/s and any error lines.
func wrk(s *subject, origin, script string, conns int, d time.Duration) (float64, string) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(math.Round(d.Seconds()))) + "s"}
	if s.addr == "" {
		args = append(args, "http://"+origin+"/")
	} else {
		args = append(args, "-s", script, "http://"+s.addr+"/")
	}
	out, err := exec.Command("wrk", args...).CombinedOutput()
	if err != nil {
		fail("wrk %v: %v\n%s", args, err, out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		fail("wrk %v: no Requests/sec in\n%s", args, out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	var errs []string
	for _, e := range wrkErrors.FindAll(out, -1) {
		errs = append(errs, strings.TrimSpace(string(e)))
	}
	return v, strings.Join(errs, "; ")
}

func latencies(n int, f func()) []time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		start := time.Now()
		f()
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return ds
}

// perSecond runs f on workers goroutines for d and returns calls/s.
func perSecond(workers int, d time.Duration, f func()) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				f()
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// --- machine and processes ---

// rss is the resident set size of a process in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	check(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			check(err)
			return kb << 10
		}
	}
	fail("no VmRSS for pid %d", pid)
	return 0
}

// cpuTime is the user and system CPU seconds a proxy process has used;
// -1 when unknown (not a process of ours).
func cpuTime(s *subject) float64 {
	if s.cmd == nil {
		return -1
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(s.pid()) + "/stat")
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTicks = 100

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func countLines(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return -1
	}
	return bytes.Count(b, []byte("\n"))
}

func versions(o options) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	if o.squid != "" {
		v["squid"] = first(o.squid, "-v")
		if pkg := squidPackage(o.squid); pkg != "" {
			v["squid"] += " (Debian " + pkg + ")"
		}
	}
	if o.tinyproxy != "" {
		v["tinyproxy"] = first(o.tinyproxy, "-v")
	}
	if o.smokescreen != "" {
		v["smokescreen"] = first(o.smokescreen, "--version")
	}
	v["wrk"], _, _ = strings.Cut(first("wrk", "-v"), " Copyright")
	v["kernel"] = first("uname", "-sr")
	v["cpu"] = cpuModel()
	return v
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// --- statistics ---

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// pct is the p-th percentile of sorted durations.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, len(ds)*p/100)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
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

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compare: "+format+"\n", args...)
	stopAll()
	os.Exit(1)
}
