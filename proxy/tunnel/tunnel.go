// Package tunnel carries egress's tunnels: CONNECT tunnels, transparent
// TCP connections and upgraded HTTP connections (WebSocket) are all one
// Tunnel once decided and dialled. It is the one home of what every such
// path needs after the decision:
//
//   - a limit shared by every path of a process (limits.max_tunnels), with
//     the slot taken before dialling, so connections being set up count;
//   - the idle timeout (timeouts.tunnel_idle), read from the kernel's
//     TCP_INFO (proxy/tcpinfo) so the copy stays in splice(2);
//   - the half-close bound (timeouts.half_close): once one side has ended
//     its direction, the other may stay silent only so long, so a client
//     gone while its origin never answers does not hold a slot forever;
//   - drain on shutdown: a Group waits for its tunnels, closes the rest at
//     the deadline, and closes at once any tunnel set up after it; it
//     does not wait for a tunnel whose client has ended its side and
//     whose upstream is silent;
//   - revocation: a reloaded policy re-decides every open tunnel and
//     closes those it refuses (policy.ReasonRevoked);
//   - byte counts, one close for both ends, and the canonical log line,
//     written once when the tunnel ends;
//   - a recovered panic closes its tunnel, is logged with a stack, and the
//     process keeps serving.
//
// On Linux an idle tunnel costs no goroutine: both directions wait on one
// epoll poller for the whole process (poll_linux.go) and splice when data
// comes. Elsewhere, or when an end is not TCP (a TLS upstream), each
// direction copies on its own goroutine. A net.Conn wrapper that exposes
// its socket with a TCPConn() *net.TCPConn method (proxy/proxyproto.Conn)
// is unwrapped, so the PROXY protocol keeps splice, the poller, half-close
// and the idle timeout.
//
// It does not decide, dial or answer clients: the data paths do, then
// hand both connections over with Start.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/peek"
	"github.com/egress-proxy/egress/proxy/tcpinfo"
)

// DefaultHalfClose is Tunnel.HalfClose when the caller sets none: the
// default of timeouts.half_close.
const DefaultHalfClose = 30 * time.Second

// drainHalfClose is the silence after which Drain closes a tunnel whose
// client has ended its side: the client is most likely gone, and one
// still waiting for an answer that flows keeps its tunnel.
const drainHalfClose = time.Second

// DefaultMaxTunnels is the limit when the policy sets none.
const DefaultMaxTunnels = 10000

// Errors of Acquire.
var (
	// ErrTooMany: limits.max_tunnels tunnels are open or being set up.
	ErrTooMany = errors.New("too many open tunnels (limits.max_tunnels)")
	// ErrClosed: the group's drain deadline has passed.
	ErrClosed = errors.New("tunnels closed on shutdown")
)

