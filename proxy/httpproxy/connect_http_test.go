package httpproxy_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testwait"
)

// Plaintext HTTP inside a CONNECT tunnel (a CONNECT to port 80) is gated
// as on the transparent path: each request is read with net/http's
// reader and decided on its Host at the address dialled; a request for a
// host the policy refuses there ends the tunnel before it goes up, sent
// after the 200 or pipelined behind the CONNECT.
func TestConnectPlaintextHTTPIsGated(t *testing.T) {
	get := func(host string) string { return "GET /x HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	const last = "GET /x HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
	for _, tc := range []struct {
		name     string
		early    string // behind the CONNECT
		after    string // after the 200
		answered int    // requests answered by the origin; -1: any
	}{
		{"allowed hosts after the 200 are answered", "", get("origin.test") + last, 2},
		{"a refused host after the 200", "", get("denied.test"), 0},
		{"a refused host pipelined behind an allowed one", "", get("origin.test") + get("denied.test"), -1},
		{"a refused host pipelined behind the CONNECT", get("denied.test"), "", 0},
		{"a refused host with a bare LF before Host", "", "GET / HTTP/1.1\r\nX: a\nHost: denied.test\r\n\r\n", 0},
		{"a refused host after an ignored Upgrade", "", "GET / HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n" + get("denied.test"), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testPolicy)
			port := f.plainPort()
			c, br := f.dial()
			io.WriteString(c, "CONNECT origin.test:"+port+" HTTP/1.1\r\nHost: origin.test:"+port+"\r\n\r\n"+tc.early)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			io.WriteString(c, tc.after)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var b strings.Builder
			io.Copy(&b, bufio.NewReader(br))
			rest := b.String()
			if strings.Contains(rest, "host=denied.test") {
				t.Fatalf("the origin answered the refused host:\n%s", rest)
			}
			if n := strings.Count(rest, "origin host="); tc.answered >= 0 && n != tc.answered {
				t.Errorf("%d answers, want %d:\n%s", n, tc.answered, rest)
			}
			if tc.answered > 0 {
				return
			}
			testwait.Until(t, 5*time.Second, "a host_mismatch line", func() bool {
				return strings.Contains(f.logs.String(), `"reason":"host_mismatch"`)
			})
		})
	}
}
