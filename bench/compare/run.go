package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

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
