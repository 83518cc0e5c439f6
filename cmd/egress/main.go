// Command egress is a network egress policy proxy: an HTTP forward proxy
// with CONNECT tunnels, a transparent TCP path, a DNS proxy and a sandbox
// runner, all enforcing one YAML policy.
//
// This package is thin: flags, wiring and exit codes. The policy lives in
// package policy, the data paths in proxy/....
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/egress-proxy/egress/policy"
)

// Exit codes shared by every subcommand.
const (
	exitOK     = 0
	exitDenied = 1 // check: a target is denied; lint: the file has errors
	exitUsage  = 2 // bad flags, bad config or bad target
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the proxy (HTTP/CONNECT, DNS, transparent TCP)", cmdServe},
		{"check", "explain the policy's decision for destinations", cmdCheck},
		{"show", "print the policy in force after include:, with where each rule and setting comes from", cmdShow},
		{"lint", "validate policy files", cmdLint},
		{"diff", "show what a policy change allows and refuses", cmdDiff},
		{"learn", "write a policy allowing what egress logged (audit to enforce)", cmdLearn},
		{"run", "run a command in a network namespace whose only way out is egress", cmdRun},
		{"health", "ask a running egress's admin listener whether it is healthy", cmdHealth},
		{"ca", "make an interception CA for hosts with http: request rules", cmdCA},
		{"completion", "print a shell completion script (bash, zsh or fish)", cmdCompletion},
		{"version", "print the version and the commit it was built from", cmdVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(stderr)
		return exitOK
	case "-version", "--version":
		return cmdVersion(nil, stdout, stderr)
	case "help":
		return cmdHelp(args[1:], stdout, stderr)
	}
	if c, ok := lookup(args[0]); ok {
		return c.run(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "egress: unknown command %q%s\n\n", args[0], didYouMean(args[0]))
	usage(stderr)
	return exitUsage
}

// cmdHelp prints the general usage, or with a COMMAND that command's own
// (what 'egress COMMAND -h' prints).
func cmdHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" {
		usage(stderr)
		return exitOK
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "egress help: unknown command %q%s\n\n", args[0], didYouMean(args[0]))
		usage(stderr)
		return exitUsage
	}
	// Every command prints its usage for -h and exits 0.
	return c.run([]string{"-h"}, stdout, stderr)
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// didYouMean is " (did you mean \"serve\"?)" for "serv", or "".
func didYouMean(name string) string {
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	if strings.HasPrefix(name, "-") {
		return ""
	}
	if best := policy.Closest(name, append(names, "help")); best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: egress COMMAND [FLAGS] [ARGS]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'egress help COMMAND' (or 'egress COMMAND -h') for a command's flags,")
	fmt.Fprintln(w, "'egress --version' for the version.")
}

// configHint is what to add to "unexpected argument ARG" when ARG looks
// like a policy file given without --config: ": did you mean --config
// ARG?", or "" (also when --config was given).
func configHint(arg, config string) string {
	if config != "" || !(strings.HasSuffix(arg, ".yaml") || strings.HasSuffix(arg, ".yml")) {
		return ""
	}
	return ": did you mean --config " + arg + "?"
}
