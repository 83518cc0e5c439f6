package policy

import (
	"fmt"
	"strings"
)

// Closest returns the one of known that name most likely misspells ("serve"
// for "serv", "lint" for "lnit"), by the rules that suggest the keys of a
// policy file: the same letters, a prefix, or one or two edits away. It
// returns "" when none is close.
func Closest(name string, known []string) string {
	fields := make([]field, len(known))
	for i, k := range known {
		fields[i] = field{name: k}
	}
	best, _ := suggest(name, fields)
	return best
}

// suggest proposes a known field for a misspelt one: the same letters
// (case, '-' for '_'), a prefix ("port" for "ports"), or a name one or two
// edits away ("defualt" for "default"). It returns the field meant ("" if
// none) and the text to add to the error.
func suggest(name string, fields []field) (string, string) {
	squash := func(s string) string { return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s)) }
	for _, f := range fields {
		if squash(f.name) == squash(name) {
			return f.name, fmt.Sprintf(" (did you mean %q?)", f.name)
		}
	}
	best, bestDist := "", 3
	var names []string
	for _, f := range fields {
		names = append(names, f.name)
		if len(name) < 3 {
			continue
		}
		if strings.HasPrefix(f.name, name) || strings.HasPrefix(name, f.name) {
			return f.name, fmt.Sprintf(" (did you mean %q?)", f.name)
		}
		// One edit for short names, two from six letters on: "lsiten"
		// is listen, "host" is not port.
		limit := 1
		if len(f.name) >= 6 {
			limit = 2
		}
		if d := editDistance(squash(name), squash(f.name)); d <= limit && d < bestDist {
			best, bestDist = f.name, d
		}
	}
	if best != "" {
		return best, fmt.Sprintf(" (did you mean %q?)", best)
	}
	return "", " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the optimal string alignment distance of a and b:
// substitutions, insertions, deletions and transpositions of neighbours
// each count one.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
