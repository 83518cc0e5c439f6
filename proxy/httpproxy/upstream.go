package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/origin"
)

// Limits of the upstream connection pools, those net/http.Transport had
// in egress before.
const (
	// maxIdlePerHost and maxIdlePerPool bound the connections kept open
	// for reuse, per origin and per pool (one policy and clients: entry).
	maxIdlePerHost = 100
	maxIdlePerPool = 1000
	// tlsHandshakeTimeout bounds the handshake with an https:// origin.
	tlsHandshakeTimeout = 10 * time.Second
)

// upstreamIdleTimeout closes a pooled connection nobody reused (a
// variable for tests).
var upstreamIdleTimeout = 90 * time.Second

// upConn is one upstream connection: dialled through the checking dialer
// for one pool, used by one request at a time on the client connection's
// own goroutine, then kept for the next request to the same origin.
type upConn struct {
	conn net.Conn      // what requests are written on: raw, or TLS over raw
	raw  net.Conn      // the dialled socket
	oc   *origin.Conn  // exchanges on conn: the one origin client
	br   *bufio.Reader // oc.BR
	bw   *bufio.Writer // oc.BW
	ip   netip.Addr    // the address dialled (and decided on)
	key  poolKey
	pool *pool

	idleSince time.Time   // under pool.mu
	timer     *time.Timer // closes it after upstreamIdleTimeout idle
	reused    bool        // served a request before this one
	// mustLook: the last response was one that has no body by its method
	// or status (HEAD, 204, 304), after which broken origins send one
	// anyway: the connection is looked at before reuse, however fresh.
	mustLook bool
}

// pool is the set of idle upstream connections of one policy and one
// clients: entry: a connection dialled for one client is never reused for
// a client whose policy might refuse its address, and a reload (a new
// policy) starts new pools and closes the old ones' idle connections.
type pool struct {
	tls *tls.Config // for https:// origins; verification on

	mu     sync.Mutex
	idle   map[poolKey][]*upConn // by key (scheme, host, port), most recent last
	n      int
	closed bool
}

func newPool(tc *tls.Config) *pool {
	return &pool{tls: tc, idle: map[poolKey][]*upConn{}}
}

// poolKey names an origin: connections are shared only between requests
// for the same scheme, name and port.
type poolKey struct {
	scheme, host string
	port         uint16
}

// freshIdle is how long a connection back in the pool is taken without
// the look of peerClosed by a request that can be sent again: an origin
// that closes a connection it just answered on says so (Connection:
// close), and a request that meets a close anyway is retried. Under load
// connections come back sooner than this, and the look is one system call
// per request.
var freshIdle = time.Millisecond

// get returns an idle connection to key, or nil. A connection whose
// origin has closed it, or sent something unasked (which must never be
// read as the answer to the next request), is closed and skipped; with
// retryable, one idle for less than freshIdle is taken without a look.
func (p *pool) get(key poolKey, retryable bool) *upConn {
	for {
		p.mu.Lock()
		list := p.idle[key]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		uc := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[key] = list[:len(list)-1]
		p.n--
		fresh := retryable && !uc.mustLook && time.Since(uc.idleSince) < freshIdle
		p.mu.Unlock()
		uc.timer.Stop()
		if !fresh && (peerClosed(uc.raw) || uc.heldByTLS()) {
			uc.conn.Close()
			continue
		}
		uc.reused = true
		return uc
	}
}

// heldByTLS reports whether the TLS layer of uc holds what the origin
// sent after its last answer (a record that came in the same read as the
// answer's), or its close: peerClosed, which looks at the socket, cannot
// see it. The read cannot block: its deadline has passed, and only
// records already read are decrypted (a timeout is not sticky in
// crypto/tls).
func (uc *upConn) heldByTLS() bool {
	if uc.conn == uc.raw {
		return false
	}
	uc.conn.SetReadDeadline(time.Unix(1, 0))
	_, err := uc.br.Peek(1)
	uc.conn.SetReadDeadline(time.Time{})
	return !isTimeout(err)
}

// put keeps uc for reuse, or closes it if the pool is closed or full.
func (p *pool) put(uc *upConn) {
	p.mu.Lock()
	if p.closed || p.n >= maxIdlePerPool || len(p.idle[uc.key]) >= maxIdlePerHost {
		p.mu.Unlock()
		uc.conn.Close()
		return
	}
	uc.idleSince = time.Now()
	if uc.timer == nil {
		uc.timer = time.AfterFunc(upstreamIdleTimeout, func() { p.expire(uc) })
	} else {
		uc.timer.Reset(upstreamIdleTimeout)
	}
	p.idle[uc.key] = append(p.idle[uc.key], uc)
	p.n++
	p.mu.Unlock()
}

