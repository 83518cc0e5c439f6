package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/firewall"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/dnsproxy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/resolve"
	"github.com/egress-proxy/egress/proxy/transparent"
	"github.com/egress-proxy/egress/reload"
	"github.com/egress-proxy/egress/sandbox"
)

// runDrain bounds how long connections the command left open may finish
// once it has exited (its background children may still use them).
const runDrain = time.Second

// How long a DNS answer keeps its address open in the connect filter and
// known to the transparent path: its TTL, raised to leaseMinTTL (0:
// names.DefaultMinTTL), plus leaseGrace, since clients use answers past
// their TTL. Tests shorten them.
var (
	leaseMinTTL time.Duration
	leaseGrace  = time.Minute
)

// runExeArgs are the arguments that bring a re-executed egress to cmdRun,
// where the sandbox's setup process takes over (see sandbox.MaybeChild).
// Tests, whose executable is the test binary, replace them.
var runExeArgs = []string{"run"}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdRun(args []string, stdout, stderr io.Writer) int {
	// The re-executed egress that sets up the sandbox's namespace comes
	// through here too; it never returns.
	sandbox.MaybeChild(args, stderr)

	fs := flag.NewFlagSet("egress run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy `FILE` (default: the built-in policy, full internet with every guard on)")
	var allows stringList
	fs.Var(&allows, "allow", "also allow `HOST[:PORT]` (an IP, [IPv6]:PORT or cidr too); repeatable")
	var allowUnix stringList
	fs.Var(&allowUnix, "allow-unix", "let CMD connect() to the unix socket file `PATH` (outside the sandbox every other is refused); repeatable")
	logFile := fs.String("log", "", "write the JSON log of every connection and query to `FILE`")
	peek := fs.Duration("peek-timeout", transparent.DefaultPeekTimeout, "how long to wait for a raw connection's first bytes (TLS SNI, HTTP Host) before deciding on its address")
	quiet := fs.Bool("quiet", false, "print no live denials and no summary")
	acceptFirst := fs.Bool("refuse-after-accept", false, "let every TCP connection open at once and refuse denied ones afterwards with a reset (default: a denied connect() fails at once with ECONNREFUSED, an allowed one ends as the destination answers)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress run [--config FILE] [--allow HOST[:PORT]]... [--allow-unix PATH]... [--log FILE] [--refuse-after-accept] [--quiet] -- CMD [ARGS...]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Runs CMD in a new network namespace whose only way out is egress: every TCP connection")
		fmt.Fprintln(stderr, "goes through the policy (HTTP_PROXY/HTTPS_PROXY are set for clients that honour them,")
		fmt.Fprintln(stderr, "the others are caught transparently), DNS goes to egress's DNS proxy, other UDP and ICMP")
		fmt.Fprintln(stderr, "are refused, and so are unix socket files outside (--allow-unix lets one through). When")
		fmt.Fprintln(stderr, "CMD exits, prints what it reached and what was denied, and exits with")
		fmt.Fprintln(stderr, "CMD's exit code (125 if the sandbox could not be set up, 127 if CMD was not found).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	cmdArgs := fs.Args()
	if len(cmdArgs) == 0 {
		fmt.Fprintln(stderr, "egress run: no command; usage: egress run [FLAGS] -- CMD [ARGS...]")
		return exitUsage
	}
	if hint := configHint(cmdArgs[0], *config); hint != "" {
		fmt.Fprintf(stderr, "egress run: %q is a policy file, not a command%s\n", cmdArgs[0], hint)
		return exitUsage
	}

	pol, ok := loadRunPolicy(*config, allows, stderr)
	if !ok {
		return exitUsage
	}
	var cur atomic.Pointer[policy.Policy]
	cur.Store(pol)
	current := cur.Load

	logger := zerolog.Nop()
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			fmt.Fprintf(stderr, "egress run: log file: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		logger = zerolog.New(f).With().Timestamp().Logger()
	}
	// Go's HTTP client writes some complaints through the log package:
	// into the log file with the rest, never among CMD's output.
	defer routeStdLog(logger)()

	var err error
	var filter *policy.ConnectFilter
	if !*acceptFirst {
		f := pol.ConnectFilter()
		if err := firewall.Check(&f); err != nil {
			fmt.Fprintf(stderr, "egress run: %v: denied connections are refused after they open, as with --refuse-after-accept\n", err)
		} else {
			filter = &f
		}
	}
	for i, p := range allowUnix {
		if allowUnix[i], err = filepath.Abs(p); err != nil {
			fmt.Fprintf(stderr, "egress run: --allow-unix %s: %v\n", p, err)
			return exitUsage
		}
	}

	sum := newRunSummary(nil)
	unixRefused := func(r sandbox.UnixRefusal) {
		hint := unixHint(r)
		sum.unixRefused(r, hint)
		// The canonical line, not through the Sink: the summary counts
		// the refusal itself (above), as a unix row.
		eventlog.Log(logger, eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoUnix,
			Decision: policy.Decision{Verdict: policy.Deny, Reason: r.Reason, Hint: hint, Source: pol.Source},
			Path:     r.Path, Socket: r.Socket, PID: r.Process.PID, Process: r.Process.Comm})
		if !*quiet {
			fmt.Fprintf(stderr, "egress: denied unix %s (%s) from %s\n", unixTarget(r), r.Reason, r.Process)
		}
	}
	// Request rules (issue 20): a CA CMD trusts, secrets out of its reach.
	ri, cmdEnv, err := setupRunInterception(pol, os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "egress run: %v\n", err)
		return sandbox.ExitSetupFailed
	}
	defer ri.close()
	sb, err := sandbox.Start(sandbox.Config{Args: cmdArgs, ExeArgs: runExeArgs, Stdout: stdout, Stderr: stderr, Filter: filter,
		AllowUnix: allowUnix, UnixRefused: unixRefused, Hold: !*acceptFirst, Env: cmdEnv})
	if err != nil {
		fmt.Fprintf(stderr, "egress run: %v\n", err)
		return sandbox.ExitSetupFailed
	}
	defer sb.Close()
	sum.sb = sb
	events := &eventlog.Sink{Logger: logger, LogAllowed: *logFile != "" || pol.Log.Allowed, Observe: func(e eventlog.Entry) {
		sum.observe(e)
		if !*quiet && e.Decision.Denied() && !e.Decision.Audit && e.Proto != eventlog.ProtoDNS {
			by := ""
			if p := sum.owner(e.Client); p.PID != 0 {
				by = " from " + p.String()
			}
			why := string(e.Decision.Reason)
			if note := e.Decision.RuleReason(); note != "" {
				why += ": " + note
			}
			what := protoLabel(e.Proto) + " " + target(e.Decision)
			if e.Proto == eventlog.ProtoHTTPS && e.Method != "" {
				what = e.Method + " " + e.URL // an intercepted request
			}
			fmt.Fprintf(stderr, "egress: denied %s (%s)%s\n", what, why, by)
		}
	}}
	// Connections from the sandbox come from its loopback addresses
	// (127.0.0.1 or ::1, whichever family it used), so the names its DNS
	// queries got are remembered under both.
	table := &names.Table{MinTTL: leaseMinTTL, Grace: leaseGrace}
	// No loop guard: egress's listeners are in the sandbox's namespace, not
	// where it dials. One resolver for the dialer and the DNS proxy, so
	// that a name's addresses are the same on every path.
	res := &resolve.Resolver{Policy: current}
	defer res.Close()
	dial := &dialer.Dialer{Policy: current, Resolver: res}
	is := newIntercept(current, ri.ca, dial, events, logger)
	tp := &transparent.Server{Policy: current, Dialer: dial, Names: loopbackNames{table}, PeekTimeout: *peek, Events: events, Logger: logger, Intercept: is}
	holdCtx, stopHold := context.WithCancel(context.Background())
	defer stopHold()
	if q := sb.Queue(); q != nil {
		tp.Held = &transparent.Held{}
		go holdConnects(holdCtx, q, tp, logger)
	} else if sb.HoldError != "" {
		// Connections are then accepted at once and dialled after their
		// first bytes, as before: a refusing or silent destination shows
		// as a reset or a read timeout after connect() succeeded.
		logger.Info().Str("reason", sb.HoldError).
			Msg("run: connect() cannot wait for the destination here (no NFQUEUE); connections are accepted before egress dials")
	}
	hp := &httpproxy.Proxy{Policy: current, Dialer: dial, Events: events, Logger: logger, Intercept: is}
	var recorder names.Recorder = table
	if filter != nil {
		recorder = &firewall.Recorder{Names: table, Leases: sb, Policy: current,
			Filter: func() *policy.ConnectFilter { return filter }, Logger: logger}
	}
	dp := &dnsproxy.Server{Policy: current, Events: events, Logger: logger, Names: recorder, Resolver: res}

	sb.ReadDrops(func(d sandbox.Drop) {
		if d.Proto == "tcp" {
			// A connect() the filter refused: the same decision, log line
			// and summary row as a refusal by the transparent listener.
			e := firewall.Refusal(d, tp.DecideConnect)
			sum.refusedAtConnect(e)
			events.Record(e)
			return
		}
		d.Src = netip.AddrPort{}
		sum.drop(d)
		// The canonical line, not through the Sink: the summary counts
		// the drop itself (above).
		eventlog.Log(logger, eventlog.Entry{ID: eventlog.NewID(), Proto: d.Proto,
			Decision: policy.Decision{Verdict: policy.Deny, Reason: policy.ReasonSandboxRefused,
				IP: d.Dst.Addr(), Port: d.Dst.Port(), Source: pol.Source}})
	})

	var wg sync.WaitGroup
	wg.Go(func() { tp.Serve(sum.identify(sb.Transparent)) })
	wg.Go(func() { hp.Serve(sum.identify(sb.HTTP)) })
	wg.Go(func() { dp.Serve(sb.DNS, sb.DNSTCP) })

	// Signals sent to egress go to CMD, as timeout(1) and sudo forward
	// them; CMD ends as it sees fit, and egress when CMD has. CMD runs in
	// a process group of its own (in the terminal's foreground, when
	// egress had it), so a ^C reaches it once, from the terminal.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			sb.Signal(sig)
		}
	}()

	code, err := sb.Wait()
	if err != nil && code == sandbox.ExitSetupFailed {
		fmt.Fprintf(stderr, "egress run: %v\n", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), runDrain)
	defer cancel()
	// What CMD connected just before it exited may still wait to be
	// accepted: serve it (within runDrain) before closing the listeners.
	sb.Settle(ctx)
	var sd sync.WaitGroup
	sd.Go(func() { tp.Shutdown(ctx) })
	sd.Go(func() { hp.Shutdown(ctx) })
	sd.Go(func() { dp.Shutdown(ctx) })
	sd.Wait()
	sb.Close()
	wg.Wait()
	// A command that never started did nothing to summarise: the error
	// above says why.
	if !*quiet && !((code == sandbox.ExitNotFound || code == sandbox.ExitSetupFailed) && sum.empty()) {
		sum.write(stderr)
	}
	return code
}

