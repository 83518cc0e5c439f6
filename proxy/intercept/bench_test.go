package intercept_test

import (
	"io"
	"net/http"
	"runtime"
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

// BenchmarkInterceptedIdleMemory reports the memory egress holds per idle
// intercepted connection (after one request, kept alive both sides):
// heap and goroutine stacks, the client's and origin's share included,
// so an upper bound.
func BenchmarkInterceptedIdleMemory(b *testing.B) {
	f := newFixture(b)
	url := f.url("/v1/license")
	const n = 200
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	clients := make([]*http.Client, n)
	for i := range clients {
		clients[i] = f.client()
		resp, err := clients[i].Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse) / n
	b.ReportMetric(per, "B/idle-conn(all-sides)")
	for _, c := range clients {
		c.CloseIdleConnections()
	}
}