// expire closes uc if it is still idle and has been for the idle
// timeout (a timer that fired just before a get and a put may find it
// in use, or idle again since).
func (p *pool) expire(uc *upConn) {
	p.mu.Lock()
	list := p.idle[uc.key]
	i := -1
	for j, c := range list {
		if c == uc {
			i = j
			break
		}
	}
	if i < 0 || time.Since(uc.idleSince) < upstreamIdleTimeout*9/10 {
		p.mu.Unlock()
		return
	}
	p.idle[uc.key] = append(list[:i], list[i+1:]...)
	if len(p.idle[uc.key]) == 0 {
		delete(p.idle, uc.key)
	}
	p.n--
	p.mu.Unlock()
	uc.conn.Close()
}

// close closes every idle connection; connections in use are closed when
// their request ends instead of being put back.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle, p.n = map[poolKey][]*upConn{}, 0
	p.mu.Unlock()
	for _, list := range idle {
		for _, uc := range list {
			uc.timer.Stop()
			uc.conn.Close()
		}
	}
}

// pool returns the pool of one client policy of pol, for the requests pol
// decided: a new policy closes the idle connections of the previous one's
// pools, so that no connection is reused past a reload that might have
// revoked its destination.
func (p *Proxy) pool(pol *policy.Policy, clientPolicy string) *pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pol != p.poolPolicy {
		if p.shutdown || pol != p.Policy() {
			// Shutting down, or a request decided under the policy
			// before a reload, still in flight: its connection is not
			// kept.
			pl := newPool(p.tlsConfig())
			pl.closed = true
			return pl
		}
		for _, pl := range p.pools {
			pl.close()
		}
		p.pools = map[string]*pool{}
		p.poolPolicy = pol
	}
	pl := p.pools[clientPolicy]
	if pl == nil {
		pl = newPool(p.tlsConfig())
		if p.shutdown {
			pl.closed = true
			return pl
		}
		p.pools[clientPolicy] = pl
	}
	return pl
}

// CloseIdleConnections closes the kept-alive upstream connections of
// plain-HTTP requests that are not in use. Call it after swapping the
// policy: requests decided under the new one never reuse a connection
// dialled under the old one (each policy has pools of its own), and this
// closes the old ones now rather than at the next request.
func (p *Proxy) CloseIdleConnections() {
	p.mu.Lock()
	pools := p.pools
	p.pools, p.poolPolicy = map[string]*pool{}, nil
	p.mu.Unlock()
	for _, pl := range pools {
		pl.close()
	}
}

// tlsConfig is the configuration for https:// origins: the Proxy's, with
// verification forced on.
func (p *Proxy) tlsConfig() *tls.Config {
	tc := &tls.Config{}
	if p.TLSClientConfig != nil {
		tc = p.TLSClientConfig.Clone()
	}
	tc.InsecureSkipVerify = false
	tc.NextProtos = []string{"http/1.1"}
	return tc
}

// tlsHandshake does the TLS handshake with an https:// origin on raw,
// verifying its certificate for name, within tlsHandshakeTimeout; on
// failure it closes raw.
func tlsHandshake(ctx context.Context, raw net.Conn, base *tls.Config, name string) (net.Conn, error) {
	tc := base.Clone()
	tc.ServerName = name
	tlc := tls.Client(raw, tc)
	hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
	defer cancel()
	if err := tlc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tlc, nil
}

// dialUpstream dials a new connection for fw through the checking
// dialer, which decides on the address it dials, and for https:// does
// the TLS handshake, verifying the origin's certificate for its name.
func (p *Proxy) dialUpstream(ctx context.Context, pl *pool, fw *forward, key poolKey) (*upConn, error) {
	raw, dec, err := p.dial.Dial(ctx, "tcp", fw.req)
	if dec.Reason != "" {
		fw.dec = dec
	}
	if err != nil {
		return nil, err
	}
	conn := raw
	if key.scheme == "https" {
		if conn, err = tlsHandshake(ctx, raw, pl.tls, fw.req.Host); err != nil {
			return nil, err
		}
	}
	ip := dec.IP
	if ap, err := netip.ParseAddrPort(raw.RemoteAddr().String()); err == nil {
		ip = ap.Addr().Unmap()
	}
	oc := origin.NewConn(conn)
	return &upConn{conn: conn, raw: raw, oc: oc, br: oc.BR, bw: oc.BW, ip: ip, key: key, pool: pl}, nil
}
