package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// cmdCompletion prints a completion script for bash, zsh or fish: the
// commands, each command's flags (read from what its -h prints, so that a
// new flag completes without an edit here), file names for the rest.
func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("completion", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress completion bash|zsh|fish")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Prints a script that completes egress's commands, their flags and file names:")
		fmt.Fprintln(stderr, "  bash: source <(egress completion bash)      (in ~/.bashrc)")
		fmt.Fprintln(stderr, "  zsh:  source <(egress completion zsh)       (in ~/.zshrc, after compinit)")
		fmt.Fprintln(stderr, "  fish: egress completion fish > ~/.config/fish/completions/egress.fish")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	var script string
	switch fs.Arg(0) {
	case "bash":
		script = bashCompletion()
	case "zsh":
		script = zshCompletion()
	case "fish":
		script = fishCompletion()
	default:
		fmt.Fprintf(stderr, "egress completion: no completion for %q: bash, zsh or fish\n", fs.Arg(0))
		return exitUsage
	}
	io.WriteString(stdout, script)
	return exitOK
}

// usageFlag finds a flag in what -h prints: a line of flag.PrintDefaults
// ("  -config FILE") or an option of the usage line ("[--config POLICY]").
var usageFlag = regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)|\[--?([a-z][a-z0-9-]*)`)

// commandFlags is every flag name a command's -h lists, as --name (-o for
// a one-letter one), sorted.
func commandFlags(c command) []string {
	var out bytes.Buffer
	c.run([]string{"-h"}, io.Discard, &out)
	seen := map[string]bool{}
	var flags []string
	for _, m := range usageFlag.FindAllStringSubmatch(out.String(), -1) {
		name := m[1] + m[2]
		dash := "--"
		if len(name) == 1 {
			dash = "-" // learn -o
		}
		if !seen[name] {
			seen[name] = true
			flags = append(flags, dash+name)
		}
	}
	sort.Strings(flags)
	return flags
}

// completed is what completes after the command: its flags, and the
// words its first argument may be (completion's shells, ca's init).
func completed(c command) (flags []string, words []string) {
	switch c.name {
	case "completion":
		return nil, []string{"bash", "zsh", "fish"}
	case "ca":
		return commandFlags(c), []string{"init"}
	}
	return commandFlags(c), nil
}

func commandNames() []string {
	names := []string{"help"}
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return names
}

func bashCompletion() string {
	var b strings.Builder
	b.WriteString(`# bash completion for egress: source <(egress completion bash)
_egress() {
	local cur=${COMP_WORDS[COMP_CWORD]} flags="" words=""
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W "` + strings.Join(commandNames(), " ") + ` --help --version" -- "$cur"))
		return
	fi
	case ${COMP_WORDS[1]} in
	help) words="` + strings.Join(commandNames()[1:], " ") + `" ;;
`)
	for _, c := range commands() {
		flags, words := completed(c)
		fmt.Fprintf(&b, "\t%s) flags=%q words=%q ;;\n", c.name, strings.Join(flags, " "), strings.Join(words, " "))
	}
	b.WriteString(`	esac
	if [ -n "$words" ] && [ "$COMP_CWORD" -eq 2 ]; then
		COMPREPLY=($(compgen -W "$words" -- "$cur"))
	elif [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
	else
		COMPREPLY=($(compgen -f -- "$cur"))
	fi
}
complete -o filenames -o bashdefault -F _egress egress
`)
	return b.String()
}

func zshCompletion() string {
	var b strings.Builder
	b.WriteString(`#compdef egress
# zsh completion for egress: source <(egress completion zsh), after compinit
_egress() {
	local -a cmds flags words
	cmds=(
`)
	fmt.Fprintf(&b, "\t\t%s\n", zshQuote("help:print a command's usage"))
	for _, c := range commands() {
		fmt.Fprintf(&b, "\t\t%s\n", zshQuote(c.name+":"+c.summary))
	}
	b.WriteString(`	)
	if (( CURRENT == 2 )); then
		_describe 'command' cmds
		return
	fi
	case $words[2] in
	help) words=(` + strings.Join(commandNames()[1:], " ") + `) ;;
`)
	for _, c := range commands() {
		flags, words := completed(c)
		fmt.Fprintf(&b, "\t%s) flags=(%s) words=(%s) ;;\n", c.name, strings.Join(flags, " "), strings.Join(words, " "))
	}
	b.WriteString(`	esac
	if (( ${#words} && CURRENT == 3 )); then
		compadd -- $words
	elif [[ $PREFIX == -* ]]; then
		compadd -- $flags
	else
		_files
	fi
}
if [ "$funcstack[1]" = "_egress" ]; then
	_egress "$@"
else
	compdef _egress egress
fi
`)
	return b.String()
}

func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func fishCompletion() string {
	var b strings.Builder
	b.WriteString("# fish completion for egress: egress completion fish > ~/.config/fish/completions/egress.fish\n")
	fmt.Fprintf(&b, "complete -c egress -n __fish_use_subcommand -f -a help -d %s\n", zshQuote("print a command's usage"))
	for _, c := range commands() {
		fmt.Fprintf(&b, "complete -c egress -n __fish_use_subcommand -f -a %s -d %s\n", c.name, zshQuote(c.summary))
	}
	fmt.Fprintf(&b, "complete -c egress -n '__fish_seen_subcommand_from help' -f -a %s\n", zshQuote(strings.Join(commandNames()[1:], " ")))
	for _, c := range commands() {
		flags, words := completed(c)
		if len(words) > 0 {
			fmt.Fprintf(&b, "complete -c egress -n '__fish_seen_subcommand_from %s' -f -a %s\n", c.name, zshQuote(strings.Join(words, " ")))
		}
		for _, f := range flags {
			opt := "-l " + strings.TrimPrefix(f, "--")
			if !strings.HasPrefix(f, "--") {
				opt = "-s " + strings.TrimPrefix(f, "-")
			}
			fmt.Fprintf(&b, "complete -c egress -n '__fish_seen_subcommand_from %s' %s\n", c.name, opt)
		}
	}
	return b.String()
}
