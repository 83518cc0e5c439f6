package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// schemePorts gives the port of a URL target without one.
var schemePorts = map[string]uint16{
	"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21,
	"postgres": 5432, "postgresql": 5432, "mysql": 3306, "redis": 6379,
	"amqp": 5672, "amqps": 5671, "mongodb": 27017, "smtp": 25, "ssh": 22,
}

// checkResolveTimeout bounds --resolve lookups.
const checkResolveTimeout = 5 * time.Second

// checkResult is one line of egress check --json output.
type checkResult struct {
	Verdict  string `json:"verdict"` // allow, deny, audit_deny, or depends (on the addresses: use --resolve)
	Target   string `json:"target"`
	Host     string `json:"host,omitempty"`
	IP       string `json:"ip,omitempty"`
	Port     uint16 `json:"port"`
	Reason   string `json:"reason"`
	Rule     string `json:"rule,omitempty"` // FILE:LINE
	RuleText string `json:"rule_text,omitempty"`
	Hint     string `json:"hint,omitempty"`
	Policy   string `json:"policy"`
	Source   string `json:"source"`
}

// cmdCheck explains the policy's decision for each target. Exit 0 when all
// are allowed, 1 when any is denied (audit denials included: check shows
// what the rules say), 2 on a bad config or target.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy `FILE` (default: the built-in full-internet policy)")
	resolve := fs.Bool("resolve", false, "resolve names and check every address (guards included)")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress check [--config FILE] [--resolve] [--json] TARGET...")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "TARGET is host:port, IP:port, [IPv6]:port or a URL (the scheme gives the port);")
		fmt.Fprintln(stderr, "a host alone means any port. Exit 0: all allowed; 1: any denied; 2: bad config or target.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	// Flags may follow targets: parse, take a target, parse the rest.
	var targets []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		targets = append(targets, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(targets) == 0 {
		fs.Usage()
		return exitUsage
	}

	p := policy.Builtin()
	if *config != "" {
		data, err := os.ReadFile(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress check: %v\n", err)
			return exitUsage
		}
		if p, err = policy.Load(*config, data); err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
	}

	type job struct {
		target string
		req    policy.Request
	}
	var jobs []job
	for _, t := range targets {
		req, err := parseCheckTarget(t)
		if err != nil {
			fmt.Fprintf(stderr, "egress check: %v\n", err)
			return exitUsage
		}
		jobs = append(jobs, job{t, req})
	}

	code := exitOK
	enc := json.NewEncoder(stdout)
	emit := func(target string, d policy.Decision) {
		if d.Denied() || pending(d) {
			code = exitDenied // "depends" is no proof of an allow: a CI gate must not pass on it
		}
		if *asJSON {
			_ = enc.Encode(resultOf(target, d))
			return
		}
		fmt.Fprintln(stdout, formatCheck(target, d))
	}
	for _, j := range jobs {
		d := p.Decide(j.req)
		if !*resolve || d.Denied() || d.IP.IsValid() {
			emit(j.target, d)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), checkResolveTimeout)
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", d.Host)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "egress check: %s: resolve %s: %v\n", j.target, d.Host, err)
			return exitUsage
		}
		for _, ip := range ips {
			req := j.req
			req.IP = ip
			emit(j.target+" ("+ip.Unmap().String()+")", p.Decide(req))
		}
	}
	return code
}

// parseCheckTarget turns host:port, IP:port, [IPv6]:port, a bare host or
// address (any port) or a URL into a request.
func parseCheckTarget(t string) (policy.Request, error) {
	if t == "" {
		return policy.Request{}, errors.New("empty target")
	}
	if strings.Contains(t, "://") {
		u, err := url.Parse(t)
		if err != nil {
			return policy.Request{}, fmt.Errorf("target %q: %w", t, err)
		}
		port, ok := schemePorts[strings.ToLower(u.Scheme)]
		if p := u.Port(); p != "" {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil || n == 0 {
				return policy.Request{}, fmt.Errorf("target %q: bad port %q", t, p)
			}
			port, ok = uint16(n), true
		}
		if !ok {
			return policy.Request{}, fmt.Errorf("target %q: no port, and scheme %q has no default port", t, u.Scheme)
		}
		if u.Hostname() == "" {
			return policy.Request{}, fmt.Errorf("target %q: no host", t)
		}
		return policy.Request{Host: u.Hostname(), Port: port}, nil
	}
	bare := t
	if strings.HasPrefix(t, "[") && strings.HasSuffix(t, "]") {
		bare = t[1 : len(t)-1]
	}
	if a, err := netip.ParseAddr(bare); err == nil && !strings.ContainsAny(bare, "[]") {
		return policy.Request{Host: a.String()}, nil // a bare address: any port
	}
	if !strings.Contains(t, ":") {
		return policy.Request{Host: t}, nil // a bare host: any port
	}
	host, port, err := net.SplitHostPort(t)
	if err != nil {
		return policy.Request{}, fmt.Errorf("target %q: want host:port, IP:port, [IPv6]:port or a URL", t)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return policy.Request{}, fmt.Errorf("target %q: bad port %q", t, port)
	}
	if host == "" {
		return policy.Request{}, fmt.Errorf("target %q: no host", t)
	}
	return policy.Request{Host: host, Port: uint16(n)}, nil
}

// formatCheck is one line of check output: verdict, target, reason, rule,
// hint.
func formatCheck(target string, d policy.Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %s  %s", verdictOf(d), target, d.Reason)
	if d.Rule != nil {
		fmt.Fprintf(&b, "  %s %s", d.Rule.Location(), d.Rule.Text)
	}
	if d.Hint != "" {
		fmt.Fprintf(&b, "  hint: %s", d.Hint)
	}
	if d.Reason == policy.ReasonPerAddress {
		b.WriteString("  (run with --resolve to decide on its addresses)")
	}
	return b.String()
}

// pending reports a name whose fate depends on its addresses: no name rule
// decided, and a cidr allow rule might cover what it resolves to.
func pending(d policy.Decision) bool {
	return d.Reason == policy.ReasonPerAddress && !d.IP.IsValid()
}

// verdictOf is the verdict column: allow, deny, audit_deny, or depends.
func verdictOf(d policy.Decision) string {
	if pending(d) {
		return "depends"
	}
	return d.Event()
}

func resultOf(target string, d policy.Decision) checkResult {
	r := checkResult{
		Verdict: verdictOf(d), Target: target, Host: d.Host, Port: d.Port,
		Reason: string(d.Reason), Hint: d.Hint, Policy: d.Policy, Source: d.Source,
	}
	if d.IP.IsValid() {
		r.IP = d.IP.String()
	}
	if d.Rule != nil {
		r.Rule, r.RuleText = d.Rule.Location(), d.Rule.Text
	}
	return r
}
