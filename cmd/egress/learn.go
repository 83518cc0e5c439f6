package main

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// cmdLearn reads egress's JSON log lines (typically from a run in audit
// mode) and writes a policy that allows exactly the destinations observed:
// one allow rule per host or address, with the ports seen, and comments
// giving counts and first/last seen. The output is meant to be reviewed,
// then linted and enforced as is.
//
// Two kinds of destination are held back unless asked for: one whose rule
// would lift a guard (a loopback, private, link-local, ... address, as the
// policy classifies it: a plugin probing the host's network looks like any
// other destination in a log), written commented out with the guard's
// reason (--lift-guards writes the rule); and the denials of an enforcing
// egress (event deny, not a guard's), which are what a policy refused on
// purpose rather than what a plugin needs (--include-denied learns them).
func cmdLearn(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("learn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the policy to `FILE` instead of standard output")
	mode := fs.String("mode", "enforce", "mode: of the policy written, enforce or audit")
	liftGuards := fs.Bool("lift-guards", false, "write the rules that lift a guard (loopback, private, link-local, CGNAT, ...) instead of commenting them out; never metadata")
	includeDenied := fs.Bool("include-denied", false, "also learn what an enforcing egress denied (event deny); by default only allow and audit_deny are learned")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress learn [-o FILE] [-mode enforce|audit] [--lift-guards] [--include-denied] LOGFILE...")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Reads egress's JSON log lines ('-' is standard input, *.gz files are decompressed) and")
		fmt.Fprintln(stderr, "writes a policy allowing exactly what was observed: allow and audit_deny lines (a run")
		fmt.Fprintln(stderr, "in mode: audit). A rule that would lift a guard is written commented out, with the")
		fmt.Fprintln(stderr, "guard's reason; cloud metadata is never learned.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 || (*mode != "enforce" && *mode != "audit") {
		fs.Usage()
		return exitUsage
	}
	l := newLearner()
	l.liftGuards, l.includeDenied = *liftGuards, *includeDenied
	for _, name := range fs.Args() {
		if err := l.readFile(name); err != nil {
			fmt.Fprintf(stderr, "egress learn: %v\n", err)
			return exitUsage
		}
	}
	if l.decisions == 0 {
		fmt.Fprintf(stderr, "egress learn: no egress decisions in %s (%s read; is log.format json?)\n",
			strings.Join(fs.Args(), ", "), count(l.lines, "line"))
		return exitUsage
	}
	text := l.policy(fs.Args(), *mode)
	if *out == "" {
		io.WriteString(stdout, text)
	} else if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
		fmt.Fprintf(stderr, "egress learn: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "egress learn: %s, %s, %s learned, %s skipped\n",
		count(l.lines, "line"), count(l.decisions, "decision"), count(l.learned(), "destination"), count(l.skipped, "line"))
	if n := l.heldBack(); n > 0 {
		fmt.Fprintf(stderr, "egress learn: held back %d destination%s whose rule would lift a guard (written commented out; --lift-guards writes them)\n", n, plural(n))
	}
	if n := l.requestHosts(); n > 0 {
		fmt.Fprintf(stderr, "egress learn: request rules (http:) for %s from %s; no inject: (add credentials by hand)\n", count(n, "destination"), count(l.requestLines, "intercepted request"))
	}
	if l.denied > 0 {
		fmt.Fprintf(stderr, "egress learn: not learned: %d denial%s of an enforcing egress (event deny; --include-denied learns them)\n", l.denied, plural(l.denied))
	}
	return exitOK
}

// logLine is the part of the canonical log line that learn reads.
type logLine struct {
	Event  string          `json:"event"`
	Proto  string          `json:"proto"`
	Host   string          `json:"host"`
	Port   uint16          `json:"port"`
	IP     string          `json:"ip"`
	QName  string          `json:"qname"`
	Reason string          `json:"reason"`
	Method string          `json:"method"` // proto https: an intercepted request
	URL    string          `json:"url"`
	Time   json.RawMessage `json:"time"`
}

// seen counts the observations of one destination port (or of lookups).
type seen struct {
	count       int
	events      map[string]int // allow, deny, audit_deny
	first, last time.Time
}

func (s *seen) add(event string, t time.Time) {
	s.count++
	if s.events == nil {
		s.events = map[string]int{}
	}
	s.events[event]++
	if !t.IsZero() {
		if s.first.IsZero() || t.Before(s.first) {
			s.first = t
		}
		if t.After(s.last) {
			s.last = t
		}
	}
}

