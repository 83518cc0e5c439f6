package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/origin"
)

// reqKey carries a request's policy.Request to the Transport's dial.
type reqKey struct{}

// transportForward is serveForward's plain-HTTP path with one
// net/http.Transport (checking dialer, Proxy: nil) in place of egress's
// own origin client: the comparison issue 19 asks for. Decision, dial
// check, copy and log line are the same.
func (p *Proxy) transportForward(tr *http.Transport) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rq := p.newRequest(r, r.URL.Hostname(), 80)
		if port := r.URL.Port(); port != "" {
			n, _ := net.LookupPort("tcp", port)
			rq.req.Port = uint16(n)
		}
		pol := p.Policy()
		dec := pol.Decide(rq.req)
		entry := eventlog.Entry{ID: rq.id, Proto: eventlog.ProtoHTTP, Client: rq.client, Method: r.Method, URL: r.URL.Redacted(), Decision: dec}
		if !dec.Allowed() {
			p.Events.Record(entry)
			denied(rq.id, r.URL.Host, dec).send(w, r)
			return
		}
		out := r.Clone(context.WithValue(r.Context(), reqKey{}, rq.req))
		out.RequestURI = ""
		for k := range out.Header {
			if origin.HopHeader(k) {
				out.Header.Del(k)
			}
		}
		resp, err := tr.RoundTrip(out)
		if err != nil {
			entry.Err = err
			p.Events.Record(entry)
			failureFor(rq.id, r.URL.Host, dec, err).send(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		entry.Err = origin.CopyResponse(cw, resp, false)
		resp.Body.Close()
		entry.BytesDown, entry.Duration = cw.n, time.Since(rq.start)
		p.Events.Record(entry)
	}
}

// BenchmarkOriginClientVsTransport: one plain HTTP request on a
// kept-alive client connection through egress ("own-client") and through
// the same steps over one http.Transport ("transport"). Compare ns/op.
func BenchmarkOriginClientVsTransport(b *testing.B) {
	originSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer originSrv.Close()
	pol, err := policy.Load("bench.yaml", []byte("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1/32\n"))
	if err != nil {
		b.Fatal(err)
	}
	p := &Proxy{Policy: func() *policy.Policy { return pol }}
	p.init()
	own, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(own)
	defer own.Close()
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, _, err := p.dial.Dial(ctx, "tcp", ctx.Value(reqKey{}).(policy.Request))
			return c, err
		},
		MaxIdleConnsPerHost: origin.MaxIdlePerKey, MaxIdleConns: origin.MaxIdlePerPool, IdleConnTimeout: origin.PoolIdleTimeout,
		ResponseHeaderTimeout: pol.Timeouts.Response, MaxResponseHeaderBytes: origin.MaxHeaderBytes,
	}
	defer tr.CloseIdleConnections()
	viaTr, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: p.transportForward(tr)}
	go srv.Serve(viaTr)
	defer srv.Close()
	for _, tc := range []struct {
		name string
		addr string
	}{{"own-client", own.Addr().String()}, {"transport", viaTr.Addr().String()}} {
		b.Run(tc.name, func(b *testing.B) {
			ct := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: tc.addr})}
			defer ct.CloseIdleConnections()
			cl := &http.Client{Transport: ct}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := cl.Get(originSrv.URL)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}
