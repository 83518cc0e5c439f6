package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Policy is a compiled policy file: rules, guards and the settings of egress
// serve. It is immutable once loaded; share it freely between goroutines and
// swap it atomically on reload.
type Policy struct {
	Source  string // file name, or "(built-in)"
	Version int
	Default Verdict
	Mode    Mode

	// AllowFrom lists the client source addresses served; empty = any.
	AllowFrom []netip.Prefix
	// NAT64Prefixes are the operator's NAT64 (DNS64) prefixes besides the
	// well-known 64:ff9b::/96, validated against RFC 6052 §2.2: an address
	// under one is decided on the IPv4 address it carries, guards and cidr
	// rules alike.
	NAT64Prefixes []netip.Prefix
	// Clients are the per-client policies, in file order (the first entry
	// that matches a request's client decides for it).
	Clients []Client

	Listen   Listen
	Log      Log
	DNS      DNS
	Timeouts Timeouts
	Limits   Limits
	Reload   Reload
	TLS      TLS

	hash       string
	files      []string          // see Files
	sources    map[string]string // see Settings
	top        ruleset
	clientSets []*ruleset // parallel to Clients
	warns      []Diagnostic
}

// Client is one clients: entry: a policy of its own for the clients it
// selects. Its rules are its own (the top-level rules do not apply to it);
// Default and Mode are inherited from the top level when not set.
type Client struct {
	Name    string
	Sources []netip.Prefix // client source addresses; empty = any
	Users   []string       // proxy user names; empty = any
	Default Verdict
	Mode    Mode
}

// Diagnostic is one problem found in a policy file, at FILE:LINE:COL.
type Diagnostic struct {
	File    string
	Line    int
	Column  int
	Message string
	Warning bool // true for a warning; false for an error
}

func (d Diagnostic) String() string {
	return fmt.Sprintf("%s:%d:%d: %s", d.File, d.Line, d.Column, d.Message)
}

// Errors is every error found in a policy file; Load returns it so that a
// user sees all problems at once.
type Errors []Diagnostic

func (e Errors) Error() string {
	var b strings.Builder
	for i, d := range e {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(d.String())
	}
	return b.String()
}

// BuiltinSource is the Source of the built-in default policy.
const BuiltinSource = "(built-in)"

// load runs parse with a fresh loader and returns every error it found,
// sorted by position, or nil. yaml.v3 has panicked on hostile input
// before: a policy file or a plugin's manifest must never take the
// process down.
func load(file string, data []byte, parse func(*loader)) Errors {
	l := &loader{file: file, budget: nodeBudget(len(data))}
	func() {
		defer func() {
			if v := recover(); v != nil {
				l.errs = append(l.errs, Diagnostic{File: file, Line: 1, Column: 1, Message: fmt.Sprintf("yaml: cannot parse: %v", v)})
			}
		}()
		if line, col, ok := invalidUTF8(data); ok {
			// yaml.v3 says only "invalid leading UTF-8 octet", at 1:1.
			l.errs = append(l.errs, Diagnostic{File: file, Line: line, Column: col, Message: "the file is not UTF-8 text here: write text in UTF-8"})
			return
		}
		parse(l)
	}()
	if l.budget < 0 {
		l.errs = append(l.errs, Diagnostic{File: file, Line: 1, Column: 1, Message: "the file is too large once its aliases are expanded"})
	}
	if len(l.errs)+len(l.late) == 0 {
		return nil
	}
	all := make([]lateError, 0, len(l.errs)+len(l.late))
	for _, d := range l.errs {
		all = append(all, lateError{d: d, line: d.Line, col: d.Column})
	}
	all = append(all, l.late...)
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		return a.line < b.line || a.line == b.line && a.col < b.col
	})
	errs := make(Errors, len(all))
	for i, e := range all {
		errs[i] = e.d
	}
	return errs
}

// Load parses and compiles a policy file. file names it in diagnostics and
// decisions. A non-nil error is an Errors listing every problem.
//
// The file is strict: unknown fields, wrong types, bad cidrs, ports or host
// patterns, a missing version: or default:, and a second YAML document are
// all errors. Settings left out get their defaults (see the Listen, Log,
// DNS, Timeouts, Limits, Reload and TLS types). Load reads no other file: an
// include: is an error (see LoadWith).
func Load(file string, data []byte) (*Policy, error) { return LoadWith(file, data, nil) }

// setDefaults fills in every setting a file may leave out.
func (p *Policy) setDefaults() {
	p.Listen = Listen{HTTP: "127.0.0.1:3128", Admin: "127.0.0.1:9090", Via: true}
	p.Log = Log{Format: "json", Level: "info"}
	p.DNS = DNS{Timeout: 2 * time.Second, Blocked: "nxdomain", MaxTTL: time.Hour, CacheSize: 10000, ResolveUnlisted: true}
	p.Timeouts = Timeouts{Dial: 10 * time.Second, Header: 10 * time.Second, Response: 60 * time.Second, HalfClose: 30 * time.Second, Drain: 30 * time.Second}
	p.Limits = Limits{MaxTunnels: 10000, MaxHeaderBytes: 65536}
	p.Reload = Reload{RevokeOpen: true}
}

// compile builds the matchers of every ruleset.
func (p *Policy) compile() {
	p.top.resolveUnlisted = p.DNS.ResolveUnlisted
	p.top.compile()
	for _, rs := range p.clientSets {
		rs.resolveUnlisted = p.DNS.ResolveUnlisted
		rs.compile()
	}
}

// builtinText is the built-in policy; configs/full-internet.yaml spells out
// the same policy with every default written down (a test checks).
const builtinText = "version: 1\ndefault: allow\n"

// Builtin returns the built-in default policy: full internet, every guard
// on. It is the same policy as configs/full-internet.yaml.
func Builtin() *Policy {
	p, err := Load(BuiltinSource, []byte(builtinText))
	if err != nil {
		panic("policy: built-in policy: " + err.Error())
	}
	return p
}

// Hash is a hex SHA-256 of the policy's source text.
func (p *Policy) Hash() string { return p.hash }

// Warnings lists rules that can never decide and common traps. Load's
// result is valid whatever the warnings say.
func (p *Policy) Warnings() []Diagnostic { return append([]Diagnostic(nil), p.warns...) }

// Rules returns every rule: the top level's, then each clients: entry's
// (within each, as the file lists them under allow: and deny:). The rules
// must not be modified.
func (p *Policy) Rules() []*Rule {
	out := append([]*Rule(nil), p.top.rules...)
	for _, rs := range p.clientSets {
		out = append(out, rs.rules...)
	}
	return out
}

// Decide decides on one request. See the package comment for the two steps.
//
// Precedence: name rules (host) and address rules (cidr) are matched
// separately; each side's most specific matching rule is taken (exact host
// over wildcard, more labels over fewer, longer prefix over shorter, ports
// over none; a tie goes to deny). A deny on either side denies; then the
// guards refuse what no allow rule names explicitly; then an allow on either
// side allows; then the default decides.
func (p *Policy) Decide(r Request) Decision { return p.decide(r) }

// invalidUTF8 finds the first byte of data that is not UTF-8, as a
// line and column (in characters, as yaml.v3 counts).
func invalidUTF8(data []byte) (line, col int, bad bool) {
	line, col = 1, 1
	for len(data) > 0 {
		r, n := utf8.DecodeRune(data)
		if r == utf8.RuneError && n <= 1 {
			return line, col, true
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		data = data[n:]
	}
	return 0, 0, false
}
