package httpproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/tcpinfo"
)

// serveConnect handles CONNECT host:port (HTTP/1.1 or HTTP/1.0).
//
// CONNECT is handled here rather than by goproxy's handleHttps because
// goproxy cannot give the answers egress must give: its refusals are a bare
// "502 Bad Gateway" written on the hijacked connection (no 403, no
// X-Egress-* headers, no body), it cannot tell 502 from 503 from 504, it
// dials through ConnectDial (which follows HTTPS_PROXY by default), and its
// copy loop neither counts bytes nor lets Shutdown drain open tunnels.
//
// Every answer but the 200 is written on the hijacked connection with the
// explanation in its status line (failure.send), then the connection is
// closed after the client has had the time to read it.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	host, port, err := splitTarget(r.Host) // for CONNECT, r.Host is the request target
	if err != nil {
		p.fail(w, r, r.Host, fmt.Errorf("%w: CONNECT %v", errBadRequest, err))
		return
	}
	rq := p.newRequest(r, host, port)
	target := targetString(host, port)
	entry := eventlog.Entry{ID: rq.id, Proto: eventlog.ProtoConnect, Client: rq.client}
	answer := func(dec policy.Decision, err error) {
		failureFor(rq.id, target, dec, err).send(w, r)
		entry.Decision = dec
		if !dec.Denied() {
			entry.Err = err
			entry.Duration = time.Since(rq.start)
		}
		p.Events.Record(entry)
	}

	pol := p.Policy()
	dec := pol.Decide(rq.req)
	if !dec.Allowed() {
		answer(dec, nil)
		return
	}
	if !p.tunnels.acquire(maxTunnels(pol)) {
		answer(dec, errTooManyTunnels)
		return
	}
	// The slot is released here unless a tunnel takes it over (its
	// finish releases it), whatever happens in between, panics included.
	handedOff := false
	defer func() {
		if !handedOff {
			p.tunnels.release()
		}
	}()
	up, dec, err := p.dial.Dial(r.Context(), "tcp", rq.req)
	if err != nil {
		answer(dec, err)
		return
	}
	entry.Decision = dec

	cc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		entry.Err = fmt.Errorf("hijack: %w", err)
		p.Events.Record(entry)
		return
	}
	cc.SetDeadline(time.Time{}) // the server's header deadline must not cut the tunnel
	t := &tunnel{p: p, entry: entry, start: rq.start, client: cc, upstream: up}
	handedOff = true // from here on, t.finish releases the slot
	proto := "HTTP/1.1"
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		proto = "HTTP/1.0" // Python's urllib sends CONNECT ... HTTP/1.0
	}
	if _, err := io.WriteString(cc, proto+" 200 Connection established\r\n\r\n"); err != nil {
		t.closeWith(fmt.Errorf("write 200: %w", err))
		t.finish()
		return
	}
	// A client may send its first bytes (a TLS ClientHello) right behind
	// the CONNECT; net/http has read them into its buffer.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		m, err := up.Write(b)
		t.up = int64(m)
		if err != nil {
			t.closeWith(fmt.Errorf("write early data: %w", err))
			t.finish()
			return
		}
	}
	if t.entry.Decision.Denied() {
		// mode: audit let a denial through: log it now, not when the
		// tunnel closes, which for a database connection may be days.
		p.Events.Record(t.entry)
		t.logged = true
	}
	// t.idle is set before add: the idle watcher reads it from the set.
	t.idle = pol.Timeouts.TunnelIdle
	p.tunnels.add(t)
	if t.idle > 0 {
		p.tunnels.watchIdle()
	}
	// This handler returns, so the connection's server goroutine (and its
	// stack) goes away. Idle tunnels wait on the poller (poll.go) without a
	// goroutine; where it cannot be used, each direction gets one.
	if t.startPolled(up, cc) {
		return
	}
	t.left.Store(2)
	go t.pipe(up, cc, &t.up)
	go t.pipe(cc, up, &t.down)
}

// tunnel is one open CONNECT tunnel.
type tunnel struct {
	p                *Proxy
	entry            eventlog.Entry
	start            time.Time
	idle             time.Duration // 0: never closed for idleness
	client, upstream net.Conn
	up, down         int64 // bytes; each written by its own pipe before left drops
	left             atomic.Int32
	closeOnce        sync.Once
	closeErr         error         // set inside closeOnce
	dirs             [2]*direction // up, down; nil when copied on goroutines
	logged           bool          // an audit denial, recorded when it opened
}

