package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// diffExamples is how many example destinations diff prints per rule.
const diffExamples = 3

// diffSide is one policy's decision in egress diff --json.
type diffSide struct {
	Verdict    string `json:"verdict"` // allow, deny or audit_deny
	Reason     string `json:"reason"`
	Rule       string `json:"rule,omitempty"`
	RuleText   string `json:"rule_text,omitempty"`
	RuleReason string `json:"rule_reason,omitempty"`
	Policy     string `json:"policy"`
}

// diffResult is one line of egress diff --json.
type diffResult struct {
	Change      string   `json:"change"` // allows (NEW lets through what OLD refused) or refuses
	Destination string   `json:"destination"`
	Host        string   `json:"host,omitempty"`
	IP          string   `json:"ip,omitempty"`
	Port        uint16   `json:"port"`
	Client      string   `json:"client,omitempty"`
	User        string   `json:"user,omitempty"`
	Method      string   `json:"method,omitempty"` // a request to an intercepted destination
	Path        string   `json:"path,omitempty"`
	Old         diffSide `json:"old"`
	New         diffSide `json:"new"`
}

// cmdDiff shows what a policy change does: the destinations NEW lets
// through that OLD refused, and those it refuses that OLD let through,
// grouped by the rule (or default, or guard) that decides them in NEW.
// Exit 0 when NEW allows nothing more, 1 when it does, 2 on a bad file.
func cmdDiff(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("diff", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "one JSON object per destination decided differently")
	summary := fs.Bool("summary", false, "counts per file and rule instead of examples, for large policies")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress diff [--json | --summary] OLD NEW")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Shows what NEW allows that OLD refused and what NEW refuses that OLD allowed, by")
		fmt.Fprintln(stderr, "rule, with example destinations decided as egress serve decides them (guards")
		fmt.Fprintln(stderr, "included). Exit 0: NEW allows nothing more; 1: it does; 2: a file does not load.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if strayConfig(args, stderr, "diff", "OLD NEW") {
		return exitUsage
	}
	files, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	if *asJSON && *summary {
		fmt.Fprintf(stderr, "egress diff: --json or --summary, not both\n\n")
		fs.Usage()
		return exitUsage
	}
	if len(files) != 2 {
		fmt.Fprintf(stderr, "egress diff: two policy files, OLD and NEW (got %d)\n\n", len(files))
		fs.Usage()
		return exitUsage
	}
	var ps [2]*policy.Policy
	for i, f := range files {
		data, err := reload.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "egress diff: %v\n", err)
			return exitUsage
		}
		if ps[i], err = policy.LoadWith(f, data, reload.ReadFile); err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
	}
	changes, tried := policy.Diff(ps[0], ps[1])
	// Requests to intercepted destinations (http: rules), wider first.
	reqs, reqTried := policy.DiffRequests(ps[0], ps[1])
	changes, tried = append(changes, reqs...), tried+reqTried
	sort.SliceStable(changes, func(i, j int) bool { return changes[i].Wider() && !changes[j].Wider() })
	code = exitOK
	if len(changes) > 0 && changes[0].Wider() {
		code = exitDenied
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, c := range changes {
			_ = enc.Encode(diffResultOf(c))
		}
		return code
	}
	if *summary {
		printDiffSummary(stdout, changes, tried)
		return code
	}
	printDiff(stdout, changes, tried)
	return code
}

// diffSummaryRules is how many rules diff --summary names in each
// direction, those deciding the most destinations first.
const diffSummaryRules = 10

// printDiffSummary prints, in each direction, how many destinations NEW
// decides differently per file (of the rule that decides in NEW; a
// default or a guard by its reason code) and for the rules that decide
// the most, the others counted on one line: a few dozen lines however
// large the policies (issue 21: a 100,000-rule diff printed 400,011).
func printDiffSummary(w io.Writer, changes []policy.Change, tried int) {
	type tally struct {
		key string
		n   int
	}
	add := func(m map[string]*tally, order *[]*tally, key string) {
		t := m[key]
		if t == nil {
			t = &tally{key: key}
			m[key] = t
			*order = append(*order, t)
		}
		t.n++
	}
	wider := 0
	for _, dir := range []bool{true, false} {
		byFile, byRule := map[string]*tally{}, map[string]*tally{}
		var files, rules []*tally
		n := 0
		for _, c := range changes {
			if c.Wider() != dir {
				continue
			}
			n++
			file := string(c.New.Reason)
			if c.New.Rule != nil {
				file = c.New.Rule.File
			}
			head := decidedBy(c.New)
			if c.New.Policy != "" && c.New.Policy != "default" {
				file = "client " + c.New.Policy + ": " + file
				head = "client " + c.New.Policy + ": " + head
			}
			add(byFile, &files, file)
			add(byRule, &rules, head)
		}
		if dir {
			wider = n
		}
		if n == 0 {
			continue
		}
		if dir {
			fmt.Fprintf(w, "NEW allows %s OLD refused:\n", count(n, "destination"))
		} else {
			fmt.Fprintf(w, "NEW refuses %s OLD allowed:\n", count(n, "destination"))
		}
		most := func(ts []*tally) {
			sort.SliceStable(ts, func(i, j int) bool { return ts[i].n > ts[j].n })
		}
		most(files)
		most(rules)
		width := 0
		for _, t := range files {
			width = max(width, len(t.key))
		}
		fmt.Fprintf(w, "  by file (of the rule deciding in NEW, or the reason):\n")
		for _, t := range files {
			fmt.Fprintf(w, "    %-*s  %d\n", width, t.key, t.n)
		}
		shown := rules[:min(len(rules), diffSummaryRules)]
		width = 0
		for _, t := range shown {
			width = max(width, len(t.key))
		}
		fmt.Fprintln(w, "  by rule (or reason), the most first:")
		for _, t := range shown {
			fmt.Fprintf(w, "    %-*s  %d\n", width, t.key, t.n)
		}
		if rest := rules[len(shown):]; len(rest) > 0 {
			m := 0
			for _, t := range rest {
				m += t.n
			}
			fmt.Fprintf(w, "    and %d more rule%s, %s (--json lists every destination)\n", len(rest), plural(len(rest)), count(m, "destination"))
		}
	}
	if len(changes) == 0 {
		fmt.Fprintf(w, "no difference in the %d destinations tried\n", tried)
		return
	}
	fmt.Fprintf(w, "\nNEW allows %s OLD refused, and refuses %d OLD allowed (of %d destinations tried)\n", count(wider, "destination"), len(changes)-wider, tried)
}