// loadRunPolicy reads --config (or takes the built-in policy) and adds
// the --allow rules.
func loadRunPolicy(file string, allows []string, stderr io.Writer) (*policy.Policy, bool) {
	pol := policy.Builtin()
	if file != "" {
		data, err := reload.ReadFile(file) // bounded, never a FIFO: as its includes
		if err != nil {
			fmt.Fprintf(stderr, "egress run: %v\n", err)
			return nil, false
		}
		if pol, err = reload.Load(file, data, reload.ReadFile); err != nil {
			printPolicyErrors(stderr, file, err)
			return nil, false
		}
		if pol.Intercepts() && pol.TLS.CACert != "" {
			// Without tls.ca_cert, egress run makes a CA for the run.
			if err := checkInterception(pol); err != nil {
				fmt.Fprintf(stderr, "egress run: %s: %v\n", file, err)
				return nil, false
			}
		}
	}
	if len(allows) > 0 {
		var err error
		if pol, err = pol.WithAllows("--allow", allows); err != nil {
			// A flag has no line and column: name the flag and its value
			// (the message quotes it).
			var errs policy.Errors
			if !errors.As(err, &errs) {
				fmt.Fprintf(stderr, "egress run: --allow: %v\n", err)
				return nil, false
			}
			for _, d := range errs {
				fmt.Fprintf(stderr, "egress run: --allow %s\n", d.Message)
			}
			return nil, false
		}
	}
	return pol, true
}

