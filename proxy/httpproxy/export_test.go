package httpproxy

import "time"

// SetUpstreamIdleTimeout shortens the idle timeout of pooled upstream
// connections for a test; the returned func restores it.
func SetUpstreamIdleTimeout(d time.Duration) func() {
	old := upstreamIdleTimeout
	upstreamIdleTimeout = d
	return func() { upstreamIdleTimeout = old }
}
