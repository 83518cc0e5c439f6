package policy

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
