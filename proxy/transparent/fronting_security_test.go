//go:build linux

package transparent

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/answertest"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/peek"
)

// Every request of a kept-alive plain-HTTP connection is decided on its
// own Host: a second request may not name another host on the strength of
// the first one's decision (domain fronting through a shared address).
func TestSecurityEveryRequestDecided(t *testing.T) {
	f := newFixture(t)
	webPort := portOf(f.web.URL)
	get := func(br *bufio.Reader, c interface{ Write([]byte) (int, error) }, host string) (*http.Response, string, error) {
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s:%s\r\n\r\n", host, webPort)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), nil
	}

	t.Run("the same host again is forwarded", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.1:"+webPort)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		for i := range 3 {
			if _, body, err := get(br, c, "web.test"); err != nil || body != "hello web.test:"+webPort {
				t.Fatalf("request %d: %q, %v", i, body, err)
			}
		}
		c.Close()
		if e := f.rec.next(t); e.Decision.Host != "web.test" || !e.Decision.Allowed() {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("requests with bodies, chunked or not, keep the stream in step", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.1:"+webPort)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: web.test:%s\r\nContent-Length: 5\r\n\r\nhello", webPort)
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: web.test:%s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", webPort)
		for i := range 2 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "hello web.test:"+webPort {
				t.Fatalf("response %d: %q", i, b)
			}
		}
		if _, body, err := get(br, c, "web.test"); err != nil || body != "hello web.test:"+webPort {
			t.Fatalf("after the bodies: %q, %v", body, err)
		}
		c.Close()
		f.rec.next(t)
	})

	t.Run("a later request that cannot be read is answered with egress's 400 and ends the connection, and the line says why", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.1:"+webPort)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		if _, body, err := get(br, c, "web.test"); err != nil || body != "hello web.test:"+webPort {
			t.Fatalf("first request: %q, %v", body, err)
		}
		fmt.Fprintf(c, "NOT HTTP AT ALL\r\n\r\n")
		id := answertest.Unreadable(t, br, http.StatusBadRequest)
		if e := f.rec.next(t); e.ID != id || e.Decision.Reason != policy.ReasonHTTPUnreadable ||
			!strings.Contains(e.Decision.Hint, peek.ErrUnreadableRequest.Error()) {
			t.Fatalf("entry = %+v, want the refusal of connection %s, its hint saying why", e, id)
		}
	})

	for _, host := range []string{"other.test", "evil.test"} {
		t.Run("a later request for "+host+" is answered with egress's 403 and ends the connection, before it goes up", func(t *testing.T) {
			c := f.ns.Dial(t, "127.0.0.1:"+webPort)
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			if _, body, err := get(br, c, "web.test"); err != nil || body != "hello web.test:"+webPort {
				t.Fatalf("first request: %q, %v", body, err)
			}
			reason := map[string]policy.Reason{"other.test": policy.ReasonNoRuleMatched, "evil.test": policy.ReasonDeniedByRule}[host]
			fmt.Fprintf(c, "GET /v1/admin?token=s3cret HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			id := answertest.Refusal(t, br, "GET", "GET http://"+host+":"+webPort+"/v1/admin", string(reason))
			e := f.rec.next(t)
			if !e.Decision.Denied() || e.Decision.Host != host || e.ID != id || e.Method != "GET" || e.URL != "http://"+host+":"+webPort+"/v1/admin" {
				t.Fatalf("entry = %+v, want a denial of %s, id %s", e, host, id)
			}
		})
	}
}