// dest is one host name or address and what was seen of it.
type dest struct {
	host     string     // normal form; "" for an address
	ip       netip.Addr // when host is ""
	ports    map[uint16]*seen
	lookups  seen // DNS queries (port 0)
	metadata bool // a guard_metadata decision: never learned
	// guard is the guard its rule would lift (the first seen), "" for
	// none: such a rule is written commented out without --lift-guards.
	guard policy.Reason
	// requests are its intercepted requests (proto https), learned as
	// http: request rules (learn_requests.go).
	requests requests
}

type learner struct {
	// liftGuards writes the rules that lift a guard; includeDenied learns
	// event deny lines that no guard decided.
	liftGuards, includeDenied bool

	dests                      map[string]*dest
	lines, decisions, skipped  int
	clientRefused, invalidHost int
	denied                     int // deny lines not learned (no includeDenied)
	requestLines, badRequests  int // intercepted requests learned, and not (unwritable method or URL)
	// guards classifies destinations as the policy does: the built-in
	// policy allows everything but the guards.
	guards *policy.Policy
}

func newLearner() *learner { return &learner{dests: map[string]*dest{}, guards: policy.Builtin()} }

func (l *learner) readFile(name string) error {
	var r io.Reader
	if name == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
		if strings.HasSuffix(name, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			defer gz.Close()
			r = gz
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l.lines++
		l.line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// line learns from one log line; anything that is not a decision of
// egress (other log lines, other programs' output) is skipped.
func (l *learner) line(b []byte) {
	var ll logLine
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &ll) != nil {
		l.skipped++
		return
	}
	switch ll.Event {
	case "allow", "deny", "audit_deny":
	default:
		l.skipped++
		return
	}
	l.decisions++
	switch policy.Reason(ll.Reason) {
	case policy.ReasonClientRefused:
		// The client was outside allow_from: no allow rule changes that.
		l.clientRefused++
		return
	case policy.ReasonInvalidHost:
		l.invalidHost++
		return
	}
	host := ll.Host
	if host == "" && ll.Proto == eventlog.ProtoDNS {
		host = ll.QName
	}
	guard := l.guard(host, ll)
	if ll.Event == "deny" && guard == "" && !l.includeDenied {
		// An enforcing egress refused it (in audit mode only a guard's
		// refusal is a deny): what the policy meant to refuse, or a probe.
		l.denied++
		return
	}
	d := l.dest(host, ll.IP)
	if d == nil {
		l.invalidHost++
		return
	}
	switch {
	case guard == policy.ReasonGuardMetadata:
		d.metadata = true
	case guard != "" && d.guard == "":
		d.guard = guard
	}
	t := parseTime(ll.Time)
	if ll.Port == 0 {
		d.lookups.add(ll.Event, t)
		return
	}
	s := d.ports[ll.Port]
	if s == nil {
		s = &seen{}
		d.ports[ll.Port] = s
	}
	s.add(ll.Event, t)
	if ll.Proto == eventlog.ProtoHTTPS && ll.Method != "" {
		if d.addRequest(ll.Port, ll.Method, ll.URL) {
			l.requestLines++
		} else {
			l.badRequests++
		}
	}
}

// guard is the guard a rule allowing the line's destination would lift:
// the line's own reason when a guard decided it, else what the policy
// says of its name and address (an allowed line may have passed through a
// rule that lifts one: --allow 127.0.0.1:8080). "" for none.
func (l *learner) guard(host string, ll logLine) policy.Reason {
	if r := policy.Reason(ll.Reason); r.IsGuard() {
		return r
	}
	req := policy.Request{Host: host, Port: ll.Port}
	if ip, err := netip.ParseAddr(ll.IP); err == nil {
		req.IP = ip
	}
	if d := l.guards.Decide(req); d.Reason.IsGuard() {
		return d.Reason
	}
	return ""
}

// dest finds or adds the destination of a line: by name when there is one,
// else by address. Log text is untrusted: names go through
// policy.NormalizeHost and only its normal form is written.
func (l *learner) dest(host, ip string) *dest {
	var key string
	var d dest
	if host != "" {
		name, addr, err := policy.NormalizeHost(host)
		switch {
		case err != nil:
			return nil
		case name == "":
			return l.dest("", addr.String())
		}
		key, d.host = "host "+name, name
	} else {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return nil
		}
		addr = addr.Unmap().WithZone("")
		key, d.ip = "ip "+addr.String(), addr
	}
	if x := l.dests[key]; x != nil {
		return x
	}
	d.ports = map[uint16]*seen{}
	l.dests[key] = &d
	return &d
}

