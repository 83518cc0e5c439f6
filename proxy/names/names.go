// Package names remembers, per client, which names egress's DNS proxy
// returned each address for, until the answer's TTL runs out. The
// transparent TCP path, which sees only the destination address of a
// connection, asks it which names that address stands for, so that it can
// decide on the name the client meant.
//
// It remembers only what the DNS proxy tells it and decides nothing. Memory
// is bounded: when the table is full, expired entries go first, then
// arbitrary ones (a forgotten name makes the transparent path decide on the
// bare address, which is the safe direction).
package names

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Lookup is what the transparent TCP path needs: the names that the DNS
// proxy returned addr for, to client, and that have not expired. The result
// is nil when none did; the caller may keep and modify it.
type Lookup interface {
	Names(client, addr netip.Addr) []string
}

// Recorder is what the DNS proxy needs: to be told, before the answer
// goes out, each address it returns to a client for a name, and for how
// long the answer is valid.
type Recorder interface {
	Remember(client netip.Addr, name string, addr netip.Addr, ttl time.Duration)
}

var (
	_ Lookup   = (*Table)(nil)
	_ Recorder = (*Table)(nil)
)

// Defaults used when the Table's fields are zero.
const (
	// DefaultMaxEntries bounds the (client, address) pairs remembered:
	// about 150 bytes each, so the default costs ~15 MB at most.
	DefaultMaxEntries = 100_000
	// DefaultMinTTL is how long an answer is remembered at least. Clients
	// use answers a little past their TTL (stub caches round up, a
	// connect follows a lookup with TTL 0), and forgetting early would
	// turn the client's name into a bare address.
	DefaultMinTTL = 30 * time.Second
	// MaxNamesPerAddr bounds the names remembered for one (client,
	// address) pair; the oldest-expiring one is replaced.
	MaxNamesPerAddr = 8
)

// Table is the memory of DNS answers. The zero value is ready to use; a nil
// *Table remembers nothing. Safe for concurrent use.
type Table struct {
	// MaxEntries bounds the (client, address) pairs; 0 means
	// DefaultMaxEntries.
	MaxEntries int
	// MinTTL is the shortest time an answer is remembered; 0 means
	// DefaultMinTTL, a negative value means no floor.
	MinTTL time.Duration
	// Grace is added to every answer's time: clients use answers past
	// their TTL (stub caches, rotating CDN answers), and forgetting then
	// would refuse them. Zero adds nothing.
	Grace time.Duration
	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time

	mu        sync.Mutex
	m         map[key][]entry
	lastSweep time.Time
}

type key struct{ client, addr netip.Addr }

type entry struct {
	name    string
	expires time.Time
}

func (t *Table) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *Table) maxEntries() int {
	if t.MaxEntries > 0 {
		return t.MaxEntries
	}
	return DefaultMaxEntries
}

// canon strips what makes two spellings of one address differ: an
// IPv4-mapped IPv6 client is the same client as its IPv4 form, and zones
// are not part of an answer.
func canon(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// Remember records that the DNS proxy answered name with addr to client,
// valid for ttl (raised to MinTTL). name is stored as given; callers pass
// the normal form (lower case, no trailing dot).
func (t *Table) Remember(client netip.Addr, name string, addr netip.Addr, ttl time.Duration) {
	if t == nil || name == "" || !addr.IsValid() {
		return
	}
	ttl = t.Lease(ttl)
	k := key{canon(client), canon(addr)}
	now := t.now()
	exp := now.Add(ttl)

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[key][]entry)
	}
	es, ok := t.m[k]
	for i := range es {
		if es[i].name == name {
			if exp.After(es[i].expires) {
				es[i].expires = exp
			}
			return
		}
	}
	if !ok && len(t.m) >= t.maxEntries() {
		t.makeRoom(now)
	}
	if len(es) >= MaxNamesPerAddr {
		// Replace the entry that expires first (an expired one if any).
		i := 0
		for j := range es {
			if es[j].expires.Before(es[i].expires) {
				i = j
			}
		}
		es[i] = entry{name, exp}
	} else {
		es = append(es, entry{name, exp})
	}
	t.m[k] = es
}

// Lease is how long an answer valid for ttl is remembered: ttl raised to
// MinTTL, plus Grace.
func (t *Table) Lease(ttl time.Duration) time.Duration {
	switch {
	case t.MinTTL == 0 && ttl < DefaultMinTTL:
		ttl = DefaultMinTTL
	case t.MinTTL > 0 && ttl < t.MinTTL:
		ttl = t.MinTTL
	}
	return ttl + t.Grace
}

// makeRoom frees at least one slot: it drops expired entries (at most once
// a second, a sweep is O(n)), then arbitrary ones (map order is random in
// Go) down to 7/8 of the bound so that the next inserts do not each pay
// for an eviction.
func (t *Table) makeRoom(now time.Time) {
	if now.Sub(t.lastSweep) >= time.Second {
		t.lastSweep = now
		for k, es := range t.m {
			es = slices.DeleteFunc(es, func(e entry) bool { return !now.Before(e.expires) })
			if len(es) == 0 {
				delete(t.m, k)
			} else {
				t.m[k] = es
			}
		}
	}
	max := t.maxEntries()
	if len(t.m) < max {
		return
	}
	target := max - max/8
	if target >= max {
		target = max - 1
	}
	for k := range t.m {
		if len(t.m) <= target {
			break
		}
		delete(t.m, k)
	}
}

// Names returns the names that the DNS proxy answered addr with, to client,
// that have not expired, in the order they were first remembered.
func (t *Table) Names(client, addr netip.Addr) []string {
	if t == nil {
		return nil
	}
	k := key{canon(client), canon(addr)}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	es := t.m[k]
	var out []string
	live := es[:0]
	for _, e := range es {
		if now.Before(e.expires) {
			out = append(out, e.name)
			live = append(live, e)
		}
	}
	switch {
	case len(live) == 0 && es != nil:
		delete(t.m, k)
	case len(live) < len(es):
		clear(es[len(live):])
		t.m[k] = live
	}
	return out
}

// Len is the number of (client, address) pairs held, expired ones
// included until they are swept.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
