package resolve

import (
	"cmp"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Upstream UDP sockets are kept per upstream and shared by the queries in
// flight: a query is written on one of the upstream's sockets and its
// answer read by that socket's reader goroutine, which matches it to the
// query and finishes the query there (the DNS listener's answer is sent
// from that goroutine: no hand-off between goroutines per query). Dialling
// a socket per query, or waiting on one socket per query, cost most of the
// uncached throughput and a goroutine wake-up per answer.
//
// Spoofing resistance (RFC 5452): an off-path attacker must guess the
// source port and the query id, and answer the question asked.
//   - Each upstream has socketsPerUpstream connected sockets, each on a
//     port the kernel picks at random (Linux randomises ephemeral ports);
//     a connected socket only receives packets from the upstream's
//     address and port.
//   - Sockets are retired after maxSocketQueries queries or maxSocketAge,
//     whichever comes first, so that the source ports keep changing, and
//     closed once their queries are done; idle ones are closed after
//     socketIdle. A timer (sweepEvery) does both, and closes the sockets
//     of upstreams a reload removed.
//   - Query ids are random (math/rand/v2: ChaCha8, seeded by the OS, not
//     predictable) and unique among the queries in flight on a socket.
//   - An answer is taken only when its id is in flight on that socket and
//     its question is the one asked (type, class, name); anything else is
//     dropped and the query keeps waiting for the real answer, so a forged
//     packet can neither answer a query nor make it fail.
const (
	socketsPerUpstream = 4
	maxSocketQueries   = 1000
	maxSocketAge       = 2 * time.Second
	socketIdle         = 5 * time.Second
	sweepEvery         = time.Second
	// expireEvery is how often queries in flight are checked against
	// their deadlines: one timer for all of them, not one per query (a
	// timer per query woke another thread on every query, costing a
	// system call and latency). An attempt may run this much over its
	// share of dns.timeout.
	expireEvery = 20 * time.Millisecond
	// answerBufSize is the largest UDP answer read: egress advertises
	// UDPBufSize, but an upstream may send more.
	answerBufSize = dns.MaxMsgSize
)

// socketPool holds the upstream sockets of a Resolver by upstream
// (host:port).
type socketPool struct {
	r         *Resolver
	mu        sync.Mutex
	sets      map[string]*[socketsPerUpstream]*upSocket
	live      map[*upSocket]struct{} // not closed yet, retired ones included
	sweep     *time.Timer            // armed every expireEvery while live
	lastSweep time.Time              // of the sockets, every sweepEvery
	// every, idle and age replace sweepEvery, socketIdle and
	// maxSocketAge when set (tests).
	every, idle, age time.Duration
}

func (p *socketPool) interval() time.Duration { return cmp.Or(p.every, sweepEvery) }

// upSocket is one connected UDP socket to an upstream.
type upSocket struct {
	upstream string
	conn     *net.UDPConn
	opened   time.Time

	mu      sync.Mutex
	pending map[uint16]*exchange
	uses    int
	last    time.Time // of the last query written
	retired bool      // takes no new queries; closed once pending is empty
	closed  bool
}

// errSocketClosed fails the queries of a socket that was closed under
// them (Resolver.Close with queries in flight never does: it waits).
var errSocketClosed = errors.New("upstream socket closed")

// socket returns a socket to upstream, opening one if needed.
func (p *socketPool) socket(r *Resolver, upstream string) (*upSocket, error) {
	k := rand.IntN(socketsPerUpstream)
	p.mu.Lock()
	p.r = r
	set := p.sets[upstream]
	if set != nil {
		if s := set[k]; s != nil && !s.isRetired() {
			p.mu.Unlock()
			return s, nil
		}
	}
	p.mu.Unlock()

	nc, err := net.Dial("udp", upstream)
	if err != nil {
		return nil, err
	}
	s := &upSocket{upstream: upstream, conn: nc.(*net.UDPConn), opened: time.Now(), pending: map[uint16]*exchange{}}
	p.mu.Lock()
	if p.sets == nil {
		p.sets = map[string]*[socketsPerUpstream]*upSocket{}
	}
	set = p.sets[upstream]
	if set == nil {
		set = new([socketsPerUpstream]*upSocket)
		p.sets[upstream] = set
	}
	if old := set[k]; old != nil && !old.isRetired() {
		// Another query opened one meanwhile: use it.
		p.mu.Unlock()
		nc.Close()
		return old, nil
	} else if old != nil {
		old.retire()
	}
	set[k] = s
	if p.live == nil {
		p.live = map[*upSocket]struct{}{}
	}
	p.live[s] = struct{}{}
	if p.sweep == nil {
		p.sweep = time.AfterFunc(expireEvery, p.sweepNow)
	}
	p.mu.Unlock()
	go s.read()
	return s, nil
}

func (s *upSocket) isRetired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retired
}

// retire takes s out of use; it is closed now if no query waits on it,
// else when the last one is done.
func (s *upSocket) retire() {
	s.mu.Lock()
	s.retired = true
	s.unlockClosingIfDone()
}

// unlockClosingIfDone releases s.mu, held by the caller, and closes s
// (after unlocking) the first time it is found retired and idle.
func (s *upSocket) unlockClosingIfDone() {
	done := s.retired && len(s.pending) == 0 && !s.closed
	if done {
		s.closed = true
	}
	s.mu.Unlock()
	if done {
		s.conn.Close()
	}
}

