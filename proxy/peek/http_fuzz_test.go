package peek_test

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/egress-proxy/egress/proxy/origin"
	"github.com/egress-proxy/egress/proxy/peek"
)

// FuzzRequestReader feeds the gate's reader what a client may send. It
// must not panic, and every request it reads, re-serialised as the gate
// sends it, must be read back by net/http with the same Host, method and
// target: the origin decides on what egress decided on.
func FuzzRequestReader(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET / HTTP/1.1\r\nX: a\nHost: refused.example\r\n\r\n",
		"GET / HTTP/1.1\nHost: b.example\n\n",
		"GET / HTTP/1.1\r\nHost:\r\n refused.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nHost: refused.example\r\n\r\n",
		"GET http://refused.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: refused.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET / HTTP/1.1\r\nHost: refused.example\r\n\r\n",
		"CONNECT refused.example:80 HTTP/1.1\r\nHost: refused.example:80\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nX-T: v\r\n\r\nGET / HTTP/1.1\r\nHost: c.example\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /\x00 HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := peek.NewRequestReader(data, bytes.NewReader(nil), 64<<10)
		for range 8 {
			req, err := rr.Read()
			if err != nil {
				return
			}
			var out bytes.Buffer
			bw := bufio.NewWriter(&out)
			origin.WriteHead(bw, req, origin.Request{Transparent: true})
			if req.Body != nil && req.Body != http.NoBody {
				if err := origin.WriteBody(bw, req, io.LimitReader(req.Body, 1<<20)); err != nil {
					return // a body cut short: the gate ends the connection
				}
			}
			bw.Flush()
			again, err := http.ReadRequest(bufio.NewReader(&out))
			if err != nil {
				t.Fatalf("the re-serialised request does not read back: %v\n%q", err, out.Bytes())
			}
			sameURI := again.RequestURI == req.RequestURI || req.Method == http.MethodConnect // sent as its authority
			if again.Host != req.Host || again.Method != req.Method || !sameURI {
				t.Fatalf("read back as %s %s Host %q, egress decided on %s %s Host %q\n%q",
					again.Method, again.RequestURI, again.Host, req.Method, req.RequestURI, req.Host, out.Bytes())
			}
			if h := peek.RequestHost(req); h != peek.RequestHost(again) {
				t.Fatalf("host %q read back as %q", h, peek.RequestHost(again))
			}
		}
	})
}
