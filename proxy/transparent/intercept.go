package transparent

import (
	"net"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/intercept"
	"github.com/egress-proxy/egress/proxy/peek"
)

// ReasonRequestsUnread: the destination has http: request rules but the
// connection is not TLS, and this listener does not read plain-HTTP
// requests for decision yet (the plain-HTTP gate will, with
// intercept.Decide); refused rather than passed undecided.
const ReasonRequestsUnread policy.Reason = "requests_undecided"

// intercept hands an allowed connection whose decision says Intercept
// to the interception data path: a TLS one is terminated there and each
// request decided; one that sent nothing yet too (crypto/tls reads its
// hello when it comes, and fails what is not TLS); anything else is
// refused (fail closed).
func (s *Server) intercept(c *conn, req policy.Request, dec, dialled policy.Decision, head []byte, up net.Conn) {
	dec.IP = dialled.IP
	if len(head) > 0 && !peek.TLS(head) {
		up.Close()
		dec.Verdict, dec.Audit, dec.Reason = policy.Deny, false, ReasonRequestsUnread
		dec.Hint = "the rule has http: request rules, which this listener decides over TLS only"
		c.deny(dec)
		return
	}
	is := s.Intercept
	if is == nil {
		is = &intercept.Server{Policy: s.Policy, Dialer: s.dial, Events: s.Events, Logger: s.Logger}
	}
	is.Serve(s.tunnels.Context(), intercept.Conn{Client: c.client, Early: head, Upstream: up, Request: req, Decision: dec, ID: c.entry.ID, ClientAddr: c.entry.Client})
}
