package httpproxy

import (
	"fmt"
	"net/http"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// isUpgrade reports whether r asks to switch protocols (RFC 9110 §7.8),
// as a WebSocket handshake does.
func isUpgrade(r *http.Request) bool { return origin.IsUpgrade(r) }

func headerHasToken(h http.Header, name, token string) bool {
	return origin.HeaderHasToken(h, name, token)
}

// serveUpgrade forwards a request that asks to switch protocols and, when
// the origin answers 101, makes the connection a tunnel (proxy/tunnel):
// it counts toward limits.max_tunnels, drains on shutdown, closes on
// timeouts.tunnel_idle, is revoked on reload and logs its bytes. The
// exchange is the origin client's (proxy/origin), as for every other
// request: the same header cap, 1xx loop, status checks and hop-by-hop
// rule. The name was decided by serveForward; the dial decides on the
// address.
func (p *Proxy) serveUpgrade(w http.ResponseWriter, r *http.Request, fw *forward, entry eventlog.Entry, pol *policy.Policy) {
	target := targetString(fw.req.Host, fw.req.Port)
	fail := func(dec policy.Decision, err error) {
		entry.Decision = dec
		if dec.Allowed() { // audit mode too: a denial let through that then failed
			entry.Err = err
			entry.Duration = time.Since(fw.start)
		}
		p.Events.Record(entry)
		failureFor(fw.id, target, dec, err).send(w, r)
	}
	t, err := p.tunnels.Acquire(tunnel.MaxTunnels(pol))
	if err != nil {
		fail(fw.dec, fmt.Errorf("%w: %w", errTooManyTunnels, err))
		return
	}
	defer t.Release() // unless Start took the slot over
	raw, dec, err := p.dial.Dial(r.Context(), "tcp", fw.req)
	if err != nil {
		fail(dec, err)
		return
	}
	up := raw
	if r.URL.Scheme == "https" {
		// Upgrades are HTTP/1.1's: tlsConfig offers http/1.1 alone.
		if up, err = tlsHandshake(r.Context(), raw, p.tlsConfig(), r.URL.Hostname()); err != nil {
			fail(dec, err)
			return
		}
	}

	via := pol.Listen.Via
	oc := origin.NewConn(up)
	if d := pol.Timeouts.Response; d > 0 {
		raw.SetDeadline(time.Now().Add(d))
	}
	origin.WriteHead(oc.BW, r, origin.Request{Via: via})
	if r.Body != nil && r.Body != http.NoBody {
		err = origin.WriteBody(oc.BW, r, r.Body)
	}
	if err == nil {
		err = oc.BW.Flush()
	}
	cw := &countingWriter{ResponseWriter: w}
	var resp *http.Response
	if err == nil {
		resp, err = oc.ReadResponse(r, func(code int, hdr http.Header) error {
			// 103 Early Hints and the like go to an HTTP/1.1 client
			// before the 101 (RFC 9110 §15.2); never a 100, which
			// net/http's server sends itself.
			if code == http.StatusContinue || !r.ProtoAtLeast(1, 1) {
				return nil
			}
			origin.CopyHeader(w.Header(), hdr)
			w.WriteHeader(code)
			clear(w.Header())
			return nil
		}, false)
	}
	if err != nil {
		up.Close()
		fail(dec, err)
		return
	}
	raw.SetDeadline(time.Time{})
	entry.Decision = dec

	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The origin declined to switch: its answer is an ordinary one,
		// copied as every other (hop-by-hop rule, flushing, trailers).
		err := origin.CopyResponse(cw, resp, via)
		resp.Body.Close()
		up.Close()
		entry.BytesDown, entry.Err, entry.Duration = cw.n, err, time.Since(fw.start)
		p.Events.Record(entry)
		if err != nil && cw.wroteHeader {
			panic(http.ErrAbortHandler) // a truncated answer, not a complete one
		}
		return
	}

	if err := origin.CheckSwitch(r, resp); err != nil {
		// A switch to what nobody decided on: a 502, nothing relayed.
		resp.Body.Close()
		up.Close()
		fail(dec, err)
		return
	}
	cc, cbr, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		entry.Err = fmt.Errorf("hijack: %w", err)
		p.Events.Record(entry)
		return
	}
	cc.SetDeadline(time.Time{})
	// Bytes the client sent right behind its request go up first.
	var early []byte
	if n := cbr.Reader.Buffered(); n > 0 {
		early, _ = cbr.Reader.Peek(n)
	}
	t.Entry, t.Began, t.Idle, t.HalfClose = entry, fw.start, pol.Timeouts.TunnelIdle, pol.Timeouts.HalfClose
	t.Request = fw.req
	t.Request.IP = dec.IP
	if err := origin.Switch(t, cc, early, oc, resp, via); err != nil {
		p.endSetup(cc, up, entry, fw.start, t.Up, err)
	}
}
