package transparent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// Held keeps the upstream connections dialled while their client's SYN
// was held (see Server.Prepare), until the listener accepts the client's
// connection and takes its upstream. Safe for concurrent use; the zero
// value is ready.
type Held struct {
	mu    sync.Mutex
	conns map[heldKey]net.Conn
}

type heldKey struct{ client, dst netip.AddrPort }

// heldFor is how long an upstream waits for its client's connection to be
// accepted: the SYN was let through when it was stored, so the accept
// follows at once unless the client has gone.
const heldFor = 30 * time.Second

func (h *Held) put(client, dst netip.AddrPort, c net.Conn) {
	k := heldKey{unmapPort(client), unmapPort(dst)}
	h.mu.Lock()
	if h.conns == nil {
		h.conns = map[heldKey]net.Conn{}
	}
	if old := h.conns[k]; old != nil {
		old.Close()
	}
	h.conns[k] = c
	h.mu.Unlock()
	time.AfterFunc(heldFor, func() {
		if h.take(client, dst, c) != nil {
			c.Close()
		}
	})
}

// take removes and returns the upstream held for client and dst (only
// want, when not nil), or nil.
func (h *Held) take(client, dst netip.AddrPort, want net.Conn) net.Conn {
	if h == nil {
		return nil
	}
	k := heldKey{unmapPort(client), unmapPort(dst)}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conns[k]
	if c == nil || want != nil && c != want {
		return nil
	}
	delete(h.conns, k)
	return c
}

func unmapPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
}

// Outcome is how a prepared connection's SYN should be answered.
type Outcome int

const (
	// Pass: let the SYN through now; the listener decides and dials as
	// it would without a hold (the connection carries no decision yet,
	// or nothing was dialled).
	Pass Outcome = iota
	// Connected: the upstream is connected and held for the listener.
	Connected
	// Refused: the destination refused (ECONNREFUSED).
	Refused
	// HostUnreachable: EHOSTUNREACH.
	HostUnreachable
	// NetUnreachable: ENETUNREACH, or no way to the destination's family.
	NetUnreachable
	// Silent: the destination never answered within timeouts.dial; the
	// SYN is dropped, so the client's own timeout applies.
	Silent
)

// Prepare is called while the SYN of a connection from client to dst is
// held, before the listener sees it: if the connection is allowed on its
// address (DecideConnect), it dials dst now and keeps the connection in
// Held, for the listener to use once it has read the name (only the TCP
// handshake goes up before that: no byte of the client's). The outcome
// says how to answer the SYN, so that the client's connect() ends as it
// would without egress. Without Held, or when the address alone does not
// allow the connection, it is Pass.
func (s *Server) Prepare(ctx context.Context, client, dst netip.AddrPort) Outcome {
	s.init()
	if s.Held == nil {
		return Pass
	}
	client, dst = unmapPort(client), unmapPort(dst)
	req, d, ok := s.decide(s.Policy(), "", dst, client.Addr())
	if !ok || !d.Allowed() {
		return Pass
	}
	start := time.Now()
	up, dd, err := s.dial.Dial(ctx, "tcp", req)
	if err != nil {
		o := outcome(err)
		if o != Pass {
			// The client sees the destination's answer at connect();
			// the log line says it was egress's dial that got it.
			e := eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoTCP, Client: client, Decision: dd, Err: err, Duration: time.Since(start)}
			if !e.Decision.Allowed() {
				e.Decision = d
			}
			s.Events.Record(e)
		}
		return o
	}
	s.Held.put(client, dst, up)
	return Connected
}

// outcome maps a dial error to the answer a client would have had.
func outcome(err error) Outcome {
	var de *dialer.DeniedError
	var ne net.Error
	switch {
	case errors.As(err, &de):
		return Pass // the listener refuses it, logged as usual
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.EHOSTUNREACH):
		return HostUnreachable
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EAFNOSUPPORT):
		return NetUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return Silent
	}
	return Pass
}

// takeHeld returns the upstream Prepare dialled for this connection, or
// nil, for the listener to dial as usual (see useConnected).
func (s *Server) takeHeld(client, dst netip.AddrPort) net.Conn {
	return s.Held.take(client, dst, nil)
}

// useConnected decides req as the dialer would, for an upstream already
// connected to req's address (held for a held SYN, or dialled on the
// address before a late client named anything): it is that connection
// when allowed, and closed when not.
func (s *Server) useConnected(pol *policy.Policy, req policy.Request, up net.Conn) (net.Conn, policy.Decision, error) {
	d := pol.Decide(req)
	if !d.Allowed() {
		up.Close()
		return nil, d, &dialer.DeniedError{Decision: d}
	}
	return up, d, nil
}
