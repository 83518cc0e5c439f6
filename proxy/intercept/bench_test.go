package intercept_test

import (
	"io"
	"testing"
)

// BenchmarkInterceptedKeepAlive: requests on one kept-alive intercepted
// connection (decide, inject, origin over TLS, relay), Go client and
// origin on loopback, logging every request.
func BenchmarkInterceptedKeepAlive(b *testing.B) {
	f := newFixture(b)
	c := f.client()
	url := f.url("/v1/license")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkInterceptedNewConnection: a new client connection each time:
// CONNECT, both handshakes (the leaf cached), one request.
func BenchmarkInterceptedNewConnection(b *testing.B) {
	f := newFixture(b)
	url := f.url("/v1/license")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := f.client()
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.CloseIdleConnections()
	}
}
