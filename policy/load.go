package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Policy is a compiled policy file: rules, guards and the settings of egress
// serve. It is immutable once loaded; share it freely between goroutines and
// swap it atomically on reload.
type Policy struct {
	Source  string // file name, or "(built-in)"
	Version int
	Default Verdict
	Mode    Mode

	Listen   Listen
	Log      Log
	DNS      DNS
	Timeouts Timeouts
	Limits   Limits

	hash string
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

// Load parses and compiles a policy file. file names it in diagnostics and
// decisions. A non-nil error is an Errors listing every problem.
//
// TODO(policy): real implementation. This stub only exists so that other
// packages compile while the policy package is written.
func Load(file string, data []byte) (*Policy, error) {
	return nil, Errors{{File: file, Line: 1, Column: 1, Message: "policy loading is not implemented yet"}}
}

// Builtin returns the built-in default policy: full internet, every guard
// on. It is the same policy as configs/full-internet.yaml.
func Builtin() *Policy {
	return &Policy{Source: BuiltinSource, Version: 1, Default: Allow}
}

// Hash is a hex SHA-256 of the policy's source text.
func (p *Policy) Hash() string { return p.hash }

// Warnings lists rules that can never decide and common traps. Load's
// result is valid whatever the warnings say.
func (p *Policy) Warnings() []Diagnostic { return nil }

// Decide decides on one request. See the package comment for the two steps.
func (p *Policy) Decide(r Request) Decision {
	return Decision{Verdict: p.Default, Reason: ReasonDefaultAllow, Policy: "default", Source: p.Source, Host: r.Host, IP: r.IP, Port: r.Port}
}

// NormalizeHost returns the normal form of a host as a client may spell it:
// a lowercase ASCII name without trailing dot (IDNs in punycode), or, when
// it is an IP literal in any form, the zero name and the address.
func NormalizeHost(s string) (name string, ip netip.Addr, err error) {
	return "", netip.Addr{}, errors.New("not implemented")
}