// Tunnel is one tunnel, from Acquire to its log line. The exported fields
// are the caller's to fill before Start and are not to be touched after.
type Tunnel struct {
	// Entry is the canonical line, with its ID, Proto, Client and the
	// Decision that allowed the tunnel; the tunnel adds bytes, duration
	// and the reason it was closed, and records it once when it ends (an
	// audit denial, at Start).
	Entry eventlog.Entry
	// Began is when the connection or request arrived: the line's
	// duration counts from it.
	Began time.Time
	// Request is what the tunnel was decided on, with the address
	// dialled: Revoke decides it again.
	Request policy.Request
	// Idle is timeouts.tunnel_idle: the tunnel is closed after this long
	// without data either way. Zero: never.
	Idle time.Duration
	// HalfClose is timeouts.half_close: once one direction has ended
	// (its source sent EOF, which was passed on as a half-close), the
	// tunnel is closed after this long without data the other way.
	// Zero: DefaultHalfClose.
	HalfClose time.Duration
	// Up and Down count the bytes the caller relayed before Start (early
	// data behind a CONNECT, the peeked head of a transparent connection).
	Up, Down int64
	// Inspect, if set, sees the client's first bytes before any of them
	// goes upstream, whenever they come: a whole TLS ClientHello (or
	// why none could be read, see peek.ReadFirst), or the first read
	// of anything else. A non-nil decision refuses the tunnel: it is
	// closed and its line is that decision. Nothing waits for it while
	// the client is silent: the upstream's bytes flow meanwhile (a
	// server that speaks first is not delayed).
	Inspect        func(first peek.First) *policy.Decision
	InspectTimeout time.Duration // zero: DefaultInspectTimeout

	g                *Group
	started          bool
	client, upstream net.Conn
	idleA, idleB     net.Conn      // the sockets TCP_INFO is read from
	dirs             [2]*direction // up, down when on the poller; written before the tunnel joins the set
	left             atomic.Int32  // directions still running
	logged           bool          // an audit denial, recorded at Start
	measured         bool          // TCP_INFO tells idleA's and idleB's idle time
	lastRead         atomic.Int64  // unix nanoseconds of the last read, when not measured
	half             halfState

	closeOnce sync.Once
	isClosed  atomic.Bool             // set inside closeOnce
	closeErr  error                   // why it was closed, set inside closeOnce
	revokedBy *policy.Decision        // the refusing decision, when revoked
	refused   atomic.Pointer[refusal] // Inspect's or Refuse's refusal, set before the tunnel closes
	// lateUnreadable: see InspectLate.
	lateUnreadable func(error) policy.Decision
}

// RecordAudit records now the line of a tunnel that mode: audit let
// through a denial, for a caller that waits before Start (a CONNECT
// waiting for its first bytes): Start does not record it again. Set Entry
// first.
func (t *Tunnel) RecordAudit() {
	if t.Entry.Decision.Denied() && !t.logged {
		t.g.Events.Record(t.Entry)
		t.logged = true
	}
}

// Release gives the slot back when setup failed before Start (or Hand);
// after either it does nothing.
func (t *Tunnel) Release() {
	if t.started {
		return
	}
	t.started = true
	t.g.release()
}

// Hand moves the slot to a new Tunnel, returned, for a connection
// another data path serves on goroutines of its own (an intercepted
// connection, proxy/intercept's Start), which then Starts or Releases
// it; t's Release does nothing after Hand, so that the caller's deferred
// Release leaves the slot to the new owner.
func (t *Tunnel) Hand() *Tunnel {
	if t.started {
		panic("tunnel: Hand after Start or Release")
	}
	t.started = true
	return &Tunnel{g: t.g}
}

// Draining is the Draining of t's group.
func (t *Tunnel) Draining() context.Context { return t.g.Draining() }

// Start copies between client and upstream until both directions end,
// then closes both and records the line. It returns at once; from here on
// the tunnel owns both connections and its slot.
func (t *Tunnel) Start(client, upstream net.Conn) {
	if t.started {
		panic("tunnel: Start after Start or Release")
	}
	t.started = true
	t.client, t.upstream = client, upstream
	// A wrapper's read-ahead (the PROXY header's reader) goes first, so
	// that the copy can then use the socket itself.
	cs, us := t.unwrap(client, upstream, &t.Up), t.unwrap(upstream, client, &t.Down)
	t.idleA, t.idleB = socketOf(client), socketOf(upstream)
	if _, t.measured = tcpinfo.Idle(t.idleA, t.idleB); !t.measured {
		t.lastRead.Store(time.Now().UnixNano())
	}
	if t.Entry.Decision.Denied() && !t.logged {
		// mode: audit let a denial through: log it now, not when the
		// tunnel closes, which for a database connection may be days.
		t.g.Events.Record(t.Entry)
		t.logged = true
	}
	polled := t.preparePolled(cs, us)
	t.left.Store(2)
	// Everything the idle watcher, Revoke and Drain read is written
	// above: joining the set (under its lock) publishes it.
	t.g.set.add(t)
	t.g.mu.Lock()
	closed := t.g.closed
	t.g.mu.Unlock()
	if closed != nil {
		t.close(closed, nil) // set up after the drain deadline
	}
	if t.Idle > 0 {
		t.g.set.watchIdle()
	}
	if polled {
		t.startPolled()
		return
	}
	go t.pipe(us, cs, &t.Up)
	go t.pipe(cs, us, &t.Down)
}

