package intercept_test

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/tlstest"
	"github.com/egress-proxy/egress/policy"
)

// ipPolicy intercepts the loopback range on the origins' port by a cidr
// rule with http:.
const ipPolicy = `version: 1
default: deny
tls:
  ca_cert: ca.crt
  ca_key: ca.key
allow:
  - cidr: 127.0.0.0/8
    ports: [%[1]d]
    http:
      - paths: ["/**"]
`

// waitMismatch waits for the line of a ClientHello for sni refused as
// not the connection's.
func (f *poolFixture) waitMismatch(t *testing.T, sni string) {
	t.Helper()
	waitFor(t, "the sni_mismatch line for "+sni, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, e := range f.entries {
			if e.Decision.Reason == policy.ReasonSNIMismatch && strings.Contains(e.Decision.Hint, sni) {
				return true
			}
		}
		return false
	})
}

func TestAnAddressAsServerNameIsTheConnectionsAddressOrRefused(t *testing.T) {
	for _, tc := range []struct {
		name, sni string
		ok        bool
	}{
		{"the address the connection was decided on is accepted", "127.0.0.1", true},
		{"another address is refused as sni_mismatch", "127.0.0.2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPoolFixture(t)
			f.loadText(t, fmt.Sprintf(ipPolicy, f.port))
			c, resp := f.connect(t, "127.0.0.1")
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %s", resp.Status)
			}
			c.Write(tlstest.HelloNaming(t, tc.sni))
			first := make([]byte, 1)
			if _, err := io.ReadFull(c, first); err != nil && tc.ok {
				t.Fatalf("no answer to a ClientHello for %s: %v", tc.sni, err)
			}
			// A handshake record (the ServerHello) once a leaf is made,
			// an alert or nothing when the hello is refused.
			if got := first[0] == 22; got != tc.ok {
				t.Fatalf("ClientHello for %s on a connection to 127.0.0.1: first byte of the answer %#x, want a handshake record: %v", tc.sni, first[0], tc.ok)
			}
			c.Close()
			if tc.ok {
				return
			}
			f.waitMismatch(t, tc.sni)
		})
	}
}

func TestOpenSSLWithAnAddressAsServerName(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed: ", err)
	}
	for _, tc := range []struct {
		name, sni string
		ok        bool
	}{
		{"the address the connection was decided on gets its answer", "127.0.0.1", true},
		{"another address is refused as sni_mismatch", "127.0.0.2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newPoolFixture(t)
			f.loadText(t, fmt.Sprintf(ipPolicy, f.port))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "openssl", "s_client", "-quiet", "-proxy", f.proxy,
				"-connect", fmt.Sprintf("127.0.0.1:%d", f.port), "-servername", tc.sni,
				"-CAfile", filepath.Join(f.dir, "ca.crt"), "-verify_return_error", "-verify_ip", "127.0.0.1")
			cmd.Stdin = strings.NewReader(fmt.Sprintf("GET /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", f.port))
			out, _ := cmd.CombinedOutput()
			want := fmt.Sprintf("127.0.0.1:%d saw /x", f.port)
			if got := strings.Contains(string(out), want); got != tc.ok {
				t.Fatalf("openssl s_client -servername %s: answered %v, want %v:\n%s", tc.sni, got, tc.ok, out)
			}
			if tc.ok {
				return
			}
			f.waitMismatch(t, tc.sni)
		})
	}
}
