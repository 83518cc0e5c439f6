package transparent

import (
	"net"
	"net/http"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/peek"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// intercept hands an allowed connection whose decision says Intercept
// to the interception data path: a TLS one is terminated there and each
// request decided; one that sent nothing yet too (crypto/tls reads its
// hello when it comes, and fails what is not TLS); anything else but
// plain HTTP (decided by the gate with requestRule) is refused (fail
// closed). The connection's tunnel slot t goes with it: an upgrade the
// origin accepts becomes that tunnel.
func (s *Server) intercept(c *conn, t *tunnel.Tunnel, req policy.Request, dec, dialled policy.Decision, head []byte, up net.Conn) {
	dec.IP = dialled.IP
	if len(head) > 0 && !peek.TLS(head) {
		up.Close()
		dec.Verdict, dec.Audit, dec.Reason = policy.Deny, false, policy.ReasonRequestsUndecided
		dec.Hint = "the rule has http: request rules: egress decides requests in TLS or HTTP/1, and this is neither"
		c.deny(dec)
		return
	}
	is := s.Intercept
	if is == nil {
		is = &intercept.Server{Policy: s.Policy, Dialer: s.dial, Events: s.Events, Logger: s.Logger}
	}
	// The connection and its slot go to the interception: once it waits
	// for a request (on a small goroutine of its own) this one returns,
	// and its stack goes away (issue 20: memory per idle intercepted
	// connection).
	is.Start(s.tunnels.Context(), intercept.Conn{Client: c.client, Early: head, Upstream: up, Request: req, Decision: dec, ID: c.entry.ID, ClientAddr: c.entry.Client, Tunnel: t.Hand()}, nil)
}

// requestRule decides r, a plain-HTTP request on a connection to an
// intercepted destination (dec): intercept.DecidePlain.
func requestRule(pol *policy.Policy, req policy.Request, dec policy.Decision, r *http.Request) *policy.Decision {
	return intercept.DecidePlain(pol, req, dec, r)
}
