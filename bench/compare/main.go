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
	"flag"
	"fmt"
	"os"
	"os/signal"
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
	tlsload                              string
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
	flag.StringVar(&o.tlsload, "tlsload", "", "bench/compare/tlsload `binary` (OpenSSL, the plugin runtime's TLS): new intercepted connections/s with it too (empty: skip)")
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

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compare: "+format+"\n", args...)
	stopAll()
	os.Exit(1)
}
