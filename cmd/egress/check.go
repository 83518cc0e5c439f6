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
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/reload"
)

// checkResolveTimeout bounds --resolve lookups.
const checkResolveTimeout = 5 * time.Second

// checkResult is one line of egress check --json output.
type checkResult struct {
	Verdict string `json:"verdict"` // allow, deny, audit_deny, or depends (on the addresses: use --resolve)
	Target  string `json:"target"`
	Host    string `json:"host,omitempty"`
	IP      string `json:"ip,omitempty"`
	Port    uint16 `json:"port"`
	// PublicOnly is true for a name allowed without a rule that lifts the
	// guards: the allow holds for public addresses; what the name resolves
	// to decides the rest (--resolve checks).
	PublicOnly bool   `json:"public_only,omitempty"`
	Reason     string `json:"reason"`
	Rule       string `json:"rule,omitempty"` // FILE:LINE
	RuleText   string `json:"rule_text,omitempty"`
	RuleReason string `json:"rule_reason,omitempty"` // the rule's reason: text
	Hint       string `json:"hint,omitempty"`
	HintLifts  string `json:"hint_lifts,omitempty"` // what the hint opens when it lifts a guard
	Error      string `json:"error,omitempty"`      // verdict unresolved: why the name did not resolve
	Policy     string `json:"policy"`
	Source     string `json:"source"`
	// With --requirements: the requirement's fields.
	Purpose  string `json:"purpose,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Required *bool  `json:"required,omitempty"`
	// Request rules (issue 20): whether the destination is intercepted,
	// the request decided, the request rule that decided, and the names
	// of the headers egress would inject (never their values).
	Intercept       bool     `json:"intercept,omitempty"`
	Method          string   `json:"method,omitempty"`
	Path            string   `json:"path,omitempty"`
	RequestRule     string   `json:"request_rule,omitempty"` // FILE:LINE
	RequestRuleText string   `json:"request_rule_text,omitempty"`
	Inject          []string `json:"inject,omitempty"`
}

// cmdCheck explains the policy's decision for each target, or each
// requirement of a manifest. Exit 0 when all are allowed (with
// --requirements: every required one), 1 when any is denied (audit denials
// included: check shows what the rules say) or depends on its addresses, 2
// on a bad config, target or manifest.
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	return cmdCheckWith(args, stdout, stderr, nil)
}

// cmdCheckWith is cmdCheck with the resolver of --resolve (nil:
// net.DefaultResolver); tests pass one that asks no DNS server.
func cmdCheckWith(args []string, stdout, stderr io.Writer, resolver dialer.Resolver) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy `FILE` (default: the built-in full-internet policy)")
	resolve := fs.Bool("resolve", false, "resolve names and check every address (guards included)")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	manifest := fs.String("requirements", "", "check every requirement of a plugin's requirements `FILE` (JSON) instead of targets")
	method := fs.String("method", "", "the `METHOD` of URL targets to hosts with http: request rules (default GET)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress check [--config FILE] [--resolve] [--json] [--method M] TARGET...")
		fmt.Fprintln(stderr, "       egress check --requirements FILE [--config FILE] [--resolve] [--json]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "TARGET is host:port, IP:port, [IPv6]:port or a URL (the scheme gives the port);")
		fmt.Fprintln(stderr, "a host alone means any port. A URL to a host with http: request rules is a")
		fmt.Fprintln(stderr, "request, decided on its method (--method, default GET) and path. Exit 0: all")
		fmt.Fprintln(stderr, "allowed (with --requirements: every required one); 1: any denied or depending")
		fmt.Fprintln(stderr, "on its addresses; 2: bad config, target or requirements file, or (--resolve)")
		fmt.Fprintln(stderr, "a name that did not resolve, once every target is reported.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	// Flags may follow targets.
	targets, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	for _, t := range targets {
		// policy.yaml is a valid host name, but a file of that name here
		// is a policy given without --config.
		if _, err := os.Stat(t); err == nil && configHint(t, *config) != "" {
			fmt.Fprintf(stderr, "egress check: target %q is a file%s\n", t, configHint(t, *config))
			return exitUsage
		}
	}
	if (len(targets) == 0) == (*manifest == "") {
		if *manifest != "" {
			fmt.Fprintln(stderr, "egress check: --requirements takes no targets")
		}
		fs.Usage()
		return exitUsage
	}

	p := policy.Builtin()
	if *config != "" {
		data, err := reload.ReadFile(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress check: %v\n", err)
			return exitUsage
		}
		if p, err = policy.LoadWith(*config, data, reload.ReadFile); err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
	}
	c := checker{p: p, config: *config, resolve: *resolve, asJSON: *asJSON, stdout: stdout, stderr: stderr, resolver: resolver}
	if *manifest != "" {
		data, err := os.ReadFile(*manifest)
		if err != nil {
			fmt.Fprintf(stderr, "egress check: %v\n", err)
			return exitUsage
		}
		rs, err := policy.LoadRequirements(*manifest, data)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
		return c.requirements(rs)
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
		if !withRequest(t, &req, *method) && *method != "" {
			fmt.Fprintf(stderr, "egress check: --method needs URL targets (http:// or https://), not %q\n", t)
			return exitUsage
		}
		jobs = append(jobs, job{t, req})
	}

	code = exitOK
	enc := json.NewEncoder(stdout)
	unresolved := false
	for _, j := range jobs {
		for _, o := range c.decide(j.target, j.req) {
			if o.err != nil {
				// One name that does not resolve is that target's
				// answer; the others are still checked (issue 21).
				unresolved = true
				if *asJSON {
					_ = enc.Encode(unresolvedResult(o, j.req.Port))
					continue
				}
				fmt.Fprintln(stdout, formatUnresolved(o, ""))
				continue
			}
			if refused(o.d) {
				code = exitDenied // "depends" is no proof of an allow: a CI gate must not pass on it
			}
			label := requestLabel(o.label, o.d, *method)
			if *asJSON {
				_ = enc.Encode(resultOf(label, o.d))
				continue
			}
			fmt.Fprintln(stdout, formatCheck(label, "", o.d))
		}
	}
	if unresolved {
		return exitUsage // a failed lookup decides nothing: not a pass, not a denial
	}
	return code
}

// checker decides targets or requirements against one policy.
type checker struct {
	p       *policy.Policy
	config  string // the --config file, "" for the built-in policy
	resolve bool
	asJSON  bool
	stdout  io.Writer
	stderr  io.Writer
	// resolver looks names up for --resolve; nil is net.DefaultResolver.
	resolver dialer.Resolver
}

// outcome is one decision and the label check prints it under, or the
// lookup of the name that failed (err; d is then the name's decision).
type outcome struct {
	label string
	d     policy.Decision
	err   error
}

// decide decides req with the decision code serve uses; with --resolve, a
// name step 1 lets through is resolved and every address decided (labelled
// "LABEL (IP)"), as serve would before dialling. A lookup that fails is
// one outcome with err set.
func (c *checker) decide(label string, req policy.Request) []outcome {
	d := c.p.Decide(req)
	if !c.resolve || d.Denied() || d.IP.IsValid() {
		return []outcome{{label: label, d: d}}
	}
	var r dialer.Resolver = net.DefaultResolver
	if c.resolver != nil {
		r = c.resolver
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkResolveTimeout)
	ips, err := r.LookupNetIP(ctx, "ip", d.Host)
	cancel()
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return []outcome{{label: label, d: d, err: lookupFailure(d.Host, err)}}
	}
	var outs []outcome
	for _, ip := range ips {
		r := req
		r.IP = ip
		outs = append(outs, outcome{label: label + " (" + ip.Unmap().String() + ")", d: c.p.Decide(r)})
	}
	return outs
}

// lookupFailure says why name did not resolve, in an operator's words
// rather than Go's ("context deadline exceeded").
func lookupFailure(name string, err error) error {
	var de *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &de) && de.IsTimeout:
		return fmt.Errorf("resolve %s: no answer within %s", name, checkResolveTimeout)
	case errors.As(err, &de) && de.IsNotFound:
		return fmt.Errorf("resolve %s: no such host", name)
	case errors.As(err, &de):
		return fmt.Errorf("resolve %s: %s", name, de.Err)
	}
	return fmt.Errorf("resolve %s: %w", name, err)
}

// formatUnresolved is the line of a target whose name did not resolve:
// egress serve would answer it with a 502.
func formatUnresolved(o outcome, about string) string {
	s := fmt.Sprintf("%-10s %s", "unresolved", o.label)
	if about != "" {
		s += "  " + about
	}
	return s + "  " + o.err.Error()
}

// unresolvedResult is the JSON of a target whose name did not resolve.
func unresolvedResult(o outcome, port uint16) checkResult {
	r := resultOf(o.label, o.d)
	r.Verdict, r.Reason, r.Hint, r.HintLifts, r.PublicOnly, r.Error = "unresolved", "", "", "", false, o.err.Error()
	r.Port = port
	return r
}

// refused reports a decision that is no proof of an allow: denied (audit
// denials included) or depending on the addresses.
func refused(d policy.Decision) bool { return d.Denied() || pending(d) }

// parseCheckTarget turns host:port, IP:port, [IPv6]:port, a bare host or
// address (any port) or a URL into a request.
// ambiguousIPv6 refuses "::1:80", an IPv6 address that also reads as
// ::1 with port 80, saying how to write each.
func ambiguousIPv6(t string) error {
	i := strings.LastIndexByte(t, ':')
	if i < 0 || strings.HasPrefix(t, "[") {
		return nil
	}
	if _, err := netip.ParseAddr(t); err != nil {
		return nil
	}
	addr, port := t[:i], t[i+1:]
	if _, err := netip.ParseAddr(addr); err != nil {
		return nil
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port[0] == '0' {
		return nil
	}
	return fmt.Errorf("target %q: an IPv6 address with a port is written in brackets: did you mean [%s]:%s? (the address %s on any port is [%s])",
		t, addr, port, t, t)
}

func parseCheckTarget(t string) (policy.Request, error) {
	if t == "" {
		return policy.Request{}, errors.New("empty target")
	}
	if strings.Contains(t, "://") {
		u, err := url.Parse(t)
		if err != nil {
			return policy.Request{}, fmt.Errorf("target %q: %w", t, err)
		}
		port, ok := policy.SchemePort(u.Scheme)
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
	if err := ambiguousIPv6(t); err != nil {
		return policy.Request{}, err
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

// formatCheck is one line of check output: verdict, target, what the
// target is for (requirements), reason, rule, hint, and the caveat of an
// allow that holds for public addresses only.
func formatCheck(target, about string, d policy.Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %s", verdictOf(d), target)
	if about != "" {
		b.WriteString("  " + about)
	}
	fmt.Fprintf(&b, "  %s", d.Reason)
	if d.Rule != nil {
		fmt.Fprintf(&b, "  %s %s", d.Rule.Location(), d.Rule.Text)
		if d.Rule.Note != "" {
			fmt.Fprintf(&b, "  why: %s", d.Rule.Note)
		}
	}
	b.WriteString(formatRequest(d))
	if d.Hint != "" {
		fmt.Fprintf(&b, "  hint: %s", d.Hint)
		if l := d.HintLifts(); l != "" {
			// A YAML comment: the hint stays one line to paste.
			fmt.Fprintf(&b, "  # %s", l)
		}
	}
	if d.Reason == policy.ReasonPerAddress {
		b.WriteString("  (run with --resolve to decide on its addresses)")
	}
	if publicOnly(d) {
		fmt.Fprintf(&b, "  (public addresses only: the guards decide on what %s resolves to; --resolve checks)", d.Host)
	}
	return b.String()
}

// publicOnly reports an allow of a name, not yet resolved, by a default or a
// wildcard rule: neither lifts a guard, so serve allows the name only where
// it resolves to public addresses (a private, loopback or metadata answer is
// refused). An exact host rule lifts the guards and needs no such caveat.
func publicOnly(d policy.Decision) bool {
	if d.Verdict != policy.Allow || d.Audit || d.IP.IsValid() || d.Host == "" {
		return false
	}
	return d.Reason == policy.ReasonDefaultAllow ||
		d.Reason == policy.ReasonAllowedByRule && d.Rule != nil && strings.Contains(d.Rule.Host, "*")
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
		Verdict: verdictOf(d), Target: target, Host: d.Host, Port: d.Port, PublicOnly: publicOnly(d),
		Reason: string(d.Reason), Hint: d.Hint, HintLifts: d.HintLifts(), Policy: d.Policy, Source: d.Source,
	}
	if d.IP.IsValid() {
		r.IP = d.IP.String()
	}
	if d.Rule != nil {
		r.Rule, r.RuleText = d.Rule.Location(), d.Rule.Text
	}
	r.RuleReason = d.RuleReason()
	if d.Intercept {
		r.Intercept, r.Method, r.Path = true, d.Method, d.Path
	}
	if rr := d.RequestRule; rr != nil {
		r.RequestRule, r.RequestRuleText = rr.Location(), rr.Text()
	}
	for _, in := range d.Inject {
		r.Inject = append(r.Inject, in.Header)
	}
	return r
}
