package httpproxy_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/proxy/httpproxy"
)

// An origin that sends a body after a response that has none (HEAD, 204,
// 304) must not have it read as the answer to the next request on the
// pooled connection, however soon that request comes.
func TestBodyAfterABodylessResponseIsNotTheNextAnswer(t *testing.T) {
	defer httpproxy.SetFreshIdle(time.Hour)() // every reuse "fresh": the shortcut is what is tested
	for _, tc := range []struct{ name, method, head string }{
		{"a body after the answer to HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"},
		{"a body after a 204", "GET", "HTTP/1.1 204 No Content\r\n\r\n"},
		{"a body after a 304", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testPolicy)
			headRead, smuggled := make(chan struct{}), make(chan struct{})
			var smuggledOn net.Conn // written before smuggled is closed
			url := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
				select {
				case <-smuggled: // a second connection: answers honestly
				default:
					io.WriteString(c, tc.head)
					<-headRead
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
					smuggledOn = c
					close(smuggled)
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
			c, br := f.dial()
			do(t, c, br, tc.method+" "+url+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
			close(headRead)
			<-smuggled
			testnet.Delivered(t, smuggledOn) // the bytes are in egress's socket
			resp, body := do(t, c, br, "GET "+url+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Errorf("next request got %d %q, want 200 \"ok\" from a new connection", resp.StatusCode, body)
			}
		})
	}
}

// Trailers of a chunked request body go up, but never fields that frame
// or route a message (RFC 9110 §6.5.1): an origin that merges trailers
// into the header must not find a second Host or Content-Length there.
func TestRequestTrailersWithoutFramingFields(t *testing.T) {
	f := newFixture(t, testPolicy)
	got := make(chan string, 1)
	url := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		c.SetReadDeadline(time.Now().Add(time.Second))
		var b strings.Builder
		for {
			line, err := br.ReadString('\n')
			b.WriteString(line)
			if err != nil || line == "\r\n" && strings.Contains(b.String(), "\r\n0\r\n") {
				break
			}
		}
		got <- b.String()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	resp, _, _, _ := f.raw("POST " + url + "/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"4\r\nabcd\r\n0\r\nX-Checksum: v\r\nContent-Length: 9\r\nHost: internal.test\r\nTransfer-Encoding: gzip\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := <-got
	if !strings.Contains(up, "X-Checksum: v\r\n") {
		t.Errorf("the trailer X-Checksum did not go up:\n%s", up)
	}
	for _, f := range []string{"Content-Length: 9", "Host: internal.test", "Transfer-Encoding: gzip"} {
		if strings.Contains(up, f) {
			t.Errorf("trailer %q went up:\n%s", f, up)
		}
	}
}

// An origin that answers an upload early, keeps the connection open and
// reads no more of the body (no Connection: close) must not hold the
// request: the answer reaches the client, and the request ends.
func TestEarlyAnswerFromAnOriginThatStopsReading(t *testing.T) {
	f := newFixture(t, testPolicy, logAllowed())
	hold := make(chan struct{})
	defer close(hold)
	url := rawOrigin(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!")
		<-hold
	})
	c, br := f.dial()
	io.WriteString(c, "POST "+url+"/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer while the origin held its connection: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 413 || string(b) != "big!" {
		t.Errorf("got %d %q, want the origin's 413 \"big!\"", resp.StatusCode, b)
	}
	f.waitEnded(t, url+"/upload", "the request did not end")
}

// heldConn gathers writes while hold is set, so that two TLS records go
// out in one TCP write.
type heldConn struct {
	net.Conn
	hold bool
	buf  []byte
}

func (c *heldConn) Write(b []byte) (int, error) {
	if c.hold {
		c.buf = append(c.buf, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// What an https:// origin sends after its answer, in the same TCP read as
// the answer, waits inside the TLS layer where a look at the socket does
// not see it: it must not be read as the answer to the next request.
func TestUnaskedTLSRecordIsNotTheNextAnswer(t *testing.T) {
	defer httpproxy.SetFreshIdle(0)() // the look, not the shortcut, is tested
	f := newFixture(t, testPolicy)
	cert := f.tls.TLS.Certificates[0]
	first := true
	written := make(chan net.Conn, 1) // the answer and the unasked record went
	addr := testnet.ServeTCP(t, func(c net.Conn) {
		hc := &heldConn{Conn: c}
		tc := tls.Server(hc, &tls.Config{Certificates: []tls.Certificate{cert}})
		br := bufio.NewReader(tc)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			if first {
				first = false
				hc.hold = true
				io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
				hc.hold = false
				c.Write(hc.buf)
				written <- c
				continue
			}
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
		}
	})
	url := "https://" + addr.String()
	c, br := f.dial()
	_, b1 := do(t, c, br, "GET "+url+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	testnet.Delivered(t, <-written) // the unasked record is in egress's socket
	_, b2 := do(t, c, br, "GET "+url+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if b1 != "ok" || b2 != "fresh" {
		t.Errorf("answers %q, %q; want \"ok\", then \"fresh\"", b1, b2)
	}
}

// A client silent in the middle of a small body holds no upstream
// connection: the body is read whole before one is taken, so the origin
// never holds a request head whose body does not come (an origin that
// gave up on it would otherwise leave the request waiting on the client
// alone); the rest of the body, when it comes, goes up with the head.
func TestSilentClientMidBodyHoldsNoUpstream(t *testing.T) {
	f := newFixture(t, testPolicy)
	o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	c, br := f.dial()
	io.WriteString(c, "POST "+o.URL+"/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
	// The client's silence is what is under test, not a wait for a
	// result: no upstream may be opened during it, and an absence has no
	// condition to wait on.
	time.Sleep(300 * time.Millisecond)
	if n := o.opened.Load(); n != 0 {
		t.Errorf("the origin has %d connections while the client is silent mid-body, want 0", n)
	}
	io.WriteString(c, "56789")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "0123456789" {
		t.Errorf("got %d %q, want the whole body echoed", resp.StatusCode, b)
	}
}
