package httpproxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Issue 19's reproductions: the forward and upgrade paths share one
// origin client (proxy/origin), so each misbehaving origin gets the same
// answer on both.

// A status code net/http's server cannot write (099) is a 502 naming it,
// not a panic and a dropped connection.
func TestStatusOutsideRangeIs502(t *testing.T) {
	f := newFixture(t, testPolicy)
	for _, tc := range []struct{ name, status, req string }{
		{"099 to a GET", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", ""},
		{"099 to an upgrade", "HTTP/1.1 099 Odd\r\n\r\n", "Connection: Upgrade\r\nUpgrade: websocket\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := rawOrigin(t, func(c net.Conn, _ *bufio.Reader) { io.WriteString(c, tc.status) })
			c, br := f.dial()
			io.WriteString(c, "GET "+url+"/ HTTP/1.1\r\nHost: x\r\n"+tc.req+"\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer (a panic drops the connection): %v", err)
			}
			if resp.StatusCode != 502 || !strings.Contains(resp.Status, "bad response") {
				t.Errorf("got %q, want a 502 naming a bad response", resp.Status)
			}
		})
	}
}

// An upgrade answered 103 Early Hints then 101: the client gets the 103,
// then the 101 and the tunnel, nothing made up in between.
func TestUpgrade1xxBefore101(t *testing.T) {
	f := newFixture(t, testPolicy)
	url := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi")
		io.Copy(c, br)
	})
	c, br := f.dial()
	io.WriteString(c, "GET "+url+"/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	tp := bufioLines(t, br)
	if !strings.HasPrefix(tp[0], "HTTP/1.1 103 ") || !hasLine(tp, "Link: </s.css>; rel=preload") {
		t.Fatalf("first answer %q, want the 103 with its Link", tp)
	}
	tp = bufioLines(t, br)
	if !strings.HasPrefix(tp[0], "HTTP/1.1 101 ") {
		t.Fatalf("second answer %q, want the 101", tp)
	}
	hi := make([]byte, 2)
	if _, err := io.ReadFull(br, hi); err != nil || string(hi) != "hi" {
		t.Fatalf("tunnel: %q %v", hi, err)
	}
	io.WriteString(c, "ping")
	ping := make([]byte, 4)
	if _, err := io.ReadFull(br, ping); err != nil || string(ping) != "ping" {
		t.Fatalf("echo: %q %v", ping, err)
	}
}

// bufioLines reads one response head, line by line.
func bufioLines(t *testing.T, br *bufio.Reader) []string {
	t.Helper()
	var lines []string
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read head: %v (so far %q)", err, lines)
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "" {
			return lines
		}
		lines = append(lines, l)
	}
}

func hasLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// An upgrade answered with a header over the cap is a 502, as a forward
// request's is.
func TestUpgradeResponseHeaderTooLargeIs502(t *testing.T) {
	f := newFixture(t, testPolicy)
	url := rawOrigin(t, func(c net.Conn, _ *bufio.Reader) {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Big: "+strings.Repeat("a", 8<<20)+"\r\n\r\n")
	})
	line, resp, _ := statusLine(t, f, "GET "+url+"/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp.StatusCode != 502 || !strings.Contains(line, "response header larger than 1024 KiB") {
		t.Errorf("got %q, want a 502 for the header over the cap", line)
	}
}

// A declined upgrade is an ordinary answer: headers its Connection names
// stay behind, its streamed body is flushed as it comes, and its
// trailers follow.
func TestUpgradeDeclinedIsAnOrdinaryAnswer(t *testing.T) {
	f := newFixture(t, testPolicy)
	release := make(chan struct{})
	url := rawOrigin(t, func(c net.Conn, _ *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Secret-Hop\r\nX-Secret-Hop: s3cret\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
		<-release
		io.WriteString(c, "4\r\nlast\r\n0\r\nX-Sum: 42\r\n\r\n")
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	c, br := f.dial()
	io.WriteString(c, "GET "+url+"/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.Header.Get("X-Secret-Hop"); v != "" {
		t.Errorf("X-Secret-Hop %q reached the client; Connection named it", v)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("the first chunk did not come before the rest (no flush): %q %v", first, err)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "last" {
		t.Fatalf("rest %q %v", rest, err)
	}
	if got := resp.Trailer.Get("X-Sum"); got != "42" {
		t.Errorf("trailer X-Sum %q, want 42", got)
	}
}

// Forwarded requests and responses carry Via (RFC 9110 §7.6.3), unless
// listen.via is false.
func TestVia(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"by default", "", "1.1 egress"},
		{"not with listen.via false", "listen:\n  via: false\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testPolicy+tc.extra)
			got := make(chan string, 1)
			url := testOrigin(t, func(w http.ResponseWriter, r *http.Request) {
				got <- r.Header.Get("Via")
				io.WriteString(w, "ok")
			})
			resp, _, _, _ := f.raw("GET " + url + "/ HTTP/1.1\r\nHost: x\r\n\r\n")
			if v := <-got; v != tc.want {
				t.Errorf("request Via %q, want %q", v, tc.want)
			}
			if v := resp.Header.Get("Via"); v != tc.want {
				t.Errorf("response Via %q, want %q", v, tc.want)
			}
		})
	}
}

// testOrigin serves h on loopback and returns its http:// URL.
func testOrigin(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
