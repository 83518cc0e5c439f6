package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// dnsFigures are read from bench/dns/run.sh's summary table.
type dnsFigures struct {
	qps, cpu, p50, added map[string]float64 // by subject: egress-cached, dnsmasq-cached, ...
	header               string
}

func parseDNS(file string) *dnsFigures {
	f, err := os.Open(file)
	check(err)
	defer f.Close()
	d := &dnsFigures{qps: map[string]float64{}, cpu: map[string]float64{}, p50: map[string]float64{}, added: map[string]float64{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "dnsperf ") {
			d.header = line
		}
		fs := strings.Fields(line)
		if len(fs) < 5 {
			continue
		}
		switch fs[0] {
		case "egress-cached", "egress-uncached", "dnsmasq-cached", "dnsmasq-uncached":
		default:
			continue
		}
		num := func(s string) float64 {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return math.NaN()
			}
			return v
		}
		n := len(fs)
		d.qps[fs[0]] = num(fs[1])
		d.cpu[fs[0]] = num(fs[n-3])
		d.p50[fs[0]] = num(fs[n-2])
		d.added[fs[0]] = num(fs[n-1])
	}
	if len(d.qps) == 0 {
		fmt.Fprintf(os.Stderr, "compare: no DNS figures in %s\n", file)
		return nil
	}
	return d
}

type policyFigure struct {
	name string
	ns   float64
}

// parsePolicy reads go test -bench output: the Decide100k sub-benchmarks
// and the map lookup baseline, in ns/op (the median of -count runs).
func parsePolicy(file string) ([]policyFigure, float64) {
	f, err := os.Open(file)
	check(err)
	defer f.Close()
	runs := map[string][]float64{}
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 || !strings.HasPrefix(fs[0], "Benchmark") || fs[3] != "ns/op" {
			continue
		}
		v, err := strconv.ParseFloat(fs[2], 64)
		if err != nil {
			continue
		}
		name := fs[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // the -GOMAXPROCS suffix
		}
		if _, ok := runs[name]; !ok {
			order = append(order, name)
		}
		runs[name] = append(runs[name], v)
	}
	var out []policyFigure
	base := math.NaN()
	for _, name := range order {
		switch {
		case name == "BenchmarkBaselineMapLookup":
			base = median(runs[name])
		case strings.HasPrefix(name, "BenchmarkDecide100k/"):
			out = append(out, policyFigure{strings.ReplaceAll(strings.TrimPrefix(name, "BenchmarkDecide100k/"), "_", " "), median(runs[name])})
		}
	}
	return out, base
}