func (l *learner) learned() int {
	n := 0
	for _, d := range l.dests {
		if !d.metadata && !l.held(d) {
			n += len(d.ports)
		}
	}
	return n
}

// requestHosts counts the learned destinations given request rules.
func (l *learner) requestHosts() int {
	n := 0
	for _, d := range l.dests {
		if !d.metadata && !l.held(d) && len(d.requests.ports) > 0 {
			n++
		}
	}
	return n
}

// held reports whether d's rule is written commented out: it would lift
// a guard, and --lift-guards was not given.
func (l *learner) held(d *dest) bool { return d.guard != "" && !l.liftGuards && !d.metadata }

// heldBack counts the destination ports held back.
func (l *learner) heldBack() int {
	n := 0
	for _, d := range l.dests {
		if l.held(d) {
			n += len(d.ports)
		}
	}
	return n
}

// parseTime reads zerolog's time field: RFC 3339 text (the default) or a
// Unix time in seconds, milliseconds or microseconds.
func parseTime(raw json.RawMessage) time.Time {
	if len(raw) == 0 {
		return time.Time{}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}
		}
		return t.UTC()
	}
	var f float64
	if json.Unmarshal(raw, &f) != nil || f <= 0 {
		return time.Time{}
	}
	switch {
	case f > 1e14:
		return time.UnixMicro(int64(f)).UTC()
	case f > 1e11:
		return time.UnixMilli(int64(f)).UTC()
	}
	return time.Unix(0, int64(f*1e9)).UTC()
}

