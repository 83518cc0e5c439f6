package tunnel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/accept"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/tcpinfo"
	"github.com/rs/zerolog"
)

// MaxTunnels is p's limits.max_tunnels, or DefaultMaxTunnels.
func MaxTunnels(p *policy.Policy) int {
	if p != nil && p.Limits.MaxTunnels > 0 {
		return p.Limits.MaxTunnels
	}
	return DefaultMaxTunnels
}

// idleTick is how often the idle watcher reads TCP_INFO.
const idleTick = 250 * time.Millisecond

// Set is every tunnel of one process: the limit counts them all, the idle
// watcher and Revoke see them all. The zero value is ready; share one Set
// between the Groups of every data path.
type Set struct {
	n atomic.Int64 // slots taken, open tunnels and tunnels being set up

	mu       sync.Mutex
	open     map[*Tunnel]struct{}
	idleN    int  // open tunnels with an idle timeout
	watching bool // the idle watcher runs
}

// Open is the number of slots taken in s: open tunnels and tunnels being
// set up, of every group.
func (s *Set) Open() int { return int(s.n.Load()) }

func (s *Set) add(t *Tunnel) {
	s.mu.Lock()
	if s.open == nil {
		s.open = map[*Tunnel]struct{}{}
	}
	s.open[t] = struct{}{}
	if t.Idle > 0 {
		s.idleN++
	}
	s.mu.Unlock()
}

func (s *Set) remove(t *Tunnel) {
	s.mu.Lock()
	if _, ok := s.open[t]; ok {
		delete(s.open, t)
		if t.Idle > 0 {
			s.idleN--
		}
	}
	s.mu.Unlock()
}

func (s *Set) snapshot() []*Tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := make([]*Tunnel, 0, len(s.open))
	for t := range s.open {
		ts = append(ts, t)
	}
	return ts
}

// Revoke decides every open tunnel again with pol, on the request it was
// decided on (client, user, name, address, port), and closes each one pol
// refuses; its line then says policy.ReasonRevoked with pol's rule and hint. It
// returns how many it closed. An audit pass (mode: audit) is not refused.
// A tunnel whose destination pol intercepts (http: request rules) while
// it was opened as a plain tunnel is closed too.
func (s *Set) Revoke(pol *policy.Policy) int {
	n := 0
	for _, t := range s.snapshot() {
		d := pol.Decide(t.Request)
		// A tunnel to a destination the new policy intercepts (http:)
		// would carry requests nobody decides (issue 20): it goes too,
		// and the client's next connection is intercepted.
		intercepted := d.Allowed() && d.Intercept && !t.Entry.Decision.Intercept
		if d.Allowed() && !intercepted {
			continue
		}
		err := fmt.Errorf("closed on policy reload: the new policy refuses it (%s)", d.Reason)
		if intercepted {
			err = errors.New("closed on policy reload: the new policy decides each request to it (http:)")
		}
		if t.close(err, &d) {
			n++
		}
	}
	return n
}

// watchIdle starts the idle watcher unless it runs. One goroutine for
// every tunnel instead of a timer per tunnel keeps an idle tunnel cheap;
// it ends when no open tunnel has an idle timeout.
func (s *Set) watchIdle() {
	s.mu.Lock()
	if s.watching {
		s.mu.Unlock()
		return
	}
	s.watching = true
	s.mu.Unlock()
	go func() {
		tick := time.NewTicker(idleTick)
		defer tick.Stop()
		for range tick.C {
			s.mu.Lock()
			if s.idleN == 0 {
				s.watching = false
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			for _, t := range s.snapshot() {
				if t.Idle <= 0 {
					continue
				}
				if d, ok := tcpinfo.Idle(t.idleA, t.idleB); ok && d >= t.Idle {
					t.close(fmt.Errorf("idle for %s (timeouts.tunnel_idle)", t.Idle.Round(time.Millisecond)), nil)
				}
			}
		}
	}()
}

// Group is the tunnels of one server (an HTTP proxy, a transparent
// listener): what its Shutdown drains. The tunnels of every Group of a
// Set share its limit. Set fields before the first Acquire.
type Group struct {
	// Set is shared with the other data paths of the process; nil means
	// a Set of the group's own.
	Set *Set
	// Events records each tunnel's canonical line; nil records nothing.
	Events *eventlog.Sink
	// Logger receives panics.
	Logger zerolog.Logger

	initOnce sync.Once
	set      *Set
	n        accept.InFlight // slots of this group: what Drain waits for
	draining atomic.Bool     // Drain has begun
	ctx      context.Context
	cancel   context.CancelFunc
	// drain is done once Drain has begun (Draining).
	drain       context.Context
	drainCancel context.CancelFunc

	mu     sync.Mutex
	closed error // set at the drain deadline: later tunnels close at once
}

func (g *Group) init() {
	g.initOnce.Do(func() {
		g.set = g.Set
		if g.set == nil {
			g.set = &Set{}
		}
		g.ctx, g.cancel = context.WithCancel(context.Background())
		g.drain, g.drainCancel = context.WithCancel(context.Background())
	})
}

// Open is the number of the group's tunnels, open or being set up.
func (g *Group) Open() int { return g.n.N() }

// Context is done once the group's drain deadline has passed: set-up
// work (dialling) that should stop then uses it.
func (g *Group) Context() context.Context {
	g.init()
	return g.ctx
}

// Draining is done once the group's drain has begun (Drain), before its
// deadline: a connection that waits for its next request (an idle
// intercepted keep-alive connection) ends then, as net/http's Shutdown
// closes its idle connections.
func (g *Group) Draining() context.Context {
	g.init()
	return g.drain
}

// Acquire takes a slot for a tunnel about to be set up, limit being the
// current policy's limits.max_tunnels for the whole Set. The slot is the
// returned Tunnel's: Start hands it over to the open tunnel; Release
// gives it back if setup fails (a no-op after Start, so defer it).
func (g *Group) Acquire(limit int) (*Tunnel, error) {
	g.init()
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed != nil {
		return nil, ErrClosed
	}
	if g.set.n.Add(1) > int64(limit) {
		g.set.n.Add(-1)
		return nil, ErrTooMany
	}
	g.n.Add(1)
	return &Tunnel{g: g}, nil
}

func (g *Group) release() {
	g.set.n.Add(-1)
	g.n.Done()
}

// Drain waits until the group's tunnels, those being set up included,
// have ended, or ctx is done. Then it closes those still open (their
// lines say "closed on shutdown") and every tunnel started later, waits a
// moment for their lines, and returns ctx's error.
func (g *Group) Drain(ctx context.Context) error {
	g.init()
	// Tunnels whose client has ended its side are not waited for once
	// their upstream is silent (drainHalfClose).
	g.draining.Store(true)
	g.drainCancel()
	for _, t := range g.set.snapshot() {
		if t.g == g {
			t.recheckHalf()
		}
	}
	if g.n.Wait(ctx) == nil {
		return nil
	}
	// Words for Go's "context deadline exceeded": %.0w keeps ctx's
	// error for errors.Is and prints none of it.
	err := fmt.Errorf("closed on shutdown: still open when the drain time (timeouts.drain) ran out%.0w", ctx.Err())
	g.mu.Lock()
	g.closed = err
	g.mu.Unlock()
	g.cancel()
	for _, t := range g.set.snapshot() {
		if t.g == g {
			t.close(err, nil)
		}
	}
	// A moment for their lines: each is written before its slot is
	// given back.
	lines, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	g.n.Wait(lines)
	return ctx.Err()
}