// pipe copies src to dst until EOF or an error, on its own goroutine: the
// fallback when the poller (poll.go) cannot take the tunnel. Between two
// *net.TCPConn the copy splices (copyConn). On EOF it half-closes dst, so a client that shuts down its sending side
// (a database client's terminate, "Connection: close" HTTP/1.0) still gets
// its answer; on an error it closes both ends so the other direction ends.
func (t *tunnel) pipe(dst, src net.Conn, n *int64) {
	defer func() {
		if v := recover(); v != nil {
			t.p.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
				Str(eventlog.FieldID, t.entry.ID).Msg("panic in tunnel; tunnel closed")
			t.closeBoth()
		}
		if t.left.Add(-1) == 0 {
			t.finish()
		}
	}()
	m, err := copyConn(dst, src)
	*n += m
	if err != nil {
		t.closeBoth()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	t.closeBoth()
}

func (t *tunnel) closeBoth() { t.closeWith(nil) }

// closeWith closes both ends; err, if the first to close, is logged as
// the reason the tunnel ended.
func (t *tunnel) closeWith(err error) {
	t.closeOnce.Do(func() {
		t.closeErr = err
		t.client.Close()
		t.upstream.Close()
	})
	for _, d := range t.dirs {
		if d != nil {
			d.closed()
		}
	}
}

// finish runs once both directions are done: the tunnel's one log line.
func (t *tunnel) finish() {
	t.closeBoth() // and, through closeOnce, see closeErr
	if t.closeErr != nil && t.entry.Err == nil {
		t.entry.Err = t.closeErr
	}
	t.entry.BytesUp, t.entry.BytesDown = t.up, t.down
	t.entry.Duration = time.Since(t.start)
	if !t.logged {
		t.p.Events.Record(t.entry)
	}
	t.p.tunnels.remove(t) // last: Shutdown returns only after the line is written
}

// idleFor is how long neither end of the tunnel has received data, from
// the kernel's TCP_INFO (so the copy can stay in splice, untouched). ok is
// false when it cannot be known.
func (t *tunnel) idleFor() (time.Duration, bool) {
	return tcpinfo.Idle(t.client, t.upstream)
}

// tunnelSet counts and tracks open tunnels for the limit, idle timeouts
// and Shutdown.
type tunnelSet struct {
	n        atomic.Int64 // slots taken: open tunnels and CONNECTs dialling
	mu       sync.Mutex
	m        map[*tunnel]struct{}
	idleOnce sync.Once
}

func (s *tunnelSet) acquire(limit int) bool {
	if s.n.Add(1) > int64(limit) {
		s.n.Add(-1)
		return false
	}
	return true
}

func (s *tunnelSet) release() { s.n.Add(-1) }

func (s *tunnelSet) add(t *tunnel) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*tunnel]struct{}{}
	}
	s.m[t] = struct{}{}
	s.mu.Unlock()
}

func (s *tunnelSet) remove(t *tunnel) {
	s.mu.Lock()
	delete(s.m, t) // absent when it failed before add
	s.mu.Unlock()
	s.release()
}

func (s *tunnelSet) snapshot() []*tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := make([]*tunnel, 0, len(s.m))
	for t := range s.m {
		ts = append(ts, t)
	}
	return ts
}

// watchIdle starts, once, the goroutine that closes idle tunnels. One
// goroutine for all tunnels instead of a timer per tunnel keeps an idle
// tunnel cheap.
func (s *tunnelSet) watchIdle() {
	s.idleOnce.Do(func() {
		go func() {
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for range tick.C {
				for _, t := range s.snapshot() {
					if t.idle <= 0 {
						continue
					}
					if d, ok := t.idleFor(); ok && d >= t.idle {
						t.closeWith(fmt.Errorf("idle for %s (timeouts.tunnel_idle)", t.idle.Round(time.Millisecond)))
					}
				}
			}
		}()
	})
}

// drain waits for every tunnel to end, until ctx is done; then it closes
// the rest, waits a moment for their log lines, and returns ctx's error.
func (s *tunnelSet) drain(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.n.Load() > 0 {
		select {
		case <-ctx.Done():
			for _, t := range s.snapshot() {
				t.closeWith(fmt.Errorf("closed on shutdown: %w", ctx.Err()))
			}
			deadline := time.Now().Add(time.Second)
			for s.n.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func maxTunnels(pol *policy.Policy) int {
	if pol.Limits.MaxTunnels > 0 {
		return pol.Limits.MaxTunnels
	}
	return DefaultMaxTunnels
}
