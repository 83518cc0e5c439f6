package intercept_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/egress-proxy/egress/policy"
)

// cidrPolicy intercepts the test origin's address by a cidr rule with
// http: and denies api.vendor.test outright.
func cidrPolicy(port int) string {
	return fmt.Sprintf(`version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - cidr: 127.0.0.1/32
    ports: [%d]
    http:
      - paths: ["/**"]
deny:
  - host: api.vendor.test
`, port)
}

// A connection intercepted on its address (CONNECT to an IP under a
// cidr rule with http:) carries a ClientHello whose name is decided on
// that address before any certificate is made for it: a name the policy
// denies is refused (sni_mismatch) and never reaches the origin; a name
// allowed there, and no name at all (an IP literal, as Python sends),
// are served.
func TestSecurityANameInAClientHelloOnAnAddressInterceptedConnectionIsDecidedOnThatAddress(t *testing.T) {
	t.Run("a denied name is refused before a certificate is made", func(t *testing.T) {
		f := newFixture(t)
		f.load(t, cidrPolicy(f.tlsPort))
		tc, err := f.tunnel(t, "127.0.0.1", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "api.vendor.test"})
		if err == nil {
			io.WriteString(tc, "GET /v1/secret HTTP/1.1\r\nHost: api.vendor.test\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if f.origin.count() > 0 {
				t.Errorf("BYPASS: denied host api.vendor.test served through the cidr rule: %s %q", resp.Status, b)
			}
			t.Fatal("the handshake for a denied name succeeded")
		}
		e := f.logs.entryWith(t, string(policy.ReasonSNIMismatch))
		if e["host"] != "api.vendor.test" {
			t.Errorf("logged host %v, want api.vendor.test: %v", e["host"], e)
		}
		if hint, _ := e["hint"].(string); !strings.Contains(hint, "api.vendor.test") || !strings.Contains(hint, string(policy.ReasonDeniedByRule)) {
			t.Errorf("hint %q does not name the name and its own reason", hint)
		}
		if f.origin.count() != 0 {
			t.Error("the origin was reached")
		}
	})

	t.Run("a name whose requests another rule decides is refused", func(t *testing.T) {
		f := newFixture(t)
		f.load(t, strings.Replace(cidrPolicy(f.tlsPort), "allow:\n", "allow:\n  - host: other.test\n    http:\n      - paths: [\"/public/**\"]\n", 1))
		if _, err := f.tunnel(t, "127.0.0.1", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "other.test"}); err == nil {
			t.Fatal("other.test, whose requests its own rule decides, was served under the address's rule")
		}
		e := f.logs.entryWith(t, string(policy.ReasonSNIMismatch))
		if hint, _ := e["hint"].(string); !strings.Contains(hint, "CONNECT to other.test itself") {
			t.Errorf("hint %q", hint)
		}
	})

	t.Run("a name allowed on the address is served", func(t *testing.T) {
		f := newFixture(t)
		f.load(t, cidrPolicy(f.tlsPort))
		tc, err := f.tunnel(t, "127.0.0.1", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "other.test"})
		if err != nil {
			t.Fatalf("handshake for other.test, allowed on 127.0.0.1: %v", err)
		}
		if got := tc.ConnectionState().PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "other.test" {
			t.Errorf("certificate for %v, want other.test", got)
		}
		io.WriteString(tc, "GET /v1/x HTTP/1.1\r\nHost: other.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		// The origin's certificate is for api.vendor.test: what matters
		// is that egress decided the request and went to the origin.
		if resp.StatusCode == http.StatusForbidden {
			t.Fatalf("refused: %s %q", resp.Status, b)
		}
	})

	t.Run("no name gets a certificate for the address", func(t *testing.T) {
		f := newFixture(t)
		f.load(t, cidrPolicy(f.tlsPort))
		// crypto/tls sends no SNI for an IP literal (as Python does).
		tc, err := f.tunnel(t, "127.0.0.1", f.tlsPort, &tls.Config{RootCAs: f.caPool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("handshake without a server name: %v", err)
		}
		cert := tc.ConnectionState().PeerCertificates[0]
		if len(cert.IPAddresses) != 1 || cert.IPAddresses[0].String() != "127.0.0.1" {
			t.Errorf("certificate for %v %v, want 127.0.0.1", cert.DNSNames, cert.IPAddresses)
		}
		io.WriteString(tc, "GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusForbidden {
			t.Fatalf("refused: %s %q", resp.Status, b)
		}
	})
}
