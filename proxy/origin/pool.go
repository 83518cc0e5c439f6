package origin

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Limits of the origin connection pools (those net/http.Transport had in
// egress before).
const (
	// MaxIdlePerKey and MaxIdlePerPool bound the connections kept open
	// for reuse, per key (one origin) and per pool (one policy and
	// clients: entry).
	MaxIdlePerKey  = 100
	MaxIdlePerPool = 1000
)

// PoolIdleTimeout closes a pooled connection nobody reused (a variable
// for tests).
var PoolIdleTimeout = 90 * time.Second

// FreshIdle is how long a connection back in the pool is taken without
// the look of peerClosed by a request that can be sent again: an origin
// that closes a connection it just answered on says so (Connection:
// close), and a request that meets a close anyway is retried. Under load
// connections come back sooner than this, and the look is one system call
// per request (a variable for tests).
var FreshIdle = time.Millisecond

// PoolConn is one pooled origin connection: dialled through the checking
// dialer for one pool, used by one exchange at a time, then put back for
// the next request with the same key.
type PoolConn[K comparable] struct {
	OC  *Conn      // exchanges: OC.Conn is raw, or TLS over raw
	Raw net.Conn   // the dialled socket
	IP  netip.Addr // the address dialled (and decided on)
	Key K
	// Reused: it served a request before this one (a failure before a
	// byte came may be the origin's idle close: see Conn.Got).
	Reused bool
	// MustLook: the last response was one that has no body by its method
	// or status (HEAD, 204, 304), after which broken origins send one
	// anyway: the connection is looked at before reuse, however fresh.
	MustLook bool

	pool      *Pool[K]
	idleSince time.Time   // under pool.mu
	timer     *time.Timer // closes it after PoolIdleTimeout idle
}

// NewPoolConn makes oc, dialled on raw to ip, a connection of p under key.
func NewPoolConn[K comparable](p *Pool[K], key K, oc *Conn, raw net.Conn, ip netip.Addr) *PoolConn[K] {
	return &PoolConn[K]{OC: oc, Raw: raw, IP: ip, Key: key, pool: p}
}

// Put gives pc back to its pool for reuse (or closes it).
func (pc *PoolConn[K]) Put() { pc.pool.put(pc) }

// Close closes pc's connection.
func (pc *PoolConn[K]) Close() error { return pc.OC.Close() }

// heldByTLS reports whether the TLS layer of pc holds what the origin
// sent after its last answer (a record that came in the same read as the
// answer's), or its close: peerClosed, which looks at the socket, cannot
// see it. The read cannot block: its deadline has passed, and only
// records already read are decrypted (a timeout is not sticky in
// crypto/tls).
func (pc *PoolConn[K]) heldByTLS() bool {
	if pc.OC.Conn == pc.Raw {
		return false
	}
	pc.OC.SetReadDeadline(time.Unix(1, 0))
	_, err := pc.OC.BR.Peek(1)
	pc.OC.SetReadDeadline(time.Time{})
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// Pool is the set of idle origin connections of one policy and one
// clients: entry (see Pools), by key: a key names everything a connection
// was dialled and verified for, so that a connection is only reused for a
// request that would have dialled the same one.
type Pool[K comparable] struct {
	mu     sync.Mutex
	idle   map[K][]*PoolConn[K] // most recent last
	n      int
	closed bool
}

// NewPool returns an empty pool.
func NewPool[K comparable]() *Pool[K] { return &Pool[K]{idle: map[K][]*PoolConn[K]{}} }

// Get returns an idle connection for key, or nil. A connection whose
// origin has closed it, or sent something unasked (which must never be
// read as the answer to the next request), is closed and skipped; with
// retryable, one idle for less than FreshIdle is taken without a look.
func (p *Pool[K]) Get(key K, retryable bool) *PoolConn[K] {
	for {
		p.mu.Lock()
		list := p.idle[key]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[key] = list[:len(list)-1]
		p.n--
		fresh := retryable && !pc.MustLook && time.Since(pc.idleSince) < FreshIdle
		p.mu.Unlock()
		pc.timer.Stop()
		if !fresh && (peerClosed(pc.Raw) || pc.heldByTLS()) {
			pc.OC.Close()
			continue
		}
		pc.Reused = true
		return pc
	}
}

// Has reports whether p holds an idle connection for key, without
// taking it or looking at it: one that Get would take, unless the origin
// closed it meanwhile or another request takes it first.
func (p *Pool[K]) Has(key K) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[key]) > 0
}

