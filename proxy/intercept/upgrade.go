package intercept

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/peek"
)

// Protocol upgrades (a WebSocket) on an intercepted connection: the
// upgrade request is decided like any request (its method, its path),
// gets the rule's inject: headers, and goes up with its Upgrade; if the
// origin answers 101 for the protocol asked, the client's connection and
// that origin connection become the tunnel whose slot the caller took
// (Conn.Tunnel), with the forward proxy's switch (origin.Switch). What
// the new protocol carries is not decided.

// upgradeOffer removes an h2c upgrade offer from req (origin.StripH2C:
// HTTP/2 frames would follow, whose requests egress would not decide)
// and returns the protocols req still asks to switch to, to be sent up:
// none for an HTTP/1.0 request (RFC 9110 §7.8), or when the connection
// has no tunnel slot to become (Conn.Tunnel nil). Call it before the
// hop-by-hop headers are dropped.
func (x *exchange) upgradeOffer(req *http.Request) []string {
	origin.StripH2C(req.Header)
	if x.c.Tunnel == nil || !req.ProtoAtLeast(1, 1) || !origin.IsUpgrade(req) {
		return nil
	}
	return req.Header.Values("Upgrade")
}

// offerUpgrade sets upgrade, what upgradeOffer returned, on req again
// after the hop-by-hop headers were dropped and inject: set: the origin
// client sends it with "Connection: Upgrade" (origin.WriteHead), and
// reads a 101 as a switch (origin.Conn.ReadResponse).
func offerUpgrade(req *http.Request, upgrade []string) {
	if upgrade != nil {
		req.Header["Upgrade"] = upgrade
		req.Header["Connection"] = []string{"Upgrade"}
	}
}

// switchProtocols ends the interception of the connection after the
// origin answered resp, a 101, to req, an allowed upgrade (decided d,
// started at start, injected the headers it names). A 101 to another
// protocol than asked is a 502 and ends the connection (fail closed).
// Otherwise the client's connection and the origin connection are
// handed to the caller's tunnel (origin.Switch): bounded by
// timeouts.tunnel_idle and half_close, revoked by a reload that refuses
// the request, drained on shutdown; the request's line is written when
// the tunnel ends, with its bytes. The origin connection is never put
// back in the pool. It returns false: no more requests are read.
func (x *exchange) switchProtocols(pol *policy.Policy, id string, d policy.Decision, req *http.Request, resp *http.Response, rr *peek.RequestReader, bw *bufio.Writer, injected []string, start time.Time) bool {
	url := URL("https", x.name, x.c.Request.Port, d.Path)
	target := x.name + ":" + strconv.Itoa(int(x.c.Request.Port))
	if err := origin.CheckSwitch(req, resp); err != nil {
		x.refuse(bw, "HTTP/1.1", false, failure(id, target, err))
		x.record(id, d, req.Method, url, injected, err)
		return false // end closes both
	}
	// What the client sent behind its request belongs to the new
	// protocol: it goes up first.
	var early []byte
	if br := rr.Buffered(); br.Buffered() > 0 {
		early, _ = br.Peek(br.Buffered())
	}
	t := x.c.Tunnel
	t.Entry = x.entry(id, d, req.Method, url, injected, nil)
	t.Began, t.Idle, t.HalfClose = start, pol.Timeouts.TunnelIdle, pol.Timeouts.HalfClose
	// A reload decides the request again (Tunnel.Revoke): a path no
	// longer allowed closes the tunnel.
	t.Request = x.c.Request
	t.Request.IP, t.Request.Method, t.Request.Path = x.up.IP, req.Method, d.Path
	if err := origin.Switch(t, x.tc, early, x.up.OC, resp, false); err != nil {
		e := t.Entry
		e.Err, e.BytesUp, e.BytesDown, e.Duration = err, t.Up, t.Down, time.Since(start)
		x.s.Events.Record(e)
		return false // end closes both
	}
	// The tunnel owns both connections now (and drains them).
	x.letGo()
	x.switched, x.up = true, nil
	return false
}

// NetConn is the client's connection under the replay: the tunnel reads
// TCP_INFO from it (timeouts.tunnel_idle) once a connection switched.
func (c *prefixConn) NetConn() net.Conn { return c.Conn }