// tcpConner is a net.Conn wrapper that exposes its TCP socket.
type tcpConner interface{ TCPConn() *net.TCPConn }

// unwrap returns the connection to copy from and to for c: c itself, or
// the socket of a wrapper (whose read-ahead it first copies to other).
func (t *Tunnel) unwrap(c, other net.Conn, n *int64) net.Conn {
	w, ok := c.(tcpConner)
	if !ok {
		return c
	}
	tc := w.TCPConn()
	if tc == nil {
		return c
	}
	if b, ok := c.(interface{ Buffered() int }); ok && b.Buffered() > 0 {
		buf := make([]byte, b.Buffered())
		m, err := io.ReadFull(c, buf)
		k, werr := other.Write(buf[:m])
		*n += int64(k)
		if err != nil || werr != nil {
			return c // the copy will see the same error
		}
	}
	return tc
}

// socketOf is the TCP socket under c for TCP_INFO, or c.
func socketOf(c net.Conn) net.Conn {
	if w, ok := c.(tcpConner); ok && w.TCPConn() != nil {
		return w.TCPConn()
	}
	if w, ok := c.(interface{ NetConn() net.Conn }); ok { // *tls.Conn
		return socketOf(w.NetConn())
	}
	return c
}

// close closes both ends once; err, if this is the first close, is the
// reason logged, and revokedBy the decision that revoked the tunnel. It
// reports whether this call closed the tunnel.
func (t *Tunnel) close(err error, revokedBy *policy.Decision) bool {
	first := false
	t.closeOnce.Do(func() {
		first = true
		t.closeErr, t.revokedBy = err, revokedBy
		t.isClosed.Store(true)
		t.client.Close()
		t.upstream.Close()
	})
	for _, d := range t.dirs {
		if d != nil {
			d.closed()
		}
	}
	return first
}

func (t *Tunnel) closeBoth() { t.close(nil, nil) }