// markdown renders BENCHMARKS.md.
func (r *results) markdown(o options) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks\n\n")
	w("egress against direct connections and the proxies users would otherwise pick (squid, tinyproxy, Stripe's smokescreen; dnsmasq for DNS), ")
	w("measured in one run on one machine, loopback only. Written by `%s` (issues 8 and 13); do not edit by hand: ", o.command)
	w("the notes at the end come from `bench/compare/notes.md`.\n\n")
	w("- Date: %s (the run took %s)\n", r.start.UTC().Format("2006-01-02 15:04 MST"), r.end.Sub(r.start).Round(time.Second))
	w("- Machine: %d CPUs (%s), %s, %s; load average %s at the start of measures 1-4, %s at their end\n",
		runtime.NumCPU(), r.versions["cpu"], r.versions["kernel"], memTotal(), r.loadStart, r.loadEnd)
	w("- Software: %s; %s; %s; %s; %s", r.versions["go"], r.versions["squid"], r.versions["tinyproxy"], r.versions["smokescreen"], r.versions["wrk"])
	if r.dns != nil && r.dns.header != "" {
		w("; DNS: %s", r.dns.header)
	}
	w("\n")
	w("- Every proxy runs as its own process, allows everything to 127.0.0.1 and writes one log line per request or tunnel to a file ")
	w("(egress `log.allowed: %t`, squid `access_log`, tinyproxy `LogLevel Connect`, smokescreen its CANONICAL-PROXY-DECISION lines on stderr); ", o.logAllowed)
	w("configs in `bench/peers/` and `bench/compare/subjects.go` (smokescreen: `--allow-range 127.0.0.1/32` and no egress ACL file, which allows every destination its ranges allow). ")
	w("*go-minimal* is `bench/compare/minproxy`: the smallest Go proxy that passes these measures (no policy, no log), the floor of what a Go proxy costs here.\n")
	w("- Measures 1-3 ran %d rounds, each round taking every subject in turn (rotating the order); a figure is the median of a subject's rounds ", o.runs)
	w("(latency percentiles: over the samples of all its rounds); memory was measured once, on freshly started proxies. Ratios compare figures of this run only.\n\n")

	cols := []string{"egress", "direct", "squid", "tinyproxy", "smokescreen", "go-minimal"}
	w("| figure | egress | direct | squid | tinyproxy | smokescreen | go-minimal | dnsmasq | egress ratio | target | met |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n")
	// egressOnly is a row's cells when only egress has a figure.
	egressOnly := func(v string) string { return v + " | – | – | – | – | – | –" }
	val := func(m map[string][]float64, s string) (float64, bool) {
		vs, ok := m[s]
		if !ok || len(vs) == 0 {
			return math.NaN(), false
		}
		return median(vs), true
	}
	cells := func(m map[string][]float64, scale float64, prec int) string {
		var parts []string
		for _, s := range cols {
			if v, ok := val(m, s); ok {
				parts = append(parts, strconv.FormatFloat(v*scale, 'f', prec, 64))
			} else {
				parts = append(parts, "–")
			}
		}
		return strings.Join(parts, " | ")
	}
	// ratio is egress's figure over s's; NaN when either is missing.
	ratio := func(m map[string][]float64, s string) float64 {
		e, ok1 := val(m, "egress")
		v, ok2 := val(m, s)
		if !ok1 || !ok2 {
			return math.NaN()
		}
		return e / v
	}
	ratios := func(m map[string][]float64) string {
		var parts []string
		for _, s := range cols[1:] {
			if v := ratio(m, s); !math.IsNaN(v) {
				parts = append(parts, fmtRatio(v)+" "+s)
			}
		}
		return strings.Join(parts, ", ")
	}
	// met says whether every check holds; "–" when one cannot be made.
	met := func(checks ...bool) string {
		for _, c := range checks {
			if !c {
				return "**no**"
			}
		}
		return "yes"
	}
	atLeast := func(v, t float64) bool { return !math.IsNaN(v) && v >= t }
	atMost := func(v, t float64) bool { return !math.IsNaN(v) && v <= t }

	if len(r.rps["egress"]) > 0 {
		w("| 1. plain HTTP keep-alive, requests/s (wrk, 1 thread, %d connections, %s) | %s | – | %s | ≥ 1.4x squid | %s |\n",
			o.conns, o.duration, cells(r.rps, 1, 0), ratios(r.rps),
			met(atLeast(ratio(r.rps, "squid"), 1.4)))
	}
	if v, ok := val(r.rps, "egress-nolog"); ok {
		// The same measure, egress with log.allowed: false.
		logged, _ := val(r.rps, "egress")
		nl := map[string][]float64{"egress": {v}}
		for _, s := range cols[1:] {
			nl[s] = r.rps[s]
		}
		w("| 1. plain HTTP keep-alive, requests/s, egress with `log.allowed: false` | %s | – | %s; %s with log.allowed | ≥ 0.85x go-minimal, ≥ 1.5x squid | %s |\n",
			cells(nl, 1, 0), ratios(nl), fmtRatio(logged/v),
			met(atLeast(ratio(nl, "go-minimal"), 0.85), atLeast(ratio(nl, "squid"), 1.5)))
	}
	if len(r.throughput["egress"]) > 0 {
		w("| 2. CONNECT tunnel throughput, MB/s (one tunnel downloading %d MiB) | %s | – | %s | ≥ 0.95x go-minimal | %s |\n",
			o.bytes>>20, cells(r.throughput, 1e-6, 0), ratios(r.throughput), met(atLeast(ratio(r.throughput, "go-minimal"), 0.95)))
	}
	if len(r.cpuPerGB["egress"]) > 0 {
		w("| 2. proxy CPU per GB tunnelled at full speed, CPU seconds (user + system, /proc/PID/stat) | %s | – | %s | – | – |\n",
			cells(r.cpuPerGB, 1, 2), ratios(r.cpuPerGB))
	}
	if len(r.paced["egress"]) > 0 {
		w("| 2. CONNECT tunnel throughput from an origin sending at %.0f MB/s (a 1 Gbit/s link), MB/s | %s | – | %s | ≥ 0.9x direct | %s |\n",
			float64(o.pacedRate)/1e6, cells(r.paced, 1e-6, 1), ratios(r.paced), met(atLeast(ratio(r.paced, "direct"), 0.9)))
	}
	if len(r.setup["egress"]) > 0 {
		lat := func(p int) map[string][]float64 {
			m := map[string][]float64{}
			for s, ds := range r.setup {
				m[s] = []float64{us(pct(ds, p))}
			}
			return m
		}
		m50, m99 := lat(50), lat(99)
		w("| 3. CONNECT setup p50, µs (connect, CONNECT, read the 200; direct: TCP connect) | %s | – | %s | ≤ 0.5x squid (issue 8) | %s |\n",
			cells(m50, 1, 0), ratios(m50), met(atMost(ratio(m50, "squid"), 0.5)))
		w("| 3. CONNECT setup p99, µs | %s | – | %s | – | – |\n", cells(m99, 1, 0), ratios(m99))
		w("| 3. new CONNECT tunnels/s (%d clients opening and closing) | %s | – | %s | ≥ 1.0x squid, ≥ 0.8x go-minimal | %s |\n",
			o.workers, cells(r.rate, 1, 0), ratios(r.rate), met(atLeast(ratio(r.rate, "squid"), 1.0), atLeast(ratio(r.rate, "go-minimal"), 0.8)))
		if len(r.cpuPerTunnel["egress"]) > 0 {
			w("| 3. proxy CPU per new tunnel, µs (user + system over the tunnels/s runs, /proc/PID/stat) | %s | – | %s | – | – |\n",
				cells(r.cpuPerTunnel, 1, 0), ratios(r.cpuPerTunnel))
		}
	}
	if pts := r.scale["CONNECT"]; len(pts) > 1 && pts[0].p99 > 0 {
		lo, hi := pts[0], pts[len(pts)-1]
		v := float64(hi.p99) / float64(lo.p99)
		w("| 3. egress CONNECT setup p99 with %d tunnels open / with %d open, µs | %s | %s | ≤ 1.0x (no worse) | %s |\n",
			hi.open, lo.open, egressOnly(fmt.Sprintf("%.0f / %.0f", us(hi.p99), us(lo.p99))), fmtRatio(v), met(atMost(v, 1.0)))
	}
	if len(r.rssAfter) > 0 {
		per := map[string][]float64{}
		for s, a := range r.rssAfter {
			per[s] = []float64{float64(a-r.rssBefore[s]) / float64(r.tunnelsOpened) / 1024}
		}
		e, _ := val(per, "egress")
		w("| 4. resident memory per idle CONNECT tunnel, KiB (%d tunnels; RSS after − before) | %s | – | %s | ≤ 5 KiB, ≤ 0.33x squid | %s |\n",
			r.tunnelsOpened, cells(per, 1, 2), ratios(per), met(atMost(e, 5), atMost(ratio(per, "squid"), 1.0/3)))
	}
	for _, path := range []string{"WebSocket", "transparent"} {
		pts := r.scale[path]
		if len(pts) == 0 {
			continue
		}
		last := pts[len(pts)-1]
		v := float64(last.rss-r.scaleBefore[path]) / float64(last.open) / 1024
		what := map[string]string{"WebSocket": "an upgraded HTTP connection (WebSocket handshake answered 101)", "transparent": "a transparent TCP connection"}[path]
		w("| 4. resident memory per idle %s tunnel, KiB (%d tunnels: %s) | %s | – | ≤ 5 KiB | %s |\n",
			path, last.open, what, egressOnly(fmt.Sprintf("%.2f", v)), met(atMost(v, 5)))
	}
	if d := r.dns; d != nil {
		row := func(label, e, m string, target float64) {
			rt := d.qps[e] / d.qps[m]
			w("| %s | %.0f | – | – | – | – | – | %.0f | %s dnsmasq (CPU per answer %.2fx) | ≥ %.1fx dnsmasq | %s |\n",
				label, d.qps[e], d.qps[m], fmtRatio(rt), d.cpu[e]/d.cpu[m], target, met(atLeast(rt, target)))
		}
		row("5. DNS answers/s, cached (dnsperf, 100 outstanding)", "egress-cached", "dnsmasq-cached", 1.1)
		row("5. DNS answers/s, uncached (dnsmasq `--cache-size=0`)", "egress-uncached", "dnsmasq-uncached", 1.0)
		w("| 5. DNS added p50 latency, µs, cached / uncached (over asking the upstream directly) | %.0f / %.0f | – | – | – | – | – | %.0f / %.0f | – | < 30 / < 100 µs | %s |\n",
			d.added["egress-cached"], d.added["egress-uncached"], d.added["dnsmasq-cached"], d.added["dnsmasq-uncached"],
			met(atMost(d.added["egress-cached"], 30), atMost(d.added["egress-uncached"], 100)))
	}
	for _, p := range r.policy {
		w("| 6. policy decisions/s, 100,000 rules: %s | %.1fM | – | – | – | – | – | – | %.0f ns a decision; %.1fx the time of one map lookup | – | – |\n",
			p.name, 1e3/p.ns, p.ns, p.ns/r.policyBaseline)
	}
	for _, p := range r.rules {
		w("| 7. egress with %d more policy rules: RSS at start MiB / KiB per idle tunnel / setup p50, p99 µs / new tunnels/s | %s | – | – | – |\n",
			p.rules, egressOnly(fmt.Sprintf("%.1f / %.2f / %.0f, %.0f / %.0f", float64(p.rss)/(1<<20), p.perTunnel, us(p.p50), us(p.p99), p.tunnelsSec)))
	}

	if r.intercept != nil {
		r.intercept.markdown(w, o, r.versions["squid"])
	}
	w("\n## Every round\n\n")
	rows := func(label string, m map[string][]float64, scale float64) {
		for _, s := range r.subjects {
			vs := m[s]
			if len(vs) == 0 {
				continue
			}
			var parts []string
			for _, v := range vs {
				parts = append(parts, strconv.FormatFloat(v*scale, 'f', 0, 64))
			}
			w("- %s, %s: %s\n", label, s, strings.Join(parts, ", "))
		}
	}
	rows("requests/s", r.rps, 1)
	rows("MB/s", r.throughput, 1e-6)
	rows("MB/s from the paced origin", r.paced, 1e-6)
	rows("new tunnels/s", r.rate, 1)
	rows("proxy CPU µs per new tunnel", r.cpuPerTunnel, 1)
	for _, s := range r.subjects {
		if a, ok := r.rssAfter[s]; ok {
			w("- RSS, %s: %d KiB before, %d KiB with %d idle tunnels\n", s, r.rssBefore[s]>>10, a>>10, r.tunnelsOpened)
		}
	}
	for _, s := range r.subjects {
		if e, ok := r.rpsErrors[s]; ok {
			w("- wrk errors, %s: %s", s, e)
			if s == "tinyproxy" {
				w(" (tinyproxy closes the client connection after each response; wrk reconnects)")
			}
			w("\n")
		}
	}
	for _, s := range r.subjects {
		if n, ok := r.logLines[s]; ok {
			w("- log lines written by %s: %d\n", s, n)
		}
	}
	if len(r.scale) > 0 {
		w("\n## egress as idle tunnels open\n\n")
		if r.tunnelsOpened < r.tunnelsWanted {
			w("%d tunnels were asked for; %d fit the descriptor limit of this machine (`ulimit -n` %d, which root cannot raise here): ", r.tunnelsWanted, r.tunnelsOpened, r.nofile)
			w("a proxy holds two descriptors per tunnel, and so does bench/compare (client and origin ends).\n\n")
		}
		w("| path | tunnels open | RSS, KiB | KiB per tunnel (RSS − RSS before the first) | CONNECT setup p50 / p99 with them open, µs |\n|---|---:|---:|---:|---|\n")
		for _, path := range []string{"CONNECT", "WebSocket", "transparent"} {
			for _, pt := range r.scale[path] {
				lat := "–"
				if pt.p99 > 0 {
					lat = fmt.Sprintf("%.0f / %.0f", us(pt.p50), us(pt.p99))
				}
				w("| %s | %d | %d | %.2f | %s |\n", path, pt.open, pt.rss>>10, float64(pt.rss-r.scaleBefore[path])/float64(pt.open)/1024, lat)
			}
		}
	}
	if o.notes != "" {
		notes, err := os.ReadFile(o.notes)
		check(err)
		w("\n%s", notes)
	}
	return b.String()
}

// fmtRatio prints a ratio with two decimals, or three next to a whole
// number so that a ratio just under a target of 1x or 2x does not read
// as 1.00x or 2.00x.
func fmtRatio(v float64) string {
	if math.Abs(v-math.Round(v)) < 0.005 {
		return fmt.Sprintf("%.3fx", v)
	}
	return fmt.Sprintf("%.2fx", v)
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return "?"
}
