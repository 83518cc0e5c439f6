package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// isUpgrade reports whether r asks to switch protocols (RFC 9110 §7.8),
// as a WebSocket handshake does.
func isUpgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for s := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(s), token) {
				return true
			}
		}
	}
	return false
}

// hopHeaders are dropped from a forwarded upgrade request: they are
// about the client's connection to egress (RFC 9110 §7.6.1), or, for
// Proxy-*, meant for egress. Connection and Upgrade are set again.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// serveUpgrade forwards a request that asks to switch protocols and, when
// the origin answers 101, makes the connection a tunnel (proxy/tunnel):
// it counts toward limits.max_tunnels, drains on shutdown, closes on
// timeouts.tunnel_idle, is revoked on reload and logs its bytes. goproxy
// would hijack it itself and copy on two goroutines outside all of that.
// The name was decided by serveForward; the dial decides on the address.
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

	out := r.Clone(r.Context())
	out.RequestURI, out.Host = "", r.URL.Host // origin-form, the URI's host (RFC 9112 §3.2.2)
	upgrade := r.Header.Values("Upgrade")
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Header["Upgrade"] = upgrade
	out.Header.Set("Connection", "Upgrade")
	respTimeout := pol.Timeouts.Response
	if respTimeout > 0 {
		raw.SetDeadline(time.Now().Add(respTimeout))
	}
	br := bufio.NewReader(up)
	var resp *http.Response
	if err = out.Write(up); err == nil {
		resp, err = http.ReadResponse(br, out)
	}
	if err != nil {
		up.Close()
		fail(dec, err)
		return
	}
	raw.SetDeadline(time.Time{})
	entry.Decision = dec

	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The origin declined to switch: its answer is an ordinary one.
		for _, h := range hopHeaders {
			resp.Header.Del(h)
		}
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		n, err := io.Copy(w, resp.Body)
		resp.Body.Close()
		up.Close()
		entry.BytesDown, entry.Err, entry.Duration = n, err, time.Since(fw.start)
		p.Events.Record(entry)
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
	var head strings.Builder
	head.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(&head)
	head.WriteString("\r\n")
	// Bytes either side sent right behind the handshake are in the
	// readers' buffers: they go first.
	var early, late []byte
	if n := cbr.Reader.Buffered(); n > 0 {
		early, _ = cbr.Reader.Peek(n)
	}
	if n := br.Buffered(); n > 0 {
		late, _ = br.Peek(n)
	}
	if _, err := io.WriteString(cc, head.String()+string(late)); err != nil {
		p.endSetup(cc, up, entry, fw.start, 0, fmt.Errorf("write 101: %w", err))
		return
	}
	t.Down = int64(len(late))
	if len(early) > 0 {
		m, err := up.Write(early)
		t.Up = int64(m)
		if err != nil {
			p.endSetup(cc, up, entry, fw.start, t.Up, fmt.Errorf("write early data: %w", err))
			return
		}
	}
	t.Entry, t.Began, t.Idle = entry, fw.start, pol.Timeouts.TunnelIdle
	t.Request = fw.req
	t.Request.IP = dec.IP
	t.Start(cc, up)
}