// printDiff prints the changes grouped by what decides them in NEW, with a
// few example destinations each (and what OLD said of each), and a summary
// line.
func printDiff(w io.Writer, changes []policy.Change, tried int) {
	type group struct {
		head    string
		wider   bool
		changes []policy.Change
	}
	var groups []*group
	byHead := map[string]*group{}
	wider := 0
	for _, c := range changes {
		if c.Wider() {
			wider++
		}
		head := decidedBy(c.New)
		if c.New.Policy != "" && c.New.Policy != "default" {
			head = "client " + c.New.Policy + ": " + head
		}
		key := fmt.Sprint(c.Wider(), head)
		g := byHead[key]
		if g == nil {
			g = &group{head: head, wider: c.Wider()}
			byHead[key] = g
			groups = append(groups, g)
		}
		g.changes = append(g.changes, c)
	}
	for i, g := range groups {
		if i == 0 || g.wider != groups[i-1].wider {
			if g.wider {
				fmt.Fprintln(w, "NEW allows what OLD refused:")
			} else {
				fmt.Fprintln(w, "NEW refuses what OLD allowed:")
			}
		}
		fmt.Fprintf(w, "  %s\n", g.head)
		// Names at their public address and addresses first, the
		// plainest examples, in order; the first ones and the last.
		sort.SliceStable(g.changes, func(i, j int) bool {
			a, b := g.changes[i], g.changes[j]
			if x, y := strings.Contains(a.Destination(), " at "), strings.Contains(b.Destination(), " at "); x != y {
				return y
			}
			if a.Request.Host != b.Request.Host {
				return a.Request.Host < b.Request.Host
			}
			if c := a.Request.IP.Compare(b.Request.IP); c != 0 {
				return c < 0
			}
			return a.Request.Port < b.Request.Port
		})
		shown := examples(g.changes)
		width := 0
		for _, c := range shown {
			width = max(width, len(c.Destination()))
		}
		for _, c := range shown {
			fmt.Fprintf(w, "      %-*s  OLD: %s\n", width, c.Destination(), decidedBy(c.Old))
		}
		if n := len(g.changes) - len(shown); n > 0 {
			fmt.Fprintf(w, "      and %d more\n", n)
		}
	}
	if len(changes) == 0 {
		fmt.Fprintf(w, "no difference in the %s tried\n", count(tried, "destination"))
		return
	}
	fmt.Fprintf(w, "\nNEW allows %s OLD refused, and refuses %d OLD allowed (of %s tried)\n", count(wider, "destination"), len(changes)-wider, count(tried, "destination"))
}

// examples picks up to diffExamples of changes (sorted, plain ones first)
// to show: the first plain ones and the last, then the others.
func examples(changes []policy.Change) []policy.Change {
	plain := 0
	for plain < len(changes) && !strings.Contains(changes[plain].Destination(), " at ") {
		plain++
	}
	if plain > diffExamples {
		return append(append([]policy.Change(nil), changes[:diffExamples-1]...), changes[plain-1])
	}
	return changes[:min(len(changes), diffExamples)]
}

// decidedBy names what decided d: the rule (FILE:LINE and as written, with
// its reason:), or the reason code of a default or a guard.
func decidedBy(d policy.Decision) string {
	s := string(d.Reason)
	if d.Rule != nil {
		s = d.Rule.Location() + " " + d.Rule.Text
		if d.Rule.Note != "" {
			s += " why: " + d.Rule.Note
		}
	}
	if rr := d.RequestRule; rr != nil {
		s += " request rule " + rr.Location() + " " + rr.Text()
		if rr.Note != "" {
			s += " why: " + rr.Note
		}
	} else if d.Method != "" && !d.Intercept && d.Allowed() {
		s += " (a tunnel: every request)"
	} else if d.Method != "" && d.Denied() {
		s += " " + string(d.Reason)
	}
	if d.Audit {
		s += " [audit: let through]"
	}
	return s
}

func diffResultOf(c policy.Change) diffResult {
	side := func(d policy.Decision) diffSide {
		s := diffSide{Verdict: d.Event(), Reason: string(d.Reason), Policy: d.Policy}
		if d.Rule != nil {
			s.Rule, s.RuleText = d.Rule.Location(), d.Rule.Text
		}
		s.RuleReason = d.RuleReason()
		return s
	}
	r := diffResult{Change: "refuses", Destination: c.Destination(), Host: c.Request.Host, Port: c.Request.Port, User: c.Request.User, Old: side(c.Old), New: side(c.New)}
	if c.Wider() {
		r.Change = "allows"
	}
	if c.Request.IP.IsValid() {
		r.IP = c.Request.IP.String()
	}
	if c.Request.Client.IsValid() {
		r.Client = c.Request.Client.String()
	}
	r.Method, r.Path = c.Request.Method, c.Request.Path
	return r
}
