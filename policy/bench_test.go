package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// bigPolicy is a policy of n rules: exact names, wildcards, middle
// wildcards, cidrs of several lengths, with and without ports.
func bigPolicy(n int) []byte {
	var b strings.Builder
	b.Grow(n * 48)
	b.WriteString("version: 1\ndefault: deny\nallow:\n")
	for i := 0; i < n; i++ {
		switch i % 5 {
		case 0:
			fmt.Fprintf(&b, "  - {host: api%d.svc%d.example.com, ports: [443]}\n", i, i%97)
		case 1:
			fmt.Fprintf(&b, "  - host: \"*.tenant%d.example.net\"\n", i)
		case 2:
			fmt.Fprintf(&b, "  - host: \"bucket%d.*.example.org\"\n", i)
		case 3:
			fmt.Fprintf(&b, "  - {cidr: %d.%d.%d.0/24, ports: [5432, \"8000-8100\"]}\n", 11+i%100, (i/100)%256, (i/25600)%256)
		case 4:
			fmt.Fprintf(&b, "  - cidr: \"2001:%x:%x::/48\"\n", 0x100+i%0xe00, i/0xe00)
		}
	}
	return []byte(b.String())
}

func BenchmarkLoad100k(b *testing.B) {
	data := bigPolicy(100_000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load("big.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// Baseline for the decision benchmarks: a map lookup of the same name.
func BenchmarkBaselineMapLookup(b *testing.B) {
	m := map[string]bool{}
	for i := 0; i < 100_000; i++ {
		m[fmt.Sprintf("api%d.svc%d.example.com", i, i%97)] = true
	}
	name := "api500.svc15.example.com"
	b.ReportAllocs()
	for b.Loop() {
		if !m[name] {
			b.Fatal("missing")
		}
	}
}

func benchDecide(b *testing.B, req Request, want Verdict) {
	p, err := Load("big.yaml", bigPolicy(100_000))
	if err != nil {
		b.Fatal(err)
	}
	if d := p.Decide(req); d.Verdict != want {
		b.Fatalf("%+v: %s %s", req, d.Verdict, d.Reason)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		p.Decide(req)
	}
}

func BenchmarkDecide100k(b *testing.B) {
	pub := netip.MustParseAddr("203.0.114.9")
	b.Run("exact name, step 1", func(b *testing.B) {
		benchDecide(b, Request{Host: "api500.svc15.example.com", Port: 443}, Allow)
	})
	b.Run("exact name and address, step 2", func(b *testing.B) {
		benchDecide(b, Request{Host: "api500.svc15.example.com", IP: pub, Port: 443}, Allow)
	})
	b.Run("wildcard name", func(b *testing.B) {
		benchDecide(b, Request{Host: "a.b.tenant501.example.net", IP: pub, Port: 443}, Allow)
	})
	b.Run("middle wildcard name", func(b *testing.B) {
		benchDecide(b, Request{Host: "bucket502.eu-west-1.example.org", IP: pub, Port: 443}, Allow)
	})
	b.Run("IPv4 cidr", func(b *testing.B) {
		benchDecide(b, Request{IP: netip.MustParseAddr("14.5.0.7"), Port: 5432}, Allow)
	})
	b.Run("IPv6 cidr", func(b *testing.B) {
		benchDecide(b, Request{IP: netip.MustParseAddr("2001:104:0::1"), Port: 5432}, Allow)
	})
	b.Run("guarded address", func(b *testing.B) {
		benchDecide(b, Request{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, Deny)
	})
	b.Run("unknown name, denied with a hint", func(b *testing.B) {
		benchDecide(b, Request{Host: "unknown.example.com", IP: pub, Port: 443}, Deny)
	})
	b.Run("name to normalise", func(b *testing.B) {
		benchDecide(b, Request{Host: "API500.svc15.example.com.", IP: pub, Port: 443}, Allow)
	})
}

func BenchmarkNormalizeHost(b *testing.B) {
	for _, s := range []string{"api.example.com", "API.Example.com.", "bücher.example", "0x7f.1", "[::ffff:127.0.0.1]"} {
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = NormalizeHost(s)
			}
		})
	}
}

// Baseline for BenchmarkLoad100k: yaml.v3 parsing the same file into
// nodes, which Load does before validating and compiling.
func BenchmarkBaselineYAMLParse100k(b *testing.B) {
	data := bigPolicy(100_000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var n yaml.Node
		if err := yaml.Unmarshal(data, &n); err != nil {
			b.Fatal(err)
		}
	}
}
