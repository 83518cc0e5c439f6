package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// A policy is one file and the files it includes (include:), an
// organisation's baseline under a site's additions. How they combine
// (docs/policy.md, "Layering"):
//
//   - included files are read first, in the order listed, depth first; a
//     relative path is relative to the including file's directory; a file
//     is read once however often it is included; a cycle or a file that
//     cannot be read is an error at the include line;
//   - rules and clients: entries concatenate; within one file the usual
//     precedence holds (the most specific rule wins, deny on a tie);
//     between files a deny wins: no file allows what another file denies,
//     however specific its allow rule (a site cannot punch holes in its
//     baseline's denies, nor a baseline in a site's);
//   - a clients: entry gets the top-level denies of every other file,
//     and may not set default: allow or mode: audit where another file
//     sets default: deny or mode: enforce (see checkClients);
//   - default: and mode: may be tightened, never loosened: default: allow
//     after a default: deny, or mode: audit after mode: enforce, is an
//     error; a file that leaves one out, where no file read before it set
//     it, counts as deny or enforce against a file that would loosen it
//     (see implicit), so a silent baseline is not loosened by its site;
//   - every other setting (listen, log, dns, timeouts, limits, reload,
//     allow_from, nat64_prefixes) is taken field by field from the file
//     read last that sets it: the including file overrides what it
//     includes, and a list is replaced whole;
//   - the guards hold whatever the files say; an allow rule of any file
//     lifts one as it would alone, unless a deny of another file matches.

// maxIncludeDepth bounds a chain of includes (a cycle through symlinks,
// which a pure package cannot see, ends here).
const maxIncludeDepth = 16

// fileSet is what the loaders of one policy's files share.
type fileSet struct {
	read  func(name string) ([]byte, error)
	files []string // every file read, in the order read
	stack []string // the chain of includes being read
	sum   hash.Hash
	errs  Errors
	warns []Diagnostic

	// Where default: and mode: were last set, to refuse loosening them.
	def, mode *setting
	// clientNames maps each clients: entry's name to where it was given.
	clientNames map[string]string
	// clientsSet records, per clients: entry, its file and where it sets
	// its own default and mode (nil: it inherits the final top-level ones).
	clientsSet []clientAt
	// strict records, per file, where it sets the top-level default: deny
	// or mode: enforce: a clients entry of another file may not loosen it.
	strict map[string]map[string]string
	// listens are the non-loopback listener addresses set, checked
	// against the final allow_from.
	listens []listenAt
	// sources maps each setting set (default, listen.http, ...) to the
	// FILE:LINE of the file read last that sets it (see Settings).
	sources map[string]string
	// incomplete is true when an included file could not be read or had
	// errors: what it would have set (default:) is unknown.
	incomplete bool
}

type setting struct {
	value string
	at    string // FILE:LINE, or FILE alone for an implicit value
	// implicit: the file leaves the setting out, and no file read before
	// it set one; it counts as the tighter value (enforce, deny) against
	// a file that would loosen it, never loosening anything by itself.
	implicit bool
}

type clientAt struct {
	file      string
	layer     int
	def, mode *yaml.Node
}

type listenAt struct {
	file  string
	node  *yaml.Node
	field string // listen.http, ...
}

// LoadWith is Load for a file that may include others: read reads an
// included file by its name (egress passes os.ReadFile). Every error is
// at FILE:LINE:COL of the file that holds it, and rules remember their
// file (see Rule.File).
func LoadWith(file string, data []byte, read func(name string) ([]byte, error)) (*Policy, error) {
	p := &Policy{Source: file}
	p.setDefaults()
	fs := &fileSet{read: read, sum: sha256.New(), clientNames: map[string]string{}, strict: map[string]map[string]string{}}
	fs.load(p, file, data)
	fs.checkClients(p)
	if len(fs.errs) > 0 {
		return nil, fs.errs
	}
	p.Default, p.Mode = p.top.def, p.top.mode
	for i, set := range fs.clientsSet {
		if set.def == nil {
			p.Clients[i].Default, p.clientSets[i].def = p.top.def, p.top.def
		}
		if set.mode == nil {
			p.Clients[i].Mode, p.clientSets[i].mode = p.top.mode, p.top.mode
		}
	}
	fs.warnListens(p)
	p.files, p.sources = fs.files, fs.sources
	p.top.name = "default"
	p.compile()
	order := map[string]int{}
	for i, f := range fs.files {
		order[f] = i
	}
	p.warns = append(append(fs.warns, p.lint()...), p.lintHTTP()...)
	sort.SliceStable(p.warns, func(i, j int) bool {
		a, b := p.warns[i], p.warns[j]
		if order[a.File] != order[b.File] {
			return order[a.File] < order[b.File]
		}
		return a.Line < b.Line || a.Line == b.Line && a.Column < b.Column
	})
	p.hash = hex.EncodeToString(fs.sum.Sum(nil))
	if len(fs.files) == 1 {
		// The hash of a single file is the SHA-256 of its text, as before.
		s := sha256.Sum256(data)
		p.hash = hex.EncodeToString(s[:])
	}
	return p, nil
}