func printPolicyErrors(w io.Writer, file string, err error) {
	var errs policy.Errors
	if errors.As(err, &errs) {
		for _, d := range errs {
			fmt.Fprintln(w, d.String())
		}
		return
	}
	fmt.Fprintf(w, "%s: %v\n", file, err)
}

// loopbackNames asks a names table under both loopback addresses: a
// sandbox process may resolve over IPv4 and connect over IPv6.
type loopbackNames struct{ t *names.Table }

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.IPv6Loopback()
)

func (l loopbackNames) Names(client, addr netip.Addr) []string {
	a := l.t.Names(loopback4, addr)
	for _, n := range l.t.Names(loopback6, addr) {
		if !contains(a, n) {
			a = append(a, n)
		}
	}
	return a
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// runSummary collects what the sandbox did for the summary printed at exit.
type runSummary struct {
	sb *sandbox.Sandbox

	mu     sync.Mutex
	byKey  map[summaryKey]*summaryRow
	owners map[netip.AddrPort]sandbox.Process
	drops  map[sandbox.Drop]int
	// rawProcs are the processes whose connections ignored the proxy.
	rawProcs summaryRow
	atConn   map[string]bool // ids of connections refused at connect()
	total    int
	raw      int // connections that came through the transparent path
}

type summaryKey struct {
	outcome string // "reached", "denied", "failed"
	target  string // host:port or ip:port
	route   string // "transparent" or "proxy"
}

type summaryRow struct {
	count  int
	reason policy.Reason
	hint   string
	lifts  string // what hint opens when it lifts a guard (Decision.HintLifts)
	why    string // the deciding rule's reason:, when it has one
	err    string
	procs  map[string]bool // named, at most maxRowProcs
	more   map[string]bool // the others, counted, at most maxRowMore
}

func newRunSummary(sb *sandbox.Sandbox) *runSummary {
	return &runSummary{sb: sb, byKey: map[summaryKey]*summaryRow{}, owners: map[netip.AddrPort]sandbox.Process{},
		drops: map[sandbox.Drop]int{}, atConn: map[string]bool{}, rawProcs: summaryRow{procs: map[string]bool{}}}
}

// identify wraps a sandbox listener so that each accepted connection's
// process is looked up while it is open.
func (s *runSummary) identify(l net.Listener) net.Listener {
	return &identifyingListener{Listener: l, s: s}
}

type identifyingListener struct {
	net.Listener
	s *runSummary
}

func (l *identifyingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	// Synchronously, while the client's socket surely exists: a denied
	// connection is reset a moment later. It costs about 0.1 ms.
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if p, ok := l.s.sb.Owner(ap); ok {
			l.s.mu.Lock()
			l.s.addOwner(ap, p)
			l.s.mu.Unlock()
		}
	}
	return c, nil
}