// sortKey orders names by their labels from the right, so that the hosts
// of one domain stand together, then addresses.
func (d *dest) sortKey() string {
	if d.host == "" {
		return ""
	}
	labels := strings.Split(d.host, ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

func (l *learner) sorted() []*dest {
	ds := make([]*dest, 0, len(l.dests))
	for _, d := range l.dests {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool {
		a, b := ds[i], ds[j]
		if (a.host == "") != (b.host == "") {
			return a.host != ""
		}
		if a.host != "" {
			return a.sortKey() < b.sortKey()
		}
		return a.ip.Less(b.ip)
	})
	return ds
}

// policy writes the learned policy as YAML with comments.
func (l *learner) policy(files []string, mode string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Learned by egress learn from %s\n", strings.Join(files, ", "))
	fmt.Fprintf(&b, "# (%s). It allows exactly the destinations observed, on the ports\n", count(l.decisions, "decision"))
	b.WriteString("# observed, and nothing else. Review it, then: egress lint FILE\n")
	if l.requestHosts() > 0 {
		b.WriteString("# Its http: request rules need egress's CA under egress serve (egress ca init\n")
		b.WriteString("# DIR --config FILE, then tls: ca_cert and ca_key); egress run makes its own.\n")
	}
	b.WriteString("version: 1\ndefault: deny\n")
	fmt.Fprintf(&b, "mode: %s\n", mode)

	var rules, lookupsOnly, held, metadata []*dest
	for _, d := range l.sorted() {
		switch {
		case d.metadata:
			metadata = append(metadata, d)
		case l.held(d) && len(d.ports) > 0:
			held = append(held, d)
		case len(d.ports) > 0:
			rules = append(rules, d)
		case d.lookups.count > 0:
			lookupsOnly = append(lookupsOnly, d)
		}
	}
	if len(rules) == 0 {
		b.WriteString("allow: []\n")
	} else {
		b.WriteString("allow:\n")
	}
	for _, d := range rules {
		ports := sortedPorts(d.ports)
		for _, p := range ports {
			fmt.Fprintf(&b, "  # %d: %s\n", p, d.ports[p].describe())
		}
		if d.lookups.count > 0 {
			fmt.Fprintf(&b, "  # dns: %s\n", d.lookups.describe())
		}
		if d.guard != "" {
			fmt.Fprintf(&b, "  # lifts %s (--lift-guards)\n", d.guard)
		}
		var tunnels, intercepted []uint16
		for _, p := range ports {
			if d.requests.ports[p] {
				intercepted = append(intercepted, p)
			} else {
				tunnels = append(tunnels, p)
			}
		}
		if len(tunnels) > 0 {
			fmt.Fprintf(&b, "  - %s\n    ports: [%s]\n", d.ruleKey(), joinPorts(tunnels))
		}
		if len(intercepted) > 0 {
			// Only the ports its requests came on: http: makes egress
			// terminate TLS on every port of the rule.
			fmt.Fprintf(&b, "  - %s\n    ports: [%s]\n", d.ruleKey(), joinPorts(intercepted))
			writeHTTP(&b, d.requests.requestRules())
		}
	}
	if len(held) > 0 {
		b.WriteString("\n# Held back: each of these rules would lift a guard (loopback, private,\n")
		b.WriteString("# link-local, ... addresses are refused unless a rule names them). Move one\n")
		b.WriteString("# under allow: only if the plugin must reach it (or: egress learn --lift-guards).\n")
		for _, d := range held {
			ports := sortedPorts(d.ports)
			parts := []string{string(d.guard)}
			for _, p := range ports {
				parts = append(parts, fmt.Sprintf("%d: %s", p, d.ports[p].describe()))
			}
			fmt.Fprintf(&b, "#  - {%s, ports: [%s]}  # %s\n", d.ruleKey(), joinPorts(ports), strings.Join(parts, "; "))
		}
	}
	if len(lookupsOnly) > 0 {
		b.WriteString("\n# Looked up but never connected to. A name resolves only if some port of it\n")
		b.WriteString("# is allowed: uncomment with the port the plugin needs.\n")
		for _, d := range lookupsOnly {
			fmt.Fprintf(&b, "#  - %s  # dns: %s\n", d.ruleKey(), d.lookups.describe())
		}
	}
	if len(metadata) > 0 {
		b.WriteString("\n# Cloud metadata, never learned: it hands out credentials. Allow it by hand\n")
		b.WriteString("# with a cidr rule naming the metadata address only if a plugin needs it.\n")
		for _, d := range metadata {
			var parts []string
			for _, p := range sortedPorts(d.ports) {
				parts = append(parts, fmt.Sprintf("%d: %s", p, d.ports[p].describe()))
			}
			if d.lookups.count > 0 {
				parts = append(parts, "dns: "+d.lookups.describe())
			}
			fmt.Fprintf(&b, "#  %s  # %s\n", d.ruleKey(), strings.Join(parts, "; "))
		}
	}
	if l.clientRefused > 0 || l.invalidHost > 0 {
		fmt.Fprintf(&b, "\n# Not learned: clients outside allow_from: %d; invalid host names: %d.\n",
			l.clientRefused, l.invalidHost)
	}
	if l.badRequests > 0 {
		fmt.Fprintf(&b, "# Not learned: %d intercepted request%s whose method or path a request rule cannot name.\n", l.badRequests, plural(l.badRequests))
	}
	if l.denied > 0 {
		fmt.Fprintf(&b, "# Not learned: %d denial%s of an enforcing egress (egress learn --include-denied learns them).\n",
			l.denied, plural(l.denied))
	}
	return b.String()
}

// ruleKey is the rule's destination as YAML: host: NAME or cidr: ADDR,
// quoted as the policy's hints quote them.
func (d *dest) ruleKey() string {
	if d.host != "" {
		return "host: " + policy.YAMLScalar(d.host)
	}
	return "cidr: " + policy.YAMLScalar(d.ip.String())
}

// describe is "12 seen (allow 10, audit_deny 2), first T, last T".
func (s *seen) describe() string {
	events := make([]string, 0, len(s.events))
	for _, e := range []string{"allow", "audit_deny", "deny"} {
		if n := s.events[e]; n > 0 {
			events = append(events, fmt.Sprintf("%s %d", e, n))
		}
	}
	text := fmt.Sprintf("%d seen (%s)", s.count, strings.Join(events, ", "))
	if !s.first.IsZero() {
		text += fmt.Sprintf(", first %s, last %s", s.first.Format(time.RFC3339), s.last.Format(time.RFC3339))
	}
	return text
}

func sortedPorts(m map[uint16]*seen) []uint16 {
	ps := make([]uint16, 0, len(m))
	for p := range m {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}
