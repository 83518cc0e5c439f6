package intercept

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/egress-proxy/egress/policy"
)

// handshake terminates the client's TLS: the certificate is for the
// decided name, and the ClientHello must name it (or nothing).
func (x *exchange) handshake() bool {
	d := x.c.Decision
	x.name = PresentedName(d)
	if x.s.CA != nil {
		x.ca = x.s.CA()
	}
	if x.ca == nil {
		d.Verdict, d.Audit, d.Reason = policy.Deny, false, policy.ReasonNoCA
		d.Hint = "the policy has http: request rules for this destination but egress has no CA: set tls.ca_cert and tls.ca_key (egress ca init DIR)"
		x.record(x.c.ID, d, "", "", nil, errors.New("no interception CA loaded"))
		return false
	}
	x.pc = &prefixConn{Conn: x.c.Client, early: x.c.Early, x: x}
	x.c.Early = nil // the prefixConn's now, dropped once read
	x.tc = tls.Server(x.pc, x.s.tlsConfig())
	x.tc.SetDeadline(time.Now().Add(DefaultHandshakeTimeout))
	err := x.tc.Handshake()
	x.tc.SetDeadline(time.Time{})
	alert, alerted := x.pc.plaintextAlert()
	x.pc.handshaken, x.pc.tail = true, nil
	switch {
	case x.refused != nil:
		x.record(x.c.ID, *x.refused, "", "", nil, nil)
		return false
	case err != nil:
		r := d
		r.Reason = policy.ReasonClientTLSFailed
		if alerted && certificateAlert(alert) {
			err = fmt.Errorf("client refused egress's certificate: TLS alert %s (%d)", alertNames[alert], alert)
			r.Reason = policy.ReasonClientRejectedCA
			r.Hint = trustHint
		} else if rejectedCertificate(err) {
			r.Reason = policy.ReasonClientRejectedCA
			r.Hint = trustHint
		}
		if r.Reason != policy.ReasonClientRejectedCA || !strings.HasPrefix(err.Error(), "client refused") {
			err = fmt.Errorf("client TLS handshake: %w", err)
		}
		x.record(x.c.ID, r, "", "", nil, err)
		return false
	}
	return true
}

// tlsConfig is the server's one TLS configuration for clients: what is
// the connection's (its name, CA, refusal) is found through
// ClientHelloInfo.Conn, the connection's prefixConn, so that a
// connection keeps no configuration of its own.
//
// Session tickets are off: a resumed session skips the certificate, so
// it would outlive the leaf it was made with and a reload of the CA (and
// a configuration per connection, as before, had its own ticket keys:
// the ticket crypto/tls sends after each TLS 1.3 handshake was work and
// bytes for a session that could never resume).
//
// The leaf is Ed25519 for a client that accepts one, P-256 otherwise
// (certs.CA.LeafFor): an Ed25519 signature, made once per handshake,
// costs egress less than a P-256 one.
func (s *Server) tlsConfig() *tls.Config {
	s.tlsOnce.Do(func() {
		s.tlsServer = &tls.Config{
			MinVersion:             tls.VersionTLS12,
			NextProtos:             []string{"http/1.1"},
			SessionTicketsDisabled: true,
			GetConfigForClient:     checkHello,
			GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				x, err := exchangeOf(h)
				if err != nil {
					return nil, err
				}
				return x.ca.LeafFor(h, x.name)
			},
		}
	})
	return s.tlsServer
}

// exchangeOf is the connection a ClientHello came on (tlsConfig).
func exchangeOf(h *tls.ClientHelloInfo) (*exchange, error) {
	if pc, ok := h.Conn.(*prefixConn); ok && pc.x != nil {
		return pc.x, nil
	}
	return nil, errors.New("a handshake on a connection that is no intercepted one")
}

