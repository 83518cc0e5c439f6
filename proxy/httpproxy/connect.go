package httpproxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// serveConnect handles CONNECT host:port (HTTP/1.1 or HTTP/1.0).
//
// CONNECT is handled here rather than by goproxy's handleHttps because
// goproxy cannot give the answers egress must give: its refusals are a bare
// "502 Bad Gateway" written on the hijacked connection (no 403, no
// X-Egress-* headers, no body), it cannot tell 502 from 503 from 504, it
// dials through ConnectDial (which follows HTTPS_PROXY by default), and its
// copy loop neither counts bytes nor lets Shutdown drain open tunnels. Once
// dialled, the tunnel is proxy/tunnel's, like every other path's.
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
	// The slot counts while dialling; Start hands it to the tunnel, and
	// Release gives it back on every other way out, panics included.
	t, err := p.tunnels.Acquire(tunnel.MaxTunnels(pol))
	if err != nil {
		answer(dec, fmt.Errorf("%w: %w", errTooManyTunnels, err))
		return
	}
	defer t.Release()
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
	proto := "HTTP/1.1"
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		proto = "HTTP/1.0" // Python's urllib sends CONNECT ... HTTP/1.0
	}
	// A client may send its first bytes (a TLS ClientHello) right behind
	// the CONNECT; net/http has read them into its buffer.
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
	}
	if _, err := io.WriteString(cc, proto+" 200 Connection established\r\n\r\n"); err != nil {
		p.endSetup(cc, up, entry, rq.start, 0, fmt.Errorf("write 200: %w", err))
		return
	}
	if len(early) > 0 {
		m, err := up.Write(early)
		t.Up = int64(m)
		if err != nil {
			p.endSetup(cc, up, entry, rq.start, t.Up, fmt.Errorf("write early data: %w", err))
			return
		}
	}
	t.Entry, t.Began, t.Idle = entry, rq.start, pol.Timeouts.TunnelIdle
	t.Request = rq.req
	t.Request.IP = dec.IP
	// This handler returns, so the connection's server goroutine (and its
	// stack) goes away; an idle tunnel waits on the poller.
	t.Start(cc, up)
}

// endSetup closes a tunnel that failed between the hijack and its start
// and records its line.
func (p *Proxy) endSetup(cc, up net.Conn, entry eventlog.Entry, start time.Time, bytesUp int64, err error) {
	cc.Close()
	up.Close()
	entry.Err, entry.BytesUp, entry.Duration = err, bytesUp, time.Since(start)
	p.Events.Record(entry)
}
