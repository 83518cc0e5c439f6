package policy

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"
)

// The binary search over merged port ranges answers as the obvious linear
// scan over the cidr allow rules does, for policies loaded from text with
// random, overlapping and adjacent ranges, and ports at every edge.
func TestCidrAllowCouldMatchAgreesWithLinearScan(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	edges := []uint16{1, 2, 65534, 65535}
	port := func() uint16 {
		switch rng.Intn(3) {
		case 0:
			return edges[rng.Intn(len(edges))]
		case 1:
			return uint16(1 + rng.Intn(40)) // small: dense overlaps
		}
		return uint16(1 + rng.Intn(65535))
	}
	for iter := 0; iter < 400; iter++ {
		allows := []string{"  - host: a.example.com\n"}
		var denies []string
		for n := rng.Intn(8); n > 0; n-- {
			line := fmt.Sprintf("  - {cidr: 10.%d.0.0/16", rng.Intn(256))
			if rng.Intn(6) > 0 {
				var ps []string
				for k := 1 + rng.Intn(4); k > 0; k-- {
					lo, hi := port(), port()
					if lo > hi {
						lo, hi = hi, lo
					}
					if lo == hi || rng.Intn(2) == 0 {
						ps = append(ps, fmt.Sprint(lo))
					} else {
						ps = append(ps, fmt.Sprintf("\"%d-%d\"", lo, hi))
					}
				}
				line += ", ports: [" + strings.Join(ps, ", ") + "]"
			}
			line += "}\n"
			if rng.Intn(3) == 0 {
				denies = append(denies, line) // cidr deny rules must not count
			} else {
				allows = append(allows, line)
			}
		}
		b := "version: 1\ndefault: deny\nallow:\n" + strings.Join(allows, "")
		if len(denies) > 0 {
			b += "deny:\n" + strings.Join(denies, "")
		}
		text := b
		p, err := Load("p.yaml", []byte(text))
		if err != nil {
			t.Fatalf("%v\n%s", err, text)
		}
		probe := []uint16{0, 1, 2, 65534, 65535}
		for _, r := range p.top.rules {
			for _, pr := range r.Ports {
				probe = append(probe, pr.Lo-1, pr.Lo, pr.Hi, pr.Hi+1)
			}
		}
		for k := 0; k < 20; k++ {
			probe = append(probe, port())
		}
		for _, pt := range probe {
			want := false
			for _, r := range p.top.rules {
				if r.Host == "" && r.Action == Allow && r.matchesPort(pt) {
					want = true
				}
			}
			if got := p.top.cidrAllowCouldMatch(pt); got != want {
				t.Fatalf("cidrAllowCouldMatch(%d) = %v, linear scan %v; merged %v\n%s", pt, got, want, p.top.cidrAllowPorts, text)
			}
		}
	}
}
