package httpproxy_test

import (
	"bufio"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
)

// seen is what a net/http client makes of an answer.
type seen struct {
	Status  int
	Header  http.Header
	Body    string
	Trailer http.Header
	Err     string // the request or the body failed
}

// observe sends method to target through client and reads everything.
func observe(client *http.Client, method, target string) seen {
	req, _ := http.NewRequest(method, target, nil)
	resp, err := client.Do(req)
	if err != nil {
		return seen{Err: "request failed"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	s := seen{Status: resp.StatusCode, Header: resp.Header, Body: string(b), Trailer: resp.Trailer}
	if err != nil {
		s.Err = "body cut short"
	}
	for k := range s.Header {
		if k == "Date" || k == "Via" || strings.HasPrefix(k, "X-Egress-") {
			delete(s.Header, k)
		}
	}
	if len(s.Trailer) == 0 {
		s.Trailer = nil
	}
	return s
}

// The one origin client against net/http's Transport behind
// httputil.ReverseProxy, on the same scripted origins: a net/http client
// sees the same answer through both, or egress is stricter in a way
// named by the case (a 502 where ReverseProxy drops the connection).
func TestDifferentialAgainstReverseProxy(t *testing.T) {
	f := newFixture(t, testPolicy+"listen:\n  via: false\n")
	for _, tc := range []struct {
		name, method, answer string
		stricter             func(rp, eg seen) bool // nil: the same
	}{
		{"a Content-Length body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", nil},
		{"a chunked body with trailers", "GET", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 9\r\n\r\n", nil},
		{"a chunked body with an unannounced trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Late: 9\r\n\r\n", nil},
		{"a body until close (HTTP/1.1)", "GET", "HTTP/1.1 200 OK\r\n\r\nuntil close", nil},
		{"a body until close (HTTP/1.0)", "GET", "HTTP/1.0 200 OK\r\n\r\nold style", nil},
		{"HEAD with a Content-Length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", nil},
		{"204", "GET", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", nil},
		{"304 with a Content-Length", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nEtag: \"x\"\r\n\r\n", nil},
		{"103 then 200", "GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", nil},
		{"100 then 200", "GET", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", nil},
		{"hop-by-hop headers and those Connection names", "GET", "HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok", nil},
		{"a status of 599", "GET", "HTTP/1.1 599 Odd\r\nContent-Length: 2\r\n\r\nok", nil},
		{"a status of 600", "GET", "HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok", nil},
		{"a body shorter than its Content-Length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", nil},
		{"two different Content-Lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", bad502},
		{"a status of 099", "GET", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", func(rp, eg seen) bool {
			return rp.Err != "" && eg.Status == 502 // ReverseProxy's WriteHeader(99) panics: a dropped connection
		}},
		{"an unasked 101", "GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", bad502},
		{"a broken chunk", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := testnet.ServeTCP(t, func(c net.Conn) {
				br := bufio.NewReader(c)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, tc.answer)
			}).String()
			target, _ := url.Parse("http://" + addr)
			rp := httptest.NewUnstartedServer(&httputil.ReverseProxy{
				Rewrite:  func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
				ErrorLog: discardLog,
			})
			rp.Config.ErrorLog = discardLog // the 099 case's panic
			rp.Start()
			t.Cleanup(rp.Close)
			plain := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
			viaEgress := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyURL(f.url)}, Timeout: 10 * time.Second}
			want := observe(plain, tc.method, rp.URL+"/")
			got := observe(viaEgress, tc.method, "http://"+addr+"/")
			if !strings.Contains(tc.answer, "Content-Type:") {
				// net/http's server sniffs one for a body written before
				// the head went out: ReverseProxy's flush timer races its
				// first write; egress sends a stream's head first, always.
				want.Header.Del("Content-Type")
				got.Header.Del("Content-Type")
			}
			if tc.stricter == nil && (want.Err != "" || got.Err != "") {
				// A failed answer: the same failure, whether the head
				// went out before the body broke is a race in both.
				if want.Err == "" || got.Err == "" {
					t.Errorf("one failed, one did not:\nReverseProxy %+v\negress       %+v", want, got)
				}
				return
			}
			if tc.stricter != nil {
				if !tc.stricter(want, got) {
					t.Errorf("not the stricter answer named:\nReverseProxy %+v\negress       %+v", want, got)
				}
				return
			}
			if !reflect.DeepEqual(want, got) {
				t.Errorf("differs:\nReverseProxy %+v\negress       %+v", want, got)
			}
		})
	}
}

// bad502: both refuse the answer with a 502.
func bad502(rp, eg seen) bool { return rp.Status == 502 && eg.Status == 502 }

var discardLog = log.New(io.Discard, "", 0)