// pipe copies src to dst until EOF or an error, on its own goroutine. On
// EOF it half-closes dst, so a client that shuts down its sending side (a
// database client's terminate, an HTTP/1.0 "Connection: close") still
// gets its answer; on an error it closes both ends so that the other
// direction ends too.
func (t *Tunnel) pipe(dst, src net.Conn, n *int64) {
	defer func() {
		if v := recover(); v != nil {
			t.panicked(v)
		}
		t.directionEnded(n == &t.Up)
	}()
	if n == &t.Up && !t.inspectHead(dst, src) {
		return
	}
	if !t.measured {
		src = stampedConn{src, &t.lastRead}
	}
	m, err := copyConn(dst, src)
	*n += m
	if err != nil {
		t.closeBoth()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	t.closeBoth()
}

// Refuse closes the tunnel for d, a refusal of something it carried (a
// later request of a plain-HTTP connection): its line is d.
func (t *Tunnel) Refuse(d policy.Decision) {
	t.refused.Store(&refusal{d: d})
	t.close(errRefused, nil)
}

// RefusedRequest makes d, the refusal of a request the tunnel carried
// that egress answered itself (its 403 on a gated plain-HTTP
// connection), the tunnel's line, with the request's method and URL.
// Unlike Refuse it leaves the tunnel open: the gate ends the connection
// once the client has had its answer.
func (t *Tunnel) RefusedRequest(d policy.Decision, method, url string) {
	t.refused.Store(&refusal{d: d, method: method, url: url})
}

// refusal is the decision of a refused tunnel's line, and the request it
// refused when it was one.
type refusal struct {
	d           policy.Decision
	method, url string
}

// Fail closes the tunnel for err, which its line reports (a request it
// carried could not be read, say).
func (t *Tunnel) Fail(err error) { t.close(err, nil) }

// DefaultInspectTimeout bounds the wait for the rest of a client's TLS
// ClientHello once its first byte came (issue 18: a hello not complete
// by then is refused, never passed).
const DefaultInspectTimeout = 2 * time.Second

// inspectHead, for a tunnel with Inspect, reads the client's first bytes
// from src (at least one is queued or about to be), lets Inspect decide,
// and writes them to dst. It reports false when the tunnel was refused or
// failed (and is closed).
func (t *Tunnel) inspectHead(dst, src net.Conn) bool {
	if t.Inspect == nil {
		return true
	}
	timeout := t.InspectTimeout
	if timeout <= 0 {
		timeout = DefaultInspectTimeout
	}
	// The first bytes, however long the client takes to send them (no
	// deadline: a client that waits for the server to speak first must
	// not get past the check by waiting), then the rest of a ClientHello
	// within timeout, counted from the first byte. An error (EOF, a reset) after what was read: the
	// copy that follows sees it again.
	first := make([]byte, 2048)
	n, _ := src.Read(first)
	if n == 0 {
		return true
	}
	f := peek.ReadFirst(src, first[:n], timeout)
	head := f.Bytes
	if d := t.Inspect(f); d != nil {
		t.refused.Store(&refusal{d: *d})
		t.close(errRefused, nil)
		return false
	}
	if t.lateUnreadable != nil && !f.TLS {
		return t.watchFirstLine(dst, src, head)
	}
	return t.send(dst, head)
}

// send writes the client's bytes b to dst, counted; false when it failed
// (and the tunnel is closed).
func (t *Tunnel) send(dst net.Conn, b []byte) bool {
	if len(b) > 0 {
		if _, werr := dst.Write(b); werr != nil {
			t.closeBoth()
			return false
		}
		t.Up += int64(len(b))
	}
	return true
}

// InspectLate sets the inspection of the first bytes of a client whose
// origin spoke first (SMTP, MySQL), whenever they come, on both paths
// that carry one (transparent, CONNECT): check decides them (a TLS
// ClientHello, read whole, see Inspect), and a first line that is, or
// later becomes, an HTTP/1 or h2c request line, however slowly it is
// sent, is refused with unreadable(err) before its end goes up
// (peek.GuardFirstLine): plain HTTP is decided only from a connection's
// first byte, and an origin would read a Host egress never decided on. A
// first line that is no request line (a word and a wait) flows as it
// comes, and the tunnel is then copied as any other.
func (t *Tunnel) InspectLate(check func(peek.First) *policy.Decision, unreadable func(error) policy.Decision) {
	t.Inspect, t.lateUnreadable = check, unreadable
}

// watchFirstLine, for a tunnel set by InspectLate, refuses head, the
// client's first bytes (not TLS), when they are an HTTP request line, or
// sends them to dst, and when they could still become one copies the
// rest of that line to dst as it comes, watched by peek.GuardFirstLine
// (on the poller too: the direction then splices as any other). It
// reports false when the tunnel was refused or failed; other read errors
// are left to the copy that follows, which sees them again.
func (t *Tunnel) watchFirstLine(dst, src net.Conn, head []byte) bool {
	refuse := func(err error) { t.Refuse(t.lateUnreadable(err)) }
	_, source, done := peek.From(head)
	switch {
	case done && (source == peek.SourceHTTP || source == peek.SourceHTTP2):
		refuse(fmt.Errorf("%w: an HTTP request line after the origin spoke first", peek.ErrUnreadableRequest))
		return false
	case !t.send(dst, head):
		return false
	case done || source != peek.SourceHTTP:
		return true
	}
	g := peek.GuardFirstLine(src, head, refuse)
	w := g.(interface{ Watching() bool }) // or a panic: the tunnel is closed
	buf := make([]byte, 2048)
	for w.Watching() {
		n, err := g.Read(buf)
		if !t.send(dst, buf[:n]) {
			return false
		}
		if errors.Is(err, peek.ErrUnreadableRequest) {
			return false
		}
		if err != nil {
			return true
		}
	}
	return true
}

// errRefused closes a tunnel Inspect refused.
var errRefused = errors.New("refused on its first bytes")

func (t *Tunnel) panicked(v any) {
	t.g.Logger.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).
		Str(eventlog.FieldID, t.Entry.ID).Msg("panic in tunnel; tunnel closed")
	t.closeBoth()
}