// checkHello checks the client's ClientHello against its connection's
// decision before any certificate is made: the server name must be the
// decided one (or, decided on an address, one the policy allows there),
// and the client must speak HTTP/1.1. A refusal is the exchange's.
func checkHello(h *tls.ClientHelloInfo) (*tls.Config, error) {
	x, err := exchangeOf(h)
	if err != nil {
		return nil, err
	}
	d := x.c.Decision
	if sni := h.ServerName; sni != "" {
		n, ip, err := policy.NormalizeHost(sni)
		switch {
		case err == nil && n == "":
			// An address as the server name: RFC 6066 §3 forbids
			// it, and openssl s_client -servername IP and some
			// clients send it all the same. It is the address the
			// connection was decided on (a cidr rule), whose
			// certificate names it, or it is refused below.
			if d.Host == "" && ip.Unmap() == d.IP.Unmap() {
				n = x.name
			}
		case err == nil && d.Host == "":
			// Decided on the address (a cidr rule): the name is
			// decided on that address as a CONNECT tunnel's is,
			// before any certificate is made for it.
			if nd, ok := NameOnAddress(x.s.policy(), x.c.Request, d, sni); !ok {
				nd.Hint = fmt.Sprintf("the connection to %s carries a TLS ClientHello for %s: %s", d.IP, sni, nd.Hint)
				x.refused = &nd
				return nil, errors.New("server name refused on the connection's address")
			}
			// The certificate names what the client asked for,
			// and its requests must name it too.
			x.name = n
		}
		if err != nil || n != x.name {
			r := d
			r.Verdict, r.Audit, r.Rule, r.Reason = policy.Deny, false, nil, policy.ReasonSNIMismatch
			r.Hint = fmt.Sprintf("the connection to %s carries a TLS ClientHello for %s; egress presents a certificate for %s only", x.name, sni, x.name)
			x.refused = &r
			return nil, errors.New("server name is not the connection's")
		}
	}
	if len(h.SupportedProtos) > 0 && !contains(h.SupportedProtos, "http/1.1") {
		r := d
		r.Verdict, r.Audit, r.Reason = policy.Deny, false, policy.ReasonHTTP2Only
		r.Hint = "the client offers " + strings.Join(h.SupportedProtos, ", ") + " only; hosts with http: rules are intercepted over HTTP/1.1: let the client use HTTP/1.1, or drop http: to keep the host a tunnel"
		x.refused = &r
		return nil, errors.New("client does not speak http/1.1")
	}
	return nil, nil
}

// NameOnAddress decides name, the server name of a TLS ClientHello on a
// connection opened for req and allowed by dec, on the address dialled
// (dec.IP): the one check of a ClientHello's name against its connection,
// for CONNECT tunnels (proxy/httpproxy) and connections intercepted on an
// address (a cidr rule with http:). The name passes when it is the
// connection's, or when the policy allows it on that address and its
// requests are not decided by another rule's http: (they would go
// undecided, or be decided by the address's rule). Otherwise it returns
// the refusal (policy.ReasonSNIMismatch, the name's own reason in its
// hint) and false. A name that is no host name is refused. An address as
// the name (RFC 6066 §3 forbids it; openssl s_client -servername IP
// sends it) passes when it is the address dialled, and is refused
// otherwise: a server that routes by server name must not be sent to an
// address the connection was not decided on.
func NameOnAddress(pol *policy.Policy, req policy.Request, dec policy.Decision, name string) (policy.Decision, bool) {
	n, ip, err := policy.NormalizeHost(name)
	if err == nil && n == "" {
		if ip.Unmap() == dec.IP.Unmap() {
			return dec, true
		}
		d := dec
		d.Verdict, d.Audit, d.Rule, d.Reason = policy.Deny, false, nil, policy.ReasonSNIMismatch
		d.Hint = fmt.Sprintf("the ClientHello names the address %s; the connection is to %s", ip, dec.IP)
		return d, false
	}
	if err == nil && n == dec.Host {
		return dec, true
	}
	d := pol.Decide(policy.Request{Host: name, IP: dec.IP, Port: req.Port, Client: req.Client, User: req.User})
	if d.Allowed() && err == nil && (!d.Intercept || dec.Intercept && d.Rule == dec.Rule) {
		return d, true
	}
	why := d.Reason
	d.Verdict, d.Audit, d.Reason = policy.Deny, false, policy.ReasonSNIMismatch
	if d.Host == "" {
		d.Host = name
	}
	d.Hint = fmt.Sprintf("the policy refuses %s there (%s)", name, why)
	if d.Intercept {
		// Its requests are decided one by one (http:): a connection
		// opened for another destination must not carry them.
		d.Hint = fmt.Sprintf("egress decides the requests of %s (http:): CONNECT to %s itself", name, name)
	}
	return d, false
}

