package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// cmdShow prints the policy in force after include: as YAML: every setting
// with its value and the FILE:LINE of the file that set it ("default" when
// none did), every rule with the FILE:LINE it came from, and each clients:
// entry with its rules and the deny rules of the other files it gets. A
// setting marked secret (policy.Setting.Secret) is printed [redacted].
// Between files a deny wins (docs/policy.md, "Layering"): the output
// describes the layered policy; loaded as one file, its rules would meet
// the one-file precedence instead.
func cmdShow(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("egress show", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "policy `FILE` (default: the built-in full-internet policy)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress show [--config FILE]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Prints the policy in force after include:, as YAML: every setting with the FILE:LINE")
		fmt.Fprintln(stderr, "of the file that sets it (default: egress's own), every rule with the FILE:LINE it")
		fmt.Fprintln(stderr, "comes from, secrets redacted. Exit 0, or 2 when the policy does not load.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	rest, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "egress show: unexpected argument %q%s\n", rest[0], configHint(rest[0], *config))
		return exitUsage
	}
	p := policy.Builtin()
	if *config != "" {
		data, err := reload.ReadFile(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress show: %v\n", err)
			return exitUsage
		}
		if p, err = policy.LoadWith(*config, data, reload.ReadFile); err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
	}
	writeShow(stdout, p)
	return exitOK
}

// redacted is what egress show prints for a secret value.
const redacted = "[redacted]"

// showLine is one line of egress show: YAML, and where it comes from as a
// comment aligned with the others.
type showLine struct{ text, from string }

func writeShow(w io.Writer, p *policy.Policy) {
	files := p.Files()
	fmt.Fprintf(w, "# the policy in force: %s", files[0])
	if len(files) > 1 {
		fmt.Fprintf(w, ", including %s", strings.Join(files[1:], ", "))
	}
	fmt.Fprintln(w)
	if len(files) > 1 {
		fmt.Fprintln(w, "# between its files a deny wins (docs/policy.md, Layering)")
	}
	lines := []showLine{{text: "version: 1"}}
	section := ""
	for _, s := range p.Settings() {
		key := s.Key
		if sec, field, ok := strings.Cut(s.Key, "."); ok {
			if sec != section {
				lines = append(lines, showLine{text: sec + ":"})
				section = sec
			}
			key = "  " + field
		}
		lines = append(lines, showLine{key + ": " + settingValue(s), sourceOf(s.Source)})
	}
	lines = append(lines, rulesLines("", p.TopRules(), nil)...)
	for i, c := range p.Clients {
		own, inherited := p.ClientRules(i)
		if i == 0 {
			lines = append(lines, showLine{text: "clients:"})
		}
		lines = append(lines, showLine{text: "  - name: " + strconv.Quote(c.Name)})
		if len(c.Sources) > 0 {
			s := make([]string, len(c.Sources))
			for j, pf := range c.Sources {
				s[j] = strconv.Quote(pf.String())
			}
			lines = append(lines, showLine{text: "    sources: [" + strings.Join(s, ", ") + "]"})
		}
		if len(c.Users) > 0 {
			s := make([]string, len(c.Users))
			for j, u := range c.Users {
				s[j] = strconv.Quote(u)
			}
			lines = append(lines, showLine{text: "    users: [" + strings.Join(s, ", ") + "]"})
		}
		lines = append(lines, showLine{text: "    default: " + c.Default.String()}, showLine{text: "    mode: " + c.Mode.String()})
		lines = append(lines, rulesLines("    ", own, inherited)...)
	}
	width := 0
	for _, l := range lines {
		if l.from != "" && len(l.text) > width && len(l.text) <= 60 {
			width = len(l.text)
		}
	}
	for _, l := range lines {
		if l.from == "" {
			fmt.Fprintln(w, l.text)
			continue
		}
		fmt.Fprintf(w, "%-*s  # %s\n", width, l.text, l.from)
	}
}