// refusedAtConnect notes that e, about to be recorded, is a connection
// the connect filter refused. Its process is not looked up: the socket is
// gone by the time the refusal is read (and a look-up scans /proc).
func (s *runSummary) refusedAtConnect(e eventlog.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.atConn[e.ID] = true
}

// unixRefused counts a unix socket the sandbox refused.
func (s *runSummary) unixRefused(r sandbox.UnixRefusal, hint string) {
	k := summaryKey{outcome: "unix", target: unixTarget(r), route: "unix"}
	s.mu.Lock()
	defer s.mu.Unlock()
	row := s.byKey[k]
	if row == nil {
		row = &summaryRow{reason: r.Reason, hint: hint, procs: map[string]bool{}}
		s.byKey[k] = row
	}
	row.count++
	row.addProc(r.Process.String())
}

// unixTarget names a refused unix socket: the socket file, or what the
// process asked for when it could not be resolved.
func unixTarget(r sandbox.UnixRefusal) string {
	switch {
	case r.Reason == policy.ReasonUnixDatagram:
		return "(datagram socket)"
	case r.Socket != "":
		return r.Socket
	}
	return r.Path
}

// unixHint says how to allow a refused unix socket, if it can be.
func unixHint(r sandbox.UnixRefusal) string {
	if r.Reason == policy.ReasonUnixDatagram {
		return "a unix datagram socket can send to any socket file: use SOCK_STREAM or SOCK_SEQPACKET"
	}
	return "egress run --allow-unix " + unixTarget(r)
}

// maxOwners bounds the client addresses whose process is remembered; a
// forgotten one only leaves a summary row without its process.
const maxOwners = 4096

// addOwner remembers the process behind client. s.mu must be held.
func (s *runSummary) addOwner(client netip.AddrPort, p sandbox.Process) {
	if len(s.owners) >= maxOwners {
		clear(s.owners)
	}
	s.owners[client] = p
}