// rejectedCertificate reports whether a handshake failed on the client's
// alert refusing egress's certificate. crypto/tls reports a received
// alert as a net.OpError "remote error" around an unexported alert type,
// so the alert is told by its text (RFC 8446 §6.2 names).
func rejectedCertificate(err error) bool {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "remote error" {
		return false
	}
	s := oe.Err.Error()
	for _, a := range []string{"unknown certificate authority", "bad certificate", "certificate unknown", "unsupported certificate", "certificate expired", "access denied", "decrypt error"} {
		if strings.Contains(s, a) {
			return true
		}
	}
	return false
}

// alertNames are the TLS alerts (RFC 8446 §6.2) that say the client
// refused the server's certificate.
var alertNames = map[byte]string{
	42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
	46: "certificate_unknown", 48: "unknown_ca", 49: "access_denied", 51: "decrypt_error",
}

func certificateAlert(a byte) bool { _, ok := alertNames[a]; return ok }

// prefixConn is what the client's tls.Conn reads: it replays early
// before reading from Conn, keeps the tail of what it read last during
// the handshake (plaintextAlert), and leads to its exchange (tlsConfig).
type prefixConn struct {
	net.Conn
	x          *exchange
	early      []byte
	tail       []byte
	handshaken bool
	one        [1]byte // the byte await read
	closed     bool    // await read the end of the stream
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(b, c.early)
		c.early = c.early[n:]
		if len(c.early) == 0 {
			c.early = nil // the buffer it was read into goes with it
		}
		return n, nil
	}
	n, err := c.Conn.Read(b)
	if n > 0 && !c.handshaken {
		c.tail = append(c.tail[:0], b[max(0, n-16):n]...)
	}
	return n, err
}

// await waits on the socket itself, until its read deadline (the
// caller's: idle), for the client's next byte, which the next Read then
// returns first; false when the client closed, or sent nothing in time.
// It is the wait of an idle connection: not through crypto/tls, whose
// reads go deep (serve).
func (c *prefixConn) await() bool {
	n, err := c.Conn.Read(c.one[:])
	if n == 0 {
		c.closed = errors.Is(err, io.EOF)
		return false
	}
	c.early = c.one[:n]
	return true
}

// plaintextAlert reports the fatal alert a client sent unencrypted as the
// last thing it read. A TLS 1.3 client that refuses the server's
// certificate has not switched its write keys yet (OpenSSL, hence curl
// and Python), so its alert arrives in plaintext where crypto/tls expects
// an encrypted record and reports "bad record MAC" instead of the alert.
func (c *prefixConn) plaintextAlert() (byte, bool) {
	t := c.tail
	// An alert record: type 21, version 3.x, length 2, level fatal (2).
	if len(t) < 7 {
		return 0, false
	}
	r := t[len(t)-7:]
	if r[0] == 21 && r[1] == 3 && r[3] == 0 && r[4] == 2 && r[5] == 2 {
		return r[6], true
	}
	return 0, false
}

// CloseWrite half-closes the client's connection, when it can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
