package origin

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/egress-proxy/egress/proxy/tunnel"
)

// ErrOtherProtocol is a 101 that switches to a protocol the request did
// not offer, or names none (RFC 9110 §7.8: a server must not switch to a
// protocol the client did not indicate): what would follow is not what
// was decided on, so the connection ends (a 502).
var ErrOtherProtocol error = badResponse("101 Switching Protocols to a protocol the request did not ask for")

// CheckSwitch reports whether resp, a 101 that ReadResponse returned for
// req, switches to what req asked for: its Upgrade names at least one
// protocol, and only protocols req's Upgrade offered (compared whole,
// version included, ignoring case). Otherwise it returns
// ErrOtherProtocol.
func CheckSwitch(req *http.Request, resp *http.Response) error {
	named := false
	for _, v := range resp.Header.Values("Upgrade") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			if !HeaderHasToken(req.Header, "Upgrade", p) {
				return fmt.Errorf("%w: %q", ErrOtherProtocol, p)
			}
			named = true
		}
	}
	if !named {
		return fmt.Errorf("%w: the answer names no protocol", ErrOtherProtocol)
	}
	return nil
}

// Switch completes an upgrade the origin accepted: resp is the 101 that
// ReadResponse returned on up. It writes the 101 to client (the origin's
// end-to-end headers by the one hop-by-hop rule, its Upgrade,
// "Connection: Upgrade", Via with via), then the bytes the origin sent
// behind it (in up's reader); sends up early, the client's bytes read
// behind its request; and starts t, the tunnel whose slot the caller
// took, between client and up's connection. t.Up and t.Down are set to
// the bytes relayed here; set t's Entry, Began, Request and timeouts
// before. It is the one switch of every path that reads requests one by
// one and hands a 101 to a tunnel: the forward proxy's upgrades and
// intercepted connections (the transparent gate leaves HTTP/1 on its
// own, its ends being pipes).
//
// On an error nothing was started: the caller closes both connections
// and logs it. From a nil error on, t owns both connections and its
// slot, and logs its line, with the bytes, when it ends. The switched
// connection belongs to no pool.
func Switch(t *tunnel.Tunnel, client net.Conn, early []byte, up *Conn, resp *http.Response, via bool) error {
	h := http.Header{}
	CopyHeader(h, resp.Header)
	h["Upgrade"] = resp.Header.Values("Upgrade")
	h.Set("Connection", "Upgrade")
	if via {
		h.Add("Via", Via(resp.ProtoMajor, resp.ProtoMinor))
	}
	var head strings.Builder
	head.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h.Write(&head)
	head.WriteString("\r\n")
	// Bytes either side sent right behind the handshake are in the
	// readers' buffers: they go first.
	var late []byte
	if n := up.BR.Buffered(); n > 0 {
		late, _ = up.BR.Peek(n)
	}
	t.Up, t.Down = 0, 0
	if _, err := io.WriteString(client, head.String()+string(late)); err != nil {
		return fmt.Errorf("write 101: %w", err)
	}
	t.Down = int64(len(late))
	if len(early) > 0 {
		m, err := up.Conn.Write(early)
		t.Up = int64(m)
		if err != nil {
			return fmt.Errorf("write early data: %w", err)
		}
	}
	t.Start(client, up.Conn)
	return nil
}