// settingValue is a setting's value as egress show prints it: a secret
// one redacted, whatever it is.
func settingValue(s policy.Setting) string {
	if s.Secret {
		return redacted
	}
	return s.Value
}

func sourceOf(at string) string {
	if at == "" {
		return "default"
	}
	return at
}

// rulesLines are the allow: and deny: lists of rules under indent, each
// with its FILE:LINE; inherited, the deny rules of other files that apply
// too, follow as comments (they are not the entry's own).
func rulesLines(indent string, rules, inherited []*policy.Rule) []showLine {
	var out []showLine
	for _, action := range []policy.Verdict{policy.Allow, policy.Deny} {
		first := true
		for _, r := range rules {
			if r.Action != action {
				continue
			}
			if first {
				out = append(out, showLine{text: indent + action.String() + ":"})
				first = false
			}
			out = append(out, ruleLines(indent+"  ", r)...)
		}
	}
	if len(inherited) > 0 {
		out = append(out, showLine{text: indent + "# and, from the other files (between files a deny wins):"})
		for _, r := range inherited {
			out = append(out, showLine{text: indent + "#   deny " + ruleYAML(r) + " at " + r.Location()})
		}
	}
	return out
}

// ruleLines is one rule as a list item: one line of flow YAML, or, with
// http: or inject:, a block whose entries each name their FILE:LINE. An
// inject: entry names its header and where the value comes from, never
// the value: egress show does not resolve secrets, and prints
// [redacted] in the value's place.
func ruleLines(indent string, r *policy.Rule) []showLine {
	if len(r.HTTP) == 0 && len(r.Inject) == 0 {
		return []showLine{{indent + "- " + ruleYAML(r), r.Location()}}
	}
	first, ports, _ := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(r.Text, "{"), "}"), ", ports: ")
	out := []showLine{{indent + "- " + first, r.Location()}}
	if ports != "" {
		out = append(out, showLine{text: indent + "  ports: " + ports})
	}
	if r.Note != "" {
		out = append(out, showLine{text: indent + "  reason: " + strconv.Quote(r.Note)})
	}
	if len(r.HTTP) > 0 {
		out = append(out, showLine{text: indent + "  http:"})
		for _, rr := range r.HTTP {
			t := rr.Text()
			if rr.Note != "" {
				t = t[:len(t)-1] + ", reason: " + strconv.Quote(rr.Note) + "}"
			}
			out = append(out, showLine{indent + "    - " + t, rr.Location()})
		}
	}
	if len(r.Inject) > 0 {
		out = append(out, showLine{text: indent + "  inject:"})
		for _, in := range r.Inject {
			out = append(out, showLine{indent + "    - " + injectYAML(in), location(in.File, in.Line) + ", value " + redacted})
		}
	}
	return out
}

// injectYAML is an inject: entry as written: its header, where the value
// comes from and its prefix, never the value.
func injectYAML(in *policy.Inject) string {
	t := "{header: " + policy.YAMLScalar(in.Header)
	if in.FromEnv != "" {
		t += ", from_env: " + in.FromEnv
	} else {
		t += ", from_file: " + strconv.Quote(in.FromFile)
	}
	if in.Prefix != "" {
		t += ", prefix: " + strconv.Quote(in.Prefix)
	}
	return t + "}"
}

func location(file string, line int) string { return file + ":" + strconv.Itoa(line) }

// ruleYAML is a rule as one line of flow YAML, its reason: included. The
// text is rebuilt from the fields that match (policy.Rule.Text), never the
// file's bytes, so that a field holding a secret is printed only where
// egress show says so.
func ruleYAML(r *policy.Rule) string {
	t := r.Text
	if r.Note != "" && strings.HasSuffix(t, "}") {
		t = t[:len(t)-1] + ", reason: " + strconv.Quote(r.Note) + "}"
	}
	return t
}