func (s *runSummary) observe(e eventlog.Entry) {
	d := e.Decision
	if e.Proto == eventlog.ProtoDNS {
		// Lookups are not connections: only refused and failed ones are
		// worth a line. An allowed query with an error got SERVFAIL: no
		// upstream answered (timed out, refused, answered SERVFAIL).
		k := summaryKey{outcome: "dns", target: strings.TrimSuffix(e.QName, "."), route: "dns"}
		switch {
		case !d.Denied() && e.Err != nil:
			k.outcome = "dnsfailed"
		case !d.Denied() || d.Audit:
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.row(k, e).count++
		return
	}
	k := summaryKey{target: target(d), route: "proxy"}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Proto == eventlog.ProtoTCP {
		k.route = "transparent"
		if s.atConn[e.ID] {
			k.route = "connect"
			delete(s.atConn, e.ID)
		}
	}
	switch {
	case d.Denied() && !d.Audit:
		k.outcome = "denied"
	case e.Err != nil && e.BytesDown == 0 && e.BytesUp == 0:
		k.outcome = "failed"
	default:
		k.outcome = "reached"
	}
	s.total++
	if k.route != "proxy" {
		s.raw++
	}
	r := s.row(k, e)
	r.count++
	if p, ok := s.owners[netip.AddrPortFrom(e.Client.Addr().Unmap(), e.Client.Port())]; ok {
		r.addProc(p.String())
		if k.route != "proxy" {
			s.rawProcs.addProc(p.String())
		}
	}
}

// A summary row names maxRowProcs processes and counts up to maxRowMore
// others: the summary keeps counts, not an entry per connection.
const (
	maxRowProcs = 8
	maxRowMore  = 1000
)

func (r *summaryRow) addProc(p string) {
	switch {
	case r.procs[p]:
	case len(r.procs) < maxRowProcs:
		r.procs[p] = true
	case len(r.more) < maxRowMore:
		if r.more == nil {
			r.more = map[string]bool{}
		}
		r.more[p] = true
	}
}

// names are the row's processes, and how many more there were.
func (r *summaryRow) names() []string {
	ps := keysOf(r.procs)
	switch n := len(r.more); {
	case n >= maxRowMore:
		ps = append(ps, fmt.Sprintf("%d+ more", n))
	case n > 0:
		ps = append(ps, fmt.Sprintf("%d more", n))
	}
	return ps
}

// row is the summary row for k, made from e, the first entry it counts,
// when there is none yet. s.mu must be held.
func (s *runSummary) row(k summaryKey, e eventlog.Entry) *summaryRow {
	r := s.byKey[k]
	if r == nil {
		r = &summaryRow{reason: e.Decision.Reason, hint: e.Decision.Hint, lifts: e.Decision.HintLifts(), procs: map[string]bool{}}
		r.why = e.Decision.RuleReason()
		if e.Err != nil {
			r.err = e.Err.Error()
		}
		s.byKey[k] = r
	}
	return r
}

// owner is the process behind a client address, if it was found.
func (s *runSummary) owner(client netip.AddrPort) sandbox.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owners[netip.AddrPortFrom(client.Addr().Unmap(), client.Port())]
}

func (s *runSummary) drop(d sandbox.Drop) {
	s.mu.Lock()
	s.drops[d]++
	s.mu.Unlock()
}

// empty reports whether nothing was seen: no connection, lookup or
// refusal.
func (s *runSummary) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total == 0 && len(s.byKey) == 0 && len(s.drops) == 0
}

