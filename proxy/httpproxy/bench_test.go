package httpproxy_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/httpproxy"
	"github.com/egress-proxy/egress/reload"
)

// benchProxy serves a proxy allowing 127.0.0.1 on loopback; events, if
// not nil, records its requests.
func benchProxy(b *testing.B, events *eventlog.Sink) string {
	pol, err := policy.Load("bench.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\n"))
	if err != nil {
		b.Fatal(err)
	}
	p := &httpproxy.Proxy{Policy: func() *policy.Policy { return pol }, Events: events}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.Serve(l)
	b.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// BenchmarkForwardKeepAlive is one plain HTTP request on a kept-alive
// client connection, through the proxy ("proxy"), through a proxy that
// writes a line per request as log.allowed does, to a file through
// serve's LineBuffer ("proxy-logged"), and directly ("direct"): compare
// the ns/op.
func BenchmarkForwardKeepAlive(b *testing.B) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer origin.Close()
	logFile, err := reload.OpenLogFile(filepath.Join(b.TempDir(), "egress.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	lines := logFile.Buffered(0, 0)
	defer lines.Close()
	logged := &eventlog.Sink{Logger: zerolog.New(lines).With().Timestamp().Logger(), LogAllowed: true}
	for _, tc := range []struct {
		name  string
		proxy *url.URL
	}{
		{"direct", nil},
		{"proxy", &url.URL{Scheme: "http", Host: benchProxy(b, nil)}},
		{"proxy-logged", &url.URL{Scheme: "http", Host: benchProxy(b, logged)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr := &http.Transport{Proxy: http.ProxyURL(tc.proxy)}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := cl.Get(origin.URL)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkConnectSetup is one CONNECT: dial the proxy, ask, read the 200.
func BenchmarkConnectSetup(b *testing.B) {
	idle, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer idle.Close()
	go func() {
		for {
			c, err := idle.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	addr := benchProxy(b, nil)
	req := []byte("CONNECT " + idle.Addr().String() + " HTTP/1.1\r\n\r\n")
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(req)
		n, err := io.ReadAtLeast(c, buf, len("HTTP/1.1 200 Connection established\r\n\r\n"))
		if err != nil || string(buf[9:12]) != "200" {
			b.Fatalf("%q %v", buf[:n], err)
		}
		c.Close()
	}
}