// put keeps pc for reuse, or closes it if the pool is closed or full.
func (p *Pool[K]) put(pc *PoolConn[K]) {
	p.mu.Lock()
	if p.closed || p.n >= MaxIdlePerPool || len(p.idle[pc.Key]) >= MaxIdlePerKey {
		p.mu.Unlock()
		pc.OC.Close()
		return
	}
	pc.idleSince = time.Now()
	if pc.timer == nil {
		pc.timer = time.AfterFunc(PoolIdleTimeout, func() { p.expire(pc) })
	} else {
		pc.timer.Reset(PoolIdleTimeout)
	}
	p.idle[pc.Key] = append(p.idle[pc.Key], pc)
	p.n++
	p.mu.Unlock()
}

// expire closes pc if it is still idle and has been for the idle
// timeout (a timer that fired just before a get and a put may find it
// in use, or idle again since).
func (p *Pool[K]) expire(pc *PoolConn[K]) {
	p.mu.Lock()
	list := p.idle[pc.Key]
	i := -1
	for j, c := range list {
		if c == pc {
			i = j
			break
		}
	}
	if i < 0 || time.Since(pc.idleSince) < PoolIdleTimeout*9/10 {
		p.mu.Unlock()
		return
	}
	p.idle[pc.Key] = append(list[:i], list[i+1:]...)
	if len(p.idle[pc.Key]) == 0 {
		delete(p.idle, pc.Key)
	}
	p.n--
	p.mu.Unlock()
	pc.OC.Close()
}

// Idle is the number of idle connections in p.
func (p *Pool[K]) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// Close closes every idle connection; connections in use are closed when
// their request ends instead of being put back.
func (p *Pool[K]) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle, p.n = map[K][]*PoolConn[K]{}, 0
	p.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.timer.Stop()
			pc.OC.Close()
		}
	}
}

// Pools are the pools of one generation of the policy, one per clients:
// entry: a connection dialled for one client is never reused for a client
// whose policy might refuse its address, and a new generation (a reload)
// starts new pools and closes the old ones' idle connections. The zero
// value is ready to use.
type Pools[K comparable] struct {
	mu       sync.Mutex
	gen      any
	pools    map[string]*Pool[K]
	shutdown bool
}

// For returns the pool of client for requests decided under generation
// gen (the *policy.Policy they were decided with), current being the
// generation in force now. A request decided before a reload, still in
// flight, gets a closed pool: its connection is not kept.
func (ps *Pools[K]) For(gen, current any, client string) *Pool[K] {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.shutdown || gen != current {
		pl := NewPool[K]()
		pl.closed = true
		return pl
	}
	if gen != ps.gen {
		for _, pl := range ps.pools {
			pl.Close()
		}
		ps.pools = map[string]*Pool[K]{}
		ps.gen = gen
	}
	pl := ps.pools[client]
	if pl == nil {
		pl = NewPool[K]()
		ps.pools[client] = pl
	}
	return pl
}

// CloseIdle closes the idle connections of every pool; the next request
// starts new pools.
func (ps *Pools[K]) CloseIdle() {
	ps.mu.Lock()
	pools := ps.pools
	ps.pools, ps.gen = nil, nil
	ps.mu.Unlock()
	for _, pl := range pools {
		pl.Close()
	}
}

// Idle is the number of idle connections in every pool.
func (ps *Pools[K]) Idle() int {
	ps.mu.Lock()
	pools := make([]*Pool[K], 0, len(ps.pools))
	for _, pl := range ps.pools {
		pools = append(pools, pl)
	}
	ps.mu.Unlock()
	n := 0
	for _, pl := range pools {
		n += pl.Idle()
	}
	return n
}

// Shutdown closes the idle connections, and every connection put back
// from now on.
func (ps *Pools[K]) Shutdown() {
	ps.mu.Lock()
	ps.shutdown = true
	ps.mu.Unlock()
	ps.CloseIdle()
}