// write prints the summary.
func (s *runSummary) write(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ndrops := 0
	for _, n := range s.drops {
		ndrops += n
	}
	var b strings.Builder
	fmt.Fprintf(&b, "egress run: %d connection%s", s.total, plural(s.total))
	counts := map[string]int{}
	for k, r := range s.byKey {
		counts[k.outcome] += r.count
	}
	for _, o := range []string{"reached", "denied", "failed"} {
		if counts[o] > 0 {
			fmt.Fprintf(&b, ", %d %s", counts[o], o)
		}
	}
	if counts["dns"] > 0 {
		fmt.Fprintf(&b, "; %d DNS answer%s refused", counts["dns"], plural(counts["dns"]))
	}
	if n := counts["dnsfailed"]; n > 0 {
		fmt.Fprintf(&b, "; %d DNS quer%s failed", n, map[bool]string{true: "y", false: "ies"}[n == 1])
	}
	if ndrops > 0 {
		fmt.Fprintf(&b, "; %d UDP/ICMP packet%s refused", ndrops, plural(ndrops))
	}
	if n := counts["unix"]; n > 0 {
		fmt.Fprintf(&b, "; %d unix socket%s refused", n, plural(n))
	}
	b.WriteString("\n")
	for _, o := range []string{"reached", "denied", "failed", "dns", "dnsfailed", "unix"} {
		keys := make([]summaryKey, 0)
		for k := range s.byKey {
			if k.outcome == o {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			continue
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i].target != keys[j].target {
				return keys[i].target < keys[j].target
			}
			return keys[i].route < keys[j].route
		})
		title := map[string]string{"reached": "reached", "denied": "denied", "failed": "allowed but failed", "dns": "DNS answers refused (the names or their addresses are not allowed)",
			"dnsfailed": "DNS queries that failed (allowed, but no upstream answered: SERVFAIL)",
			"unix":      "unix sockets refused (files outside the sandbox, reachable only with --allow-unix)"}[o]
		fmt.Fprintf(&b, "  %s:\n", title)
		for _, k := range keys {
			r := s.byKey[k]
			route := map[string]string{"proxy": "via HTTP_PROXY", "transparent": "raw socket (ignored HTTP_PROXY)",
				"connect": "raw socket, refused at connect()", "dns": "queries", "unix": "connect()"}[k.route]
			if o == "unix" && r.reason == policy.ReasonUnixDatagram {
				route = "socket()"
			}
			fmt.Fprintf(&b, "    %-28s %4dx  %s", k.target, r.count, route)
			if ps := r.names(); len(ps) > 0 {
				fmt.Fprintf(&b, "  by %s", strings.Join(ps, ", "))
			}
			b.WriteString("\n")
			switch o {
			case "unix":
				fmt.Fprintf(&b, "        reason: %s\n", r.reason)
				if strings.HasPrefix(r.hint, "egress run") {
					fmt.Fprintf(&b, "        to allow: %s\n", r.hint)
				} else {
					fmt.Fprintf(&b, "        %s\n", r.hint)
				}
			case "denied", "dns":
				fmt.Fprintf(&b, "        reason: %s\n", r.reason)
				if r.why != "" {
					fmt.Fprintf(&b, "        why: %s\n", r.why)
				}
				switch {
				case o == "dns" && r.err != "":
					fmt.Fprintf(&b, "        %s\n", r.err)
				case strings.HasPrefix(r.hint, "- {"):
					fmt.Fprintf(&b, "        to allow: %s  (or: egress run --allow %s)\n", r.hint, k.target)
					if r.lifts != "" {
						// As the 403 and check say: pasting it is not an
						// ordinary allow (issue 21).
						fmt.Fprintf(&b, "        which %s\n", r.lifts)
					}
				case r.hint != "":
					fmt.Fprintf(&b, "        %s\n", r.hint)
				}
			case "failed", "dnsfailed":
				fmt.Fprintf(&b, "        error: %s\n", r.err)
			}
		}
	}
	if len(s.drops) > 0 {
		b.WriteString("  refused packets (only TCP and DNS go through egress):\n")
		ds := make([]sandbox.Drop, 0, len(s.drops))
		for d := range s.drops {
			ds = append(ds, d)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i].String() < ds[j].String() })
		for _, d := range ds {
			fmt.Fprintf(&b, "    %-28s %4dx\n", d.String(), s.drops[d])
		}
	}
	if s.raw > 0 {
		// Information, not blame: a database driver's direct connection
		// is often what the plugin means (via: direct).
		they, their := "they", "their"
		if s.raw == 1 {
			they, their = "it", "its"
		}
		fmt.Fprintf(&b, "  %d of %d connection%s went out directly (raw sockets or clients that ignore HTTP_PROXY), caught by the transparent path", s.raw, s.total, plural(s.total))
		if ps := s.rawProcs.names(); len(ps) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(ps, ", "))
		}
		fmt.Fprintf(&b, ": behind a plain HTTP proxy only, %s would need a route of %s own\n", they, their)
	}
	io.WriteString(w, b.String())
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// target is host:port, or ip:port when no name was known.
func target(d policy.Decision) string {
	h := d.Host
	if h == "" && d.IP.IsValid() {
		h = d.IP.String()
	}
	return net.JoinHostPort(h, fmt.Sprint(d.Port))
}

func protoLabel(p string) string {
	switch p {
	case eventlog.ProtoTCP:
		return "tcp"
	case eventlog.ProtoConnect:
		return "CONNECT"
	case eventlog.ProtoHTTP:
		return "http"
	}
	return p
}
