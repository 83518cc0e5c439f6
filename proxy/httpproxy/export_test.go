package httpproxy

import (
	"time"

	"github.com/egress-proxy/egress/proxy/origin"
)

// SetUpstreamIdleTimeout shortens the idle timeout of pooled upstream
// connections for a test; the returned func restores it.
func SetUpstreamIdleTimeout(d time.Duration) func() {
	old := origin.PoolIdleTimeout
	origin.PoolIdleTimeout = d
	return func() { origin.PoolIdleTimeout = old }
}

// SetFreshIdle sets how long a pooled connection is reused without a look
// for a test; the returned func restores it.
func SetFreshIdle(d time.Duration) func() {
	old := origin.FreshIdle
	origin.FreshIdle = d
	return func() { origin.FreshIdle = old }
}

// Pending is the number of connections accepted and not yet handed to
// the Server or set up as a tunnel, and of the Accept in progress (a
// connection is counted from before Accept returns it).
func (p *Proxy) Pending() int { return p.pending.N() }