// finish runs once both directions are done: the tunnel's one line.
func (t *Tunnel) finish() {
	t.closeBoth() // and, through closeOnce, see closeErr
	t.half.mu.Lock()
	t.half.finished = true
	if t.half.timer != nil {
		t.half.timer.Stop()
	}
	t.half.mu.Unlock()
	e := t.Entry
	if t.closeErr != nil && e.Err == nil {
		e.Err = t.closeErr
	}
	e.BytesUp, e.BytesDown = t.Up, t.Down
	e.Duration = time.Since(t.Began)
	switch {
	case t.refused.Load() != nil:
		r := t.refused.Load()
		e.Decision, e.Err = r.d, nil
		if r.method != "" {
			e.Method, e.URL = r.method, r.url
		}
		t.g.Events.Record(e)
	case t.revokedBy != nil:
		// A new decision: logged even when an audit denial was at Start.
		e.Decision = revoked(e.Decision, *t.revokedBy)
		t.g.Events.Record(e)
	case !t.logged:
		t.g.Events.Record(e)
	}
	t.g.set.remove(t)
	t.g.release() // last: Drain returns only after the line is written
}

// revoked is the decision logged for a tunnel that d, the reloaded
// policy's, refused; was is the one it was opened on.
func revoked(was, d policy.Decision) policy.Decision {
	d.Verdict, d.Audit, d.Reason = policy.Deny, false, policy.ReasonRevoked
	if d.Host == "" {
		d.Host = was.Host
	}
	if !d.IP.IsValid() {
		d.IP = was.IP
	}
	if d.Port == 0 {
		d.Port = was.Port
	}
	return d
}

// halfState is a tunnel's half-close watch: from when its first direction
// ended, one timer (not a goroutine) checks the other's silence.
type halfState struct {
	mu       sync.Mutex
	at       time.Time   // when the first direction ended; zero: both run
	upDone   bool        // that direction was the client's
	timer    *time.Timer // runs checkHalf
	finished bool        // the tunnel's line is written: no more timers
}

// directionEnded is called once by each direction when it ends: the
// first to end starts the half-close watch, the last writes the line.
func (t *Tunnel) directionEnded(up bool) {
	if t.left.Add(-1) == 0 {
		t.finish()
		return
	}
	if t.isClosed.Load() {
		return // an error or a close ended it: the other direction ends too
	}
	t.half.mu.Lock()
	defer t.half.mu.Unlock()
	if t.half.finished || !t.half.at.IsZero() {
		return
	}
	t.half.at, t.half.upDone = time.Now(), up
	t.half.timer = time.AfterFunc(t.halfLimit(), t.checkHalf)
}

// halfLimit is the silence a half-closed tunnel is allowed now; the
// caller holds t.half.mu.
func (t *Tunnel) halfLimit() time.Duration {
	limit := t.HalfClose
	if limit <= 0 {
		limit = DefaultHalfClose
	}
	if t.half.upDone && t.g.draining.Load() {
		limit = min(limit, drainHalfClose)
	}
	return limit
}

