package intercept_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"
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

// idleConns is how many idle intercepted connections
// BenchmarkInterceptedIdleMemory holds open.
const idleConns = 300

// BenchmarkInterceptedIdleMemory reports the memory egress holds per idle
// intercepted connection: CONNECT, both handshakes, one GET, then the
// connection kept open, idle (BENCHMARKS.md §8: target ≤ 0.5x squid
// ssl-bump's). The clients run in a helper process, so the figures are
// the proxy's alone (and the origin's, whose connections egress pools:
// a few for all); the request log is discarded, as it would be written
// out, and so is what the test origin keeps of requests. heap-B and
// stack-B split B/idle-conn; goroutines/idle-conn is what each idle
// connection keeps. With EGRESS_IDLE_HEAPPROFILE=FILE (and
// -memprofilerate=1) the heap profile is written to FILE, and the
// goroutines to FILE.goroutines, while the connections are held: where
// the bytes are (BENCHMARKS.md §8).
func BenchmarkInterceptedIdleMemory(b *testing.B) {
	f := newFixture(b)
	f.logs.discard.Store(true)
	f.origin.discard.Store(true)
	var before, after runtime.MemStats
	for i := 0; i < b.N; i++ {
		// A first connection mints and caches the leaf and fills the
		// pools: what every later connection shares.
		warm := f.idleClients(b, 1)
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		held := f.idleClients(b, idleConns)
		runtime.GC()
		runtime.ReadMemStats(&after)
		g1 := runtime.NumGoroutine()
		if fn := os.Getenv("EGRESS_IDLE_HEAPPROFILE"); fn != "" {
			fh, _ := os.Create(fn)
			pprof.WriteHeapProfile(fh)
			fh.Close()
			fg, _ := os.Create(fn + ".goroutines")
			pprof.Lookup("goroutine").WriteTo(fg, 1)
			fg.Close()
		}
		heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / idleConns
		stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / idleConns
		b.ReportMetric(heap+stack, "B/idle-conn")
		b.ReportMetric(heap, "heap-B/idle-conn")
		b.ReportMetric(stack, "stack-B/idle-conn")
		b.ReportMetric(float64(g1-g0)/idleConns, "goroutines/idle-conn")
		held.close(b)
		warm.close(b)
	}
}

// heldClients is a helper process holding idle intercepted connections.
type heldClients struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

// idleClients starts a helper process that opens n intercepted
// connections through the proxy, makes one GET on each and keeps them
// open, and returns once all n are open and idle.
func (f *fixture) idleClients(tb testing.TB, n int) *heldClients {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientsHelperProcess$")
	cmd.Env = append(os.Environ(), "EGRESS_IDLE_CLIENTS="+strings.Join([]string{f.proxy, f.url("/v1/license"), f.caFile, strconv.Itoa(n)}, "\n"))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	h := &heldClients{cmd: cmd, stdin: stdin}
	tb.Cleanup(func() { h.close(tb) })
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		tb.Fatalf("idle clients: %q", line)
	}
	return h
}

// close ends the helper process, and its connections with it.
func (h *heldClients) close(tb testing.TB) {
	if h.cmd.ProcessState != nil {
		return
	}
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		tb.Errorf("idle clients: %v", err)
	}
}

// TestIdleClientsHelperProcess is the helper process of idleClients, not
// a test: it opens the connections, says "ready", and holds them until
// its stdin closes.
func TestIdleClientsHelperProcess(t *testing.T) {
	args, ok := os.LookupEnv("EGRESS_IDLE_CLIENTS")
	if !ok {
		t.Skip("helper process of BenchmarkInterceptedIdleMemory")
	}
	a := strings.Split(args, "\n")
	proxy, target, caFile := a[0], a[1], a[2]
	n, _ := strconv.Atoi(a[3])
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	hostport := strings.TrimPrefix(target, "https://")
	hostport, path, _ := strings.Cut(hostport, "/")
	host, _, _ := net.SplitHostPort(hostport)
	var held []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", hostport)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || br.Buffered() != 0 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: host, NextProtos: []string{"http/1.1"}})
		fmt.Fprintf(tc, "GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n", path, hostport)
		resp, err = http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET: %s", resp.Status)
		}
		c.SetDeadline(time.Time{})
		held = append(held, tc)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range held {
		c.Close()
	}
}
