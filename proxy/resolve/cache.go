package resolve

import (
	"container/list"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// cacheKey identifies an upstream answer. DO and CD change what the
// upstream returns (RRSIGs, unvalidated data), so they are part of it.
type cacheKey struct {
	name   string // lower case, fully qualified
	qtype  uint16
	qclass uint16
	do, cd bool
}

func keyOf(q dns.Question, do, cd bool) cacheKey {
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, qclass: q.Qclass, do: do, cd: cd}
}

// cacheEntry is an upstream answer with its TTLs already clamped; the OPT
// record is not kept.
type cacheEntry struct {
	key     cacheKey
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
	memo    Memo
}

// Memo is a slot kept with a cached answer for what a caller derives
// from it (the DNS listener keeps the answer it last filtered for a
// client), dropped with the answer. Safe for concurrent use.
type Memo struct{ atomic.Value }

// cache is a bounded LRU of upstream answers. The zero value holds
// nothing until setMax gives it room.
type cache struct {
	maxSet atomic.Int64 // max, read without the lock on every query

	mu  sync.Mutex
	max int
	m   map[cacheKey]*list.Element
	lru list.List // front: most recently used *cacheEntry
}

// setMax changes the bound (a reloaded policy may change cache_size),
// evicting the least recently used entries if needed.
func (c *cache) setMax(n int) {
	if c.maxSet.Load() == int64(n) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n == c.max {
		return
	}
	c.max = n
	c.maxSet.Store(int64(n))
	c.trim()
}

func (c *cache) trim() {
	for c.lru.Len() > c.max && c.lru.Len() > 0 {
		e := c.lru.Back()
		c.lru.Remove(e)
		delete(c.m, e.Value.(*cacheEntry).key)
	}
}

// get returns the answer for k, its age in seconds and its memo, or nil.
// The answer is shared and must not be modified: the caller lowers the
// TTLs of the records it copies (see Aged).
func (c *cache) get(k cacheKey, now time.Time) (*dns.Msg, uint32, *Memo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return nil, 0, nil
	}
	ce := el.Value.(*cacheEntry)
	if !now.Before(ce.expires) {
		c.lru.Remove(el)
		delete(c.m, k)
		return nil, 0, nil
	}
	c.lru.MoveToFront(el)
	return ce.msg, uint32(now.Sub(ce.stored) / time.Second), &ce.memo
}

// Aged returns rr with its TTL lowered by age seconds: rr itself when age
// is 0, else a copy (rr may be shared with the cache).
func Aged(rr dns.RR, age uint32) dns.RR {
	if age == 0 {
		return rr
	}
	rr = dns.Copy(rr)
	h := rr.Header()
	if h.Ttl > age {
		h.Ttl -= age
	} else {
		h.Ttl = 0
	}
	return rr
}

// put stores m (which it keeps: the caller must not change it afterwards)
// for k if it is cacheable, clamping its TTLs to [minTTL, maxTTL]. It
// reports whether it stored it.
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time, minTTL, maxTTL time.Duration) bool {
	ttl, ok := cacheTTL(m)
	if !ok {
		return false
	}
	lo, hi := seconds(minTTL), seconds(maxTTL)
	if maxTTL <= 0 {
		hi = ^uint32(0)
	}
	clamp := func(t uint32) uint32 { return min(max(t, lo), hi) }
	ttl = clamp(ttl)
	if ttl == 0 {
		return false
	}
	for _, s := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range s {
			h := rr.Header()
			h.Ttl = clamp(h.Ttl)
		}
	}
	ce := &cacheEntry{key: k, msg: m, stored: now, expires: now.Add(time.Duration(ttl) * time.Second)}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max <= 0 {
		return false
	}
	if c.m == nil {
		c.m = make(map[cacheKey]*list.Element)
	}
	if el, ok := c.m[k]; ok {
		el.Value = ce
		c.lru.MoveToFront(el)
		return true
	}
	c.m[k] = c.lru.PushFront(ce)
	c.trim()
	return true
}

// clear drops every entry.
func (c *cache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = nil
	c.lru.Init()
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func seconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	if s := d / time.Second; s < 1<<32 {
		return uint32(s)
	}
	return ^uint32(0)
}

// cacheTTL is how long an upstream answer may be cached, before clamping:
// the smallest TTL of the answer section for a positive answer; for
// NXDOMAIN and NODATA the SOA's minimum, or its own TTL if smaller (RFC
// 2308 §5). A negative answer without SOA, a truncated answer and any
// other rcode are not cached.
func cacheTTL(m *dns.Msg) (uint32, bool) {
	if m.Truncated {
		return 0, false
	}
	if m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
		ttl := ^uint32(0)
		for _, rr := range m.Answer {
			ttl = min(ttl, rr.Header().Ttl)
		}
		return ttl, true
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return 0, false
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl), true
		}
	}
	return 0, false
}