// checkHalf closes a half-closed tunnel silent for its limit, or checks
// again when it could be.
func (t *Tunnel) checkHalf() {
	t.half.mu.Lock()
	if t.half.finished {
		t.half.mu.Unlock()
		return
	}
	limit := t.halfLimit()
	silent := time.Since(t.half.at)
	if t.measured {
		if d, ok := tcpinfo.Idle(t.idleA, t.idleB); ok {
			silent = min(silent, d)
		}
	} else {
		silent = min(silent, time.Since(time.Unix(0, t.lastRead.Load())))
	}
	if silent < limit {
		t.half.timer.Reset(limit - silent)
		t.half.mu.Unlock()
		return
	}
	draining := t.half.upDone && t.g.draining.Load()
	t.half.mu.Unlock()
	if draining {
		t.close(fmt.Errorf("closed on shutdown: the client ended its side and the upstream was silent for %s", limit), nil)
		return
	}
	t.close(fmt.Errorf("half-closed and silent for %s (timeouts.half_close)", limit.Round(time.Millisecond)), nil)
}

// recheckHalf checks a half-closed tunnel's silence at once (its limit
// may have shrunk: Drain began).
func (t *Tunnel) recheckHalf() {
	t.half.mu.Lock()
	if !t.half.finished && t.half.timer != nil {
		t.half.timer.Reset(0)
	}
	t.half.mu.Unlock()
}

// stampedConn notes the time of each read that returned data, for the
// half-close watch of a tunnel whose sockets TCP_INFO cannot see. It
// hides the connection's ReaderFrom and WriterTo, so it is only used
// where the copy could not splice anyway.
type stampedConn struct {
	net.Conn
	at *atomic.Int64
}

func (c stampedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.at.Store(time.Now().UnixNano())
	}
	return n, err
}

// ErrFirstMoveIdle: neither side of a new tunnel said anything for
// timeouts.tunnel_idle (FirstMove).
var ErrFirstMoveIdle = errors.New("no bytes either way (timeouts.tunnel_idle)")

// FirstMove waits for the first bytes of a new tunnel whose client has
// not spoken yet, from either side: the client's (head), to be inspected
// before any goes up, or the upstream's (down), a server that speaks
// first (SMTP, MySQL), for the caller to write to the client; it takes
// what the other side sent meanwhile too. It is the one way every path
// (CONNECT, the transparent listener) waits for a silent client. It gives
// up after idle (zero: never) with ErrFirstMoveIdle, or when ctx ends
// (the drain) with ctx's error. An EOF or error of either side ends the
// wait; the copy that follows sees it again.
func FirstMove(ctx context.Context, client, upstream net.Conn, idle time.Duration) (head, down []byte, err error) {
	type read struct {
		b   []byte
		err error
	}
	reader := func(c net.Conn, ch chan<- read) {
		b := make([]byte, 2048)
		n, err := c.Read(b)
		ch <- read{b[:n], err}
	}
	cch, uch := make(chan read, 1), make(chan read, 1)
	go reader(client, cch)
	go reader(upstream, uch)
	var timeout <-chan time.Time
	if idle > 0 {
		tm := time.NewTimer(idle)
		defer tm.Stop()
		timeout = tm.C
	}
	// stop ends a wait still under way, keeping what it read.
	stop := func(c net.Conn, ch <-chan read) read {
		c.SetReadDeadline(time.Unix(1, 0))
		r := <-ch
		c.SetReadDeadline(time.Time{})
		return r
	}
	select {
	case r := <-cch:
		u := stop(upstream, uch)
		return r.b, u.b, nil
	case u := <-uch:
		r := stop(client, cch)
		return r.b, u.b, nil
	case <-timeout:
		err = ErrFirstMoveIdle
	case <-ctx.Done():
		err = ctx.Err()
	}
	r, u := stop(client, cch), stop(upstream, uch)
	return r.b, u.b, err
}