// load parses one file of the policy into p, its includes first.
func (fs *fileSet) load(p *Policy, file string, data []byte) {
	fs.files = append(fs.files, file)
	fs.stack = append(fs.stack, file)
	defer func() { fs.stack = fs.stack[:len(fs.stack)-1] }()
	fmt.Fprintf(fs.sum, "%s\x00%d\x00", file, len(data))
	fs.sum.Write(data)
	var warns []Diagnostic
	errs := load(file, data, func(l *loader) {
		l.fs, l.layer = fs, len(fs.files)-1
		l.parse(data, p)
		warns = l.warns
	})
	// A file's errors come after those of the files it includes, which
	// were read (and reported) first.
	fs.errs = append(fs.errs, errs...)
	if len(errs) > 0 {
		fs.incomplete = true
	}
	fs.warns = append(fs.warns, warns...)
}

// includes reads the files the include: value v names, before the rest of
// the including file.
func (l *loader) includes(v *yaml.Node, p *Policy) {
	fs := l.fs
	var items []*yaml.Node
	if n := l.node(v); n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		items = []*yaml.Node{n}
	} else {
		items = l.seq(v, "include")
	}
	for _, item := range items {
		s, ok := l.str(item, "an include")
		if !ok {
			continue
		}
		item = l.node(item)
		if s == "" {
			l.errf(item, "include is empty: name a policy file")
			continue
		}
		if fs == nil || fs.read == nil {
			l.errf(item, "include %q: this policy is not read from a file, and cannot include one", s)
			continue
		}
		name := s
		if !filepath.IsAbs(name) {
			name = filepath.Join(filepath.Dir(l.file), name)
		}
		name = filepath.Clean(name)
		if i := slices.Index(fs.stack, name); i >= 0 {
			l.errf(item, "include %q: a cycle: %s", s, strings.Join(append(append([]string(nil), fs.stack[i:]...), name), " includes "))
			fs.incomplete = true
			continue
		}
		if slices.Contains(fs.files, name) {
			continue // read already, through another include: once is enough
		}
		if len(fs.stack) >= maxIncludeDepth {
			l.errf(item, "include %q: includes nest deeper than %d files", s, maxIncludeDepth)
			fs.incomplete = true
			continue
		}
		data, err := fs.read(name)
		if err != nil {
			if u := errors.Unwrap(err); u != nil {
				err = u
			}
			l.errf(item, "include %q: cannot read %s: %v", s, name, err)
			fs.incomplete = true
			continue
		}
		fs.load(p, name, data)
	}
}

// tighten records a file's default: or mode: (kind), refusing to loosen
// what a file read before set (deny and enforce are the tighter values).
func (l *loader) tighten(kind string, prev **setting, v *yaml.Node, value, tighter string) bool {
	if l.fs == nil {
		return true
	}
	if s := *prev; s != nil && s.value == tighter && value != tighter {
		if s.implicit {
			l.errf(l.node(v), "%s: %s would loosen the %s of %s, which leaves %s: out (counted as %s: %s where another file would loosen it): a file may tighten the %s of the files it includes, never loosen it; write %s: %s in %s if that is meant", kind, value, kind, s.at, kind, kind, tighter, kind, kind, value, s.at)
			return false
		}
		l.errf(l.node(v), "%s: %s would loosen %s: %s of %s: a file may tighten the %s of the files it includes, never loosen it", kind, value, kind, s.value, s.at, kind)
		return false
	}
	*prev = &setting{value: value, at: location(l.file, l.node(v).Line)}
	if value == tighter {
		if l.fs.strict[kind] == nil {
			l.fs.strict[kind] = map[string]string{}
		}
		l.fs.strict[kind][l.file] = (*prev).at
	}
	return true
}

