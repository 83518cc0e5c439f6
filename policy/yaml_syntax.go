package policy

import (
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 parse error into a diagnostic. A tab where
// YAML wants indentation is the usual cause of yaml.v3's "found character
// that cannot start any token" (and of its tab errors, whose line can be
// one off): those say so, at the tab.
func (l *loader) syntaxError(err error, data []byte) {
	msg := err.Error()
	line := 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if strings.Contains(msg, "tab") || strings.Contains(msg, "cannot start any token") {
		if tl, tc, indent := findTab(data, line); tl > 0 {
			where := "a tab in the indentation"
			if !indent {
				where = "a tab where YAML does not take one"
			}
			l.errs = append(l.errs, Diagnostic{File: l.file, Line: tl, Column: tc,
				Message: where + ": YAML indents with spaces only; replace the tab with spaces"})
			return
		}
	}
	l.errs = append(l.errs, Diagnostic{File: l.file, Line: line, Column: 1, Message: "yaml: " + msg})
}

// findTab finds the tab behind a yaml.v3 error reported at line: a tab in
// the leading white space of that line or the next (yaml.v3 reports some
// on the line before), else anywhere in that line. It returns the tab's
// line and column (1-based; 0, 0 if none) and whether it indents.
func findTab(data []byte, line int) (int, int, bool) {
	lines := strings.Split(string(data), "\n")
	indentTab := func(n int) int {
		if n < 1 || n > len(lines) {
			return 0
		}
		s := lines[n-1]
		for i := 0; i < len(s) && (s[i] == ' ' || s[i] == '\t'); i++ {
			if s[i] == '\t' {
				return i + 1
			}
		}
		return 0
	}
	for _, n := range []int{line, line + 1} {
		if c := indentTab(n); c > 0 {
			return n, c, true
		}
	}
	if line >= 1 && line <= len(lines) {
		if i := strings.IndexByte(lines[line-1], '\t'); i >= 0 {
			return line, utf8.RuneCountInString(lines[line-1][:i]) + 1, false
		}
	}
	return 0, 0, false
}
