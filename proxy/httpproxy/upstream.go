package httpproxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/origin"
)

// tlsHandshakeTimeout bounds the handshake with an https:// origin.
const tlsHandshakeTimeout = 10 * time.Second

// upConn is one upstream connection (origin's pooled connection): dialled
// through the checking dialer for one pool, used by one request at a time
// on the client connection's own goroutine, then kept for the next
// request to the same origin.
type upConn = origin.PoolConn[poolKey]

// pool is the set of idle upstream connections of one policy and one
// clients: entry (origin.Pools).
type pool = origin.Pool[poolKey]

// poolKey names an origin: connections are shared only between requests
// for the same scheme, name and port.
type poolKey struct {
	scheme, host string
	port         uint16
}

// pool returns the pool of one client policy of pol, for the requests pol
// decided: a new policy closes the idle connections of the previous one's
// pools, so that no connection is reused past a reload that might have
// revoked its destination.
func (p *Proxy) pool(pol *policy.Policy, clientPolicy string) *pool {
	return p.pools.For(pol, p.Policy(), clientPolicy)
}

// CloseIdleConnections closes the kept-alive upstream connections of
// plain-HTTP requests that are not in use. Call it after swapping the
// policy: requests decided under the new one never reuse a connection
// dialled under the old one (each policy has pools of its own), and this
// closes the old ones now rather than at the next request.
func (p *Proxy) CloseIdleConnections() {
	p.pools.CloseIdle()
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
		if conn, err = tlsHandshake(ctx, raw, p.tlsConfig(), fw.req.Host); err != nil {
			return nil, err
		}
	}
	ip := dec.IP
	if ap, err := netip.ParseAddrPort(raw.RemoteAddr().String()); err == nil {
		ip = ap.Addr().Unmap()
	}
	return origin.NewPoolConn(pl, key, origin.NewConn(conn), raw, ip), nil
}
