package names

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

var (
	alice = netip.MustParseAddr("10.1.0.1")
	bob   = netip.MustParseAddr("10.1.0.2")
	web   = netip.MustParseAddr("93.184.216.34")
	web6  = netip.MustParseAddr("2606:2800:220:1:248:1893:25c8:1946")
)

func newTable() (*Table, *clock) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &Table{Now: c.now, MinTTL: -1}, c
}

func TestTable(t *testing.T) {
	t.Run("an answer is remembered for its client and address only", func(t *testing.T) {
		tb, _ := newTable()
		tb.Remember(alice, "api.example.com", web, time.Minute)
		if got := tb.Names(alice, web); !slices.Equal(got, []string{"api.example.com"}) {
			t.Fatalf("Names(alice, web) = %q", got)
		}
		if got := tb.Names(bob, web); got != nil {
			t.Fatalf("another client sees %q", got)
		}
		if got := tb.Names(alice, web6); got != nil {
			t.Fatalf("another address gives %q", got)
		}
	})
	t.Run("an answer is forgotten when its ttl runs out", func(t *testing.T) {
		tb, c := newTable()
		tb.Remember(alice, "api.example.com", web, 10*time.Second)
		c.advance(9 * time.Second)
		if got := tb.Names(alice, web); len(got) != 1 {
			t.Fatalf("before expiry: %q", got)
		}
		c.advance(time.Second)
		if got := tb.Names(alice, web); got != nil {
			t.Fatalf("after expiry: %q", got)
		}
		if tb.Len() != 0 {
			t.Fatalf("expired entry still held: Len = %d", tb.Len())
		}
	})
	t.Run("a short ttl is raised to the default floor", func(t *testing.T) {
		c := &clock{t: time.Unix(0, 0)}
		tb := &Table{Now: c.now}
		tb.Remember(alice, "api.example.com", web, 0)
		c.advance(DefaultMinTTL - time.Second)
		if got := tb.Names(alice, web); len(got) != 1 {
			t.Fatalf("ttl 0 forgotten within the floor: %q", got)
		}
		c.advance(time.Second)
		if got := tb.Names(alice, web); got != nil {
			t.Fatalf("kept past the floor: %q", got)
		}
	})
	t.Run("a later answer extends, never shortens, the memory", func(t *testing.T) {
		tb, c := newTable()
		tb.Remember(alice, "api.example.com", web, time.Hour)
		tb.Remember(alice, "api.example.com", web, time.Second)
		c.advance(time.Minute)
		if got := tb.Names(alice, web); len(got) != 1 {
			t.Fatalf("shortened: %q", got)
		}
	})
	t.Run("several names for one address are all returned in order", func(t *testing.T) {
		tb, c := newTable()
		tb.Remember(alice, "a.example.com", web, time.Minute)
		tb.Remember(alice, "b.example.com", web, 2*time.Minute)
		if got := tb.Names(alice, web); !slices.Equal(got, []string{"a.example.com", "b.example.com"}) {
			t.Fatalf("Names = %q", got)
		}
		c.advance(90 * time.Second)
		if got := tb.Names(alice, web); !slices.Equal(got, []string{"b.example.com"}) {
			t.Fatalf("after the first expired: %q", got)
		}
	})
	t.Run("names per address are bounded, the first to expire is replaced", func(t *testing.T) {
		tb, _ := newTable()
		for i := range MaxNamesPerAddr + 3 {
			tb.Remember(alice, fmt.Sprintf("n%d.example.com", i), web, time.Duration(i+1)*time.Minute)
		}
		got := tb.Names(alice, web)
		if len(got) != MaxNamesPerAddr {
			t.Fatalf("%d names kept, want %d", len(got), MaxNamesPerAddr)
		}
		last := fmt.Sprintf("n%d.example.com", MaxNamesPerAddr+2)
		if !slices.Contains(got, last) || slices.Contains(got, "n0.example.com") {
			t.Fatalf("kept %q", got)
		}
	})
	t.Run("an IPv4-mapped client or address is the same as its IPv4 form", func(t *testing.T) {
		tb, _ := newTable()
		mapped := netip.AddrFrom16(alice.As16())
		tb.Remember(mapped, "api.example.com", netip.AddrFrom16(web.As16()), time.Minute)
		if got := tb.Names(alice, web); len(got) != 1 {
			t.Fatalf("mapped forms not unified: %q", got)
		}
	})
	t.Run("memory is bounded by MaxEntries", func(t *testing.T) {
		tb, _ := newTable()
		tb.MaxEntries = 100
		for i := range 1000 {
			a := netip.AddrFrom4([4]byte{93, 184, byte(i >> 8), byte(i)})
			tb.Remember(alice, "api.example.com", a, time.Hour)
			if tb.Len() > 100 {
				t.Fatalf("Len = %d after %d inserts", tb.Len(), i+1)
			}
		}
		last := netip.AddrFrom4([4]byte{93, 184, 999 >> 8, 999 & 0xff})
		if got := tb.Names(alice, last); len(got) != 1 {
			t.Fatalf("the newest entry was evicted: %q", got)
		}
	})
	t.Run("expired entries are evicted before live ones", func(t *testing.T) {
		tb, c := newTable()
		tb.MaxEntries = 10
		keep := netip.MustParseAddr("93.184.0.200")
		tb.Remember(alice, "keep.example.com", keep, time.Hour)
		for i := range 9 {
			tb.Remember(alice, "old.example.com", netip.AddrFrom4([4]byte{93, 184, 1, byte(i)}), time.Second)
		}
		c.advance(2 * time.Second)
		tb.Remember(alice, "new.example.com", web, time.Hour)
		if got := tb.Names(alice, keep); len(got) != 1 {
			t.Fatalf("a live entry was evicted while expired ones were held: %q", got)
		}
		if tb.Len() != 2 {
			t.Fatalf("Len = %d, want 2 after the sweep", tb.Len())
		}
	})
	t.Run("a nil table remembers nothing and does not panic", func(t *testing.T) {
		var tb *Table
		tb.Remember(alice, "api.example.com", web, time.Minute)
		if got := tb.Names(alice, web); got != nil {
			t.Fatalf("nil table returned %q", got)
		}
	})
	t.Run("an empty name or invalid address is ignored", func(t *testing.T) {
		tb, _ := newTable()
		tb.Remember(alice, "", web, time.Minute)
		tb.Remember(alice, "api.example.com", netip.Addr{}, time.Minute)
		if tb.Len() != 0 {
			t.Fatalf("Len = %d", tb.Len())
		}
	})
}

func TestTableConcurrent(t *testing.T) {
	tb := &Table{MaxEntries: 500}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				a := netip.AddrFrom4([4]byte{93, byte(g), byte(i >> 8), byte(i)})
				tb.Remember(alice, "api.example.com", a, time.Minute)
				tb.Names(alice, a)
			}
		}()
	}
	wg.Wait()
	if tb.Len() > 500 {
		t.Fatalf("Len = %d, bound 500", tb.Len())
	}
}

func ExampleTable() {
	var t Table
	client := netip.MustParseAddr("10.1.0.7")
	addr := netip.MustParseAddr("93.184.216.34")
	t.Remember(client, "api.example.com", addr, 5*time.Minute)
	fmt.Println(t.Names(client, addr))
	// Output: [api.example.com]
}

func BenchmarkRemember(b *testing.B) {
	tb := &Table{}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		tb.Remember(alice, "api.example.com", netip.AddrFrom4([4]byte{93, 184, byte(i >> 8), byte(i)}), time.Minute)
	}
}
