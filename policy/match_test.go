package policy

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The prefix table agrees with a linear scan for every prefix length.
func TestPrefixTableAgreesWithLinearScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			for i := range b {
				b[i] = byte(rng.IntN(4)) // few distinct values, so prefixes overlap
			}
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom4([4]byte{byte(rng.IntN(4)), byte(rng.IntN(4)), byte(rng.IntN(4)), byte(rng.IntN(4))})
	}
	var rules []*Rule
	var table prefixTable
	for i := 0; i < 400; i++ {
		v6 := i%2 == 1
		a := randAddr(v6)
		p, _ := a.Prefix(rng.IntN(a.BitLen() + 1))
		r := &Rule{Action: Verdict(rng.IntN(2)), Prefix: p}
		if rng.IntN(3) == 0 {
			r.Ports = []PortRange{{80, 90}}
		}
		rules = append(rules, r)
		table.add(crule{r, rank(r)})
	}
	for i := 0; i < 2000; i++ {
		a := randAddr(i%2 == 1)
		port := uint16(rng.IntN(3) * 42) // 0, 42, 84
		var want crule
		for _, r := range rules {
			if r.Prefix.Contains(a) && r.matchesPort(port) && (want.r == nil || rank(r) > want.rank) {
				want = crule{r, rank(r)}
			}
		}
		if got := table.match(a, port); got.r != want.r && (got.r == nil || want.r == nil || got.rank != want.rank) {
			t.Fatalf("match(%v, %d) = %+v; want %+v", a, port, got.r, want.r)
		}
	}
}

// patternMatches is the definition of a host pattern, written plainly.
func patternMatches(pattern, name string) bool {
	pl, nl := splitLabels(pattern), splitLabels(name)
	if pattern == "*" {
		return true
	}
	if pl[0] == "*" {
		// One or more labels, then the rest of the pattern.
		rest := pl[1:]
		if len(nl) <= len(rest) {
			return false
		}
		return labelsMatch(rest, nl[len(nl)-len(rest):])
	}
	return len(pl) == len(nl) && labelsMatch(pl, nl)
}

func labelsMatch(p, n []string) bool {
	for i := range p {
		if p[i] != "*" && p[i] != n[i] {
			return false
		}
	}
	return true
}

func splitLabels(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// The label trie agrees with the definition of patterns.
func TestNameTrieAgreesWithDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	labels := []string{"a", "b", "com"}
	randName := func() string {
		n := 1 + rng.IntN(4)
		s := labels[rng.IntN(len(labels))]
		for i := 1; i < n; i++ {
			s = labels[rng.IntN(len(labels))] + "." + s
		}
		return s
	}
	var rules []*Rule
	var root nameNode
	for i := 0; i < 300; i++ {
		n := splitLabels(randName())
		for j := range n {
			if j < len(n)-1 && rng.IntN(4) == 0 {
				n[j] = "*"
			}
		}
		pat := n[0]
		for _, l := range n[1:] {
			pat += "." + l
		}
		if rng.IntN(40) == 0 {
			pat = "*"
		}
		r := &Rule{Action: Verdict(rng.IntN(2)), Host: pat}
		if rng.IntN(3) == 0 {
			r.Ports = []PortRange{{80, 90}}
		}
		rules = append(rules, r)
		root.add(crule{r, rank(r)})
	}
	for i := 0; i < 3000; i++ {
		name := randName()
		port := uint16(rng.IntN(3) * 42)
		var want crule
		for _, r := range rules {
			if patternMatches(r.Host, name) && r.matchesPort(port) && (want.r == nil || rank(r) > want.rank) {
				want = crule{r, rank(r)}
			}
		}
		got := root.match(name, port, crule{})
		if (got.r == nil) != (want.r == nil) || got.r != nil && got.rank != want.rank {
			t.Fatalf("match(%q, %d) = %+v; want %+v", name, port, got.r, want.r)
		}
	}
}