// add registers x as in flight on s, until x.until, with a fresh random
// id written into pkt; it reports false if s is retired.
func (s *upSocket) add(x *exchange, pkt []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired {
		return false
	}
	id := uint16(rand.Uint32())
	for s.pending[id] != nil {
		id = uint16(rand.Uint32())
	}
	s.pending[id] = x
	s.uses++
	s.last = time.Now()
	if s.uses >= maxSocketQueries {
		s.retired = true
	}
	pkt[0], pkt[1] = byte(id>>8), byte(id)
	return true
}

// expire fails the queries in flight on s whose time is up.
func (s *upSocket) expire(now time.Time) {
	s.fail(func(x *exchange) bool { return !now.Before(x.until) }, false, errTimedOut)
}

// fail takes out of flight on s the queries that pick selects (all of
// them when pick is nil), retires s first if retire is set, and fails
// them with err.
func (s *upSocket) fail(pick func(*exchange) bool, retire bool, err error) {
	var xs []*exchange
	s.mu.Lock()
	for id, x := range s.pending {
		if pick == nil || pick(x) {
			delete(s.pending, id)
			xs = append(xs, x)
		}
	}
	if retire {
		s.retired = true
	}
	s.unlockClosingIfDone()
	for _, x := range xs {
		x.failed(err)
	}
}

// errTimedOut is an upstream that did not answer within its share of the
// query's time.
var errTimedOut = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "no answer in time" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }

var _ net.Error = errTimedOut

// read reads the answers of s until it is closed, one read per packet.
func (s *upSocket) read() {
	buf := make([]byte, answerBufSize)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if s.failAll(err) {
				return
			}
			continue
		}
		s.take(buf[:n])
	}
}

// failAll fails every query in flight on s with a read error: an ICMP
// error (connection refused) concerns the upstream, so every query sent
// to it. It reports whether the reader must stop (s is closed).
func (s *upSocket) failAll(err error) bool {
	stop := errors.Is(err, net.ErrClosed)
	if stop {
		err = errSocketClosed
	}
	// A socket that failed is not used again.
	s.fail(nil, !stop, err)
	return stop
}

// take matches one packet to the query in flight it answers, and
// finishes that query; packets that match none are dropped.
func (s *upSocket) take(pkt []byte) {
	if len(pkt) < 12 {
		return
	}
	m := new(dns.Msg)
	uerr := m.Unpack(pkt)
	id := uint16(pkt[0])<<8 | uint16(pkt[1])
	s.mu.Lock()
	x := s.pending[id]
	if x == nil || !answers(x.q, m) {
		s.mu.Unlock()
		return // late, or forged: the real answer may still come
	}
	delete(s.pending, id)
	s.unlockClosingIfDone()
	if uerr != nil && !m.Truncated {
		x.failed(uerr)
		return
	}
	x.answered(m)
}

// answers reports whether m is an answer to q: a response to a query
// with q as its only question (miekg/dns's Client checks the id only).
func answers(q dns.Question, m *dns.Msg) bool {
	if !m.Response || m.Opcode != dns.OpcodeQuery || len(m.Question) != 1 {
		return false
	}
	a := m.Question[0]
	return a.Qtype == q.Qtype && a.Qclass == q.Qclass && equalFold(a.Name, q.Name)
}

// equalFold is strings.EqualFold for DNS names (ASCII only).
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// sweepNow fails the queries whose time is up; every sweepEvery it also
// retires old sockets, closes idle ones and those of upstreams no longer
// configured (a reload). It re-arms the timer while sockets remain.
func (p *socketPool) sweepNow() {
	now := time.Now()
	p.mu.Lock()
	r := p.r
	live := make([]*upSocket, 0, len(p.live))
	for s := range p.live {
		live = append(live, s)
	}
	sockets := now.Sub(p.lastSweep) >= p.interval()
	if sockets {
		p.lastSweep = now
	}
	p.mu.Unlock()
	for _, s := range live {
		s.expire(now)
	}
	var keep []string
	if sockets {
		keep = r.configured()
	}
	var retire []*upSocket
	p.mu.Lock()
	for up, set := range p.sets {
		if !sockets {
			break
		}
		gone := keep != nil && !slices.Contains(keep, up)
		empty := true
		for k, s := range set {
			if s == nil {
				continue
			}
			s.mu.Lock()
			old := gone || s.retired || now.Sub(s.opened) >= cmp.Or(p.age, maxSocketAge) || now.Sub(s.last) >= cmp.Or(p.idle, socketIdle)
			s.mu.Unlock()
			if old {
				retire = append(retire, s)
				set[k] = nil
				continue
			}
			empty = false
		}
		if empty {
			delete(p.sets, up)
		}
	}
	p.mu.Unlock()
	for _, s := range retire {
		s.retire()
	}
	p.mu.Lock()
	for s := range p.live {
		s.mu.Lock()
		if s.closed {
			delete(p.live, s)
		}
		s.mu.Unlock()
	}
	switch {
	case len(p.live) > 0 && p.sweep == nil:
		p.sweep = time.AfterFunc(expireEvery, p.sweepNow)
	case len(p.live) > 0:
		p.sweep.Reset(expireEvery)
	default:
		p.sweep = nil
	}
	p.mu.Unlock()
}

// closeAll retires every socket: idle ones are closed now, the others
// when their queries are done (or have timed out).
func (p *socketPool) closeAll() {
	p.mu.Lock()
	var all []*upSocket
	for _, set := range p.sets {
		for _, s := range set {
			if s != nil {
				all = append(all, s)
			}
		}
	}
	p.sets = nil
	p.mu.Unlock()
	for _, s := range all {
		s.retire()
	}
}