// implicit records that a file leaves default: or mode: (kind) out. Where
// no file read before it set the setting, the file counts as setting the
// tighter value, against a file read later and a clients: entry of another
// file that would loosen it: a baseline that says nothing of mode: is
// enforcing, and a site may not turn it to audit. It never loosens: a
// silent site over an audit baseline stays audit.
func (l *loader) implicit(kind string, prev **setting, tighter string) {
	if l.fs == nil || *prev != nil && !(*prev).implicit {
		return
	}
	if *prev == nil {
		*prev = &setting{value: tighter, at: l.file, implicit: true}
	}
	if l.fs.strict[kind] == nil {
		l.fs.strict[kind] = map[string]string{}
	}
	l.fs.strict[kind][l.file] = l.file + fmt.Sprintf(" (which leaves %s: out)", kind)
}

// checkClients holds the clients: entries of a layered policy to what the
// other files enforce. An entry is a policy of its own (the top-level rules
// of its file do not apply to it), but it is one file's: between files a
// deny wins and default: and mode: are only tightened, so an entry gets
// the top-level deny rules of every other file, and may not set default:
// allow or mode: audit where another file sets default: deny or mode:
// enforce. Otherwise a site's entry for 0.0.0.0/0 would undo its baseline.
func (fs *fileSet) checkClients(p *Policy) {
	if len(fs.files) < 2 {
		return
	}
	for i, c := range fs.clientsSet {
		for _, r := range p.top.rules {
			if r.Action == Deny && r.layer != c.layer {
				p.clientSets[i].inherited = append(p.clientSets[i].inherited, r)
			}
		}
		for _, k := range []struct {
			kind, loose string
			n           *yaml.Node
		}{{"default", "allow", c.def}, {"mode", "audit", c.mode}} {
			if k.n == nil || k.n.Value != k.loose {
				continue
			}
			var others []string
			for f, at := range fs.strict[k.kind] {
				if f != c.file {
					others = append(others, at)
				}
			}
			if len(others) == 0 {
				continue
			}
			sort.Strings(others)
			fs.errs = append(fs.errs, Diagnostic{File: c.file, Line: k.n.Line, Column: k.n.Column,
				Message: fmt.Sprintf("%s: %s would loosen %s: %s of %s for this client: a clients entry may not loosen what another file sets", k.kind, k.loose, k.kind, map[string]string{"default": "deny", "mode": "enforce"}[k.kind], strings.Join(others, ", "))})
		}
	}
}

// clientName checks that a clients: entry's name is unique across the
// policy's files.
func (l *loader) clientName(v *yaml.Node, s string) {
	at := location(l.file, l.node(v).Line)
	if first, dup := l.fs.clientNames[s]; dup {
		if f, line, _ := strings.Cut(first, ":"); f == l.file {
			first = "line " + line
		}
		l.errf(l.node(v), "client name %q is used twice (first at %s)", s, first)
		return
	}
	l.fs.clientNames[s] = at
}

// warnListens warns of the listeners in force that are not on loopback:
// a proxy listener when allow_from is empty, the admin listener always
// (allow_from does not apply to it, and it has no authentication).
func (fs *fileSet) warnListens(p *Policy) {
	final := map[string]string{"listen.http": p.Listen.HTTP, "listen.dns": p.Listen.DNS, "listen.transparent": p.Listen.Transparent, "listen.admin": p.Listen.Admin}
	for _, la := range fs.listens {
		if final[la.field] != la.node.Value {
			continue // overridden by a file read later
		}
		if la.field == "listen.admin" {
			fs.warns = append(fs.warns, Diagnostic{File: la.file, Line: la.node.Line, Column: la.node.Column, Warning: true,
				Message: la.node.Value + " is not a loopback address: the admin listener serves /policy (the policy file, its mode and reload errors) and /denials (who was refused where) without authentication to anyone who reaches it; keep it on 127.0.0.1, or let a firewall or NetworkPolicy decide who reaches it"})
			continue
		}
		if len(p.AllowFrom) > 0 {
			continue
		}
		fs.warns = append(fs.warns, Diagnostic{File: la.file, Line: la.node.Line, Column: la.node.Column, Warning: true,
			Message: la.node.Value + " is not a loopback address and allow_from is empty: anyone who reaches it can use egress; set allow_from"})
	}
}

// Files lists the files the policy was read from: its own file first, then
// every file it includes, in the order read. A reload watches them all.
func (p *Policy) Files() []string {
	if len(p.files) == 0 {
		return []string{p.Source}
	}
	return append([]string(nil), p.files...)
}
