// Command http benchmarks egress's HTTP data path against a direct
// connection to the same loopback origins, in the same run, and prints
// each figure as a ratio to its baseline:
//
//   - CONNECT tunnel throughput (bulk download) vs direct TCP (target >= 0.9x)
//   - plain HTTP keep-alive requests/s vs direct (target >= 0.5x)
//   - CONNECT setup latency p50 (target < 300 µs), next to a direct TCP connect
//   - resident memory per idle tunnel at 5,000 tunnels (target < 10 KiB)
//
// It runs the real egress binary (built from ./cmd/egress unless -egress
// is given) as a separate process, so its RSS is egress's alone. Run it
// from the repository root:
//
//	go run ./bench/http
//
// It is not a test: figures depend on the machine; BENCHMARKS.md records
// them with the command that produced them.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const config = `version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
limits:
  max_tunnels: 20000
`

func main() {
	egressBin := flag.String("egress", "", "egress binary (default: go build ./cmd/egress into a temporary directory)")
	size := flag.Int64("bytes", 1<<30, "bytes per throughput run")
	runs := flag.Int("runs", 5, "rounds of the throughput and requests/s measures (the median counts)")
	dur := flag.Duration("duration", time.Second, "duration of each requests/s run")
	workers := flag.Int("workers", 4, "concurrent keep-alive clients")
	setups := flag.Int("setups", 2000, "CONNECT setups timed")
	tunnels := flag.Int("tunnels", 5000, "idle tunnels for the memory figure")
	flag.Parse()

	dir, err := os.MkdirTemp("", "egress-bench")
	check(err)
	defer os.RemoveAll(dir)
	if *egressBin == "" {
		*egressBin = filepath.Join(dir, "egress")
		out, err := exec.Command("go", "build", "-o", *egressBin, "./cmd/egress").CombinedOutput()
		if err != nil {
			fail("go build ./cmd/egress (run from the repository root): %v\n%s", err, out)
		}
	}
	cfg := filepath.Join(dir, "bench.yaml")
	check(os.WriteFile(cfg, []byte(config), 0o600))

	fmt.Printf("egress HTTP data path benchmark: %s, GOMAXPROCS %d, %s\n\n", runtime.Version(), runtime.GOMAXPROCS(0), time.Now().Format(time.RFC3339))

	eg := startEgress(*egressBin, cfg)
	proxyURL := &url.URL{Scheme: "http", Host: eg.addr}

	// 1. CONNECT throughput.
	// Each round measures direct and via egress back to back; the median
	// round counts (this machine's speed drifts between rounds).
	src := sourceServer(*size)
	direct, tunnel, ratio := rounds(*runs, func() (float64, float64) {
		return download(func() net.Conn { return mustDial(src) }, *size),
			download(func() net.Conn { return connect(eg.addr, src) }, *size)
	})
	fmt.Printf("CONNECT throughput   direct %8.0f MB/s   via egress %8.0f MB/s   ratio %.2fx (target >= 0.9x; median of %d rounds)\n",
		direct/1e6, tunnel/1e6, ratio, *runs)

	// 2. Plain HTTP keep-alive requests/s.
	origin := httpOrigin()
	dr, pr, ratio := rounds(*runs, func() (float64, float64) {
		return reqPerSec("http://"+origin+"/", nil, *workers, *dur), reqPerSec("http://"+origin+"/", proxyURL, *workers, *dur)
	})
	fmt.Printf("HTTP keep-alive      direct %8.0f req/s  via egress %8.0f req/s  ratio %.2fx (target >= 0.5x; %d clients; median of %d rounds)\n",
		dr, pr, ratio, *workers, *runs)

	// 3. CONNECT setup latency.
	idle := idleServer()
	dp := latencies(*setups, func() { mustDial(idle).Close() })
	cp := latencies(*setups, func() { connect(eg.addr, idle).Close() })
	fmt.Printf("CONNECT setup        p50 %6.0f µs  p90 %6.0f µs  p99 %6.0f µs   (direct TCP connect p50 %.0f µs; target p50 < 300 µs)\n",
		us(cp[len(cp)/2]), us(cp[len(cp)*9/10]), us(cp[len(cp)*99/100]), us(dp[len(dp)/2]))
	eg.stop()

	// 4. RSS per idle tunnel, on a fresh egress.
	eg = startEgress(*egressBin, cfg)
	time.Sleep(200 * time.Millisecond)
	before := rss(eg.cmd.Process.Pid)
	conns := make([]net.Conn, 0, *tunnels)
	for i := 0; i < *tunnels; i++ {
		conns = append(conns, connect(eg.addr, idle))
	}
	time.Sleep(2 * time.Second) // let the GC and scavenger settle
	after := rss(eg.cmd.Process.Pid)
	per := float64(after-before) / float64(*tunnels)
	fmt.Printf("idle tunnels         %d tunnels: RSS %d KiB -> %d KiB, %.1f KiB per tunnel (target < 10 KiB)\n",
		*tunnels, before/1024, after/1024, per/1024)
	for _, c := range conns {
		c.Close()
	}
	eg.stop()
}

// rounds runs f n times and returns the round with the median ratio
// second/first.
func rounds(n int, f func() (float64, float64)) (first, second, ratio float64) {
	type round struct{ a, b float64 }
	rs := make([]round, n)
	for i := range rs {
		rs[i].a, rs[i].b = f()
	}
	slices.SortFunc(rs, func(x, y round) int { return cmp.Compare(x.b/x.a, y.b/y.a) })
	m := rs[n/2]
	return m.a, m.b, m.b / m.a
}

type egress struct {
	cmd  *exec.Cmd
	addr string
}

func startEgress(bin, cfg string) *egress {
	cmd := exec.Command(bin, "serve", "--config", cfg, "--listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	check(err)
	check(cmd.Start())
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["listen_http"] != nil {
			go io.Copy(io.Discard, stderr)
			return &egress{cmd: cmd, addr: m["listen_http"].(string)}
		}
	}
	fail("egress did not start")
	return nil
}

func (e *egress) stop() {
	e.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		e.cmd.Process.Kill()
		<-done
	}
}

// sourceServer writes size bytes to every connection, then closes it.
func sourceServer(size int64) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	buf := make([]byte, 256<<10)
	go func() {
		for {
			c, err := l.Accept()
			check(err)
			go func() {
				defer c.Close()
				for left := size; left > 0; {
					n := min(left, int64(len(buf)))
					m, err := c.Write(buf[:n])
					if err != nil {
						return
					}
					left -= int64(m)
				}
			}()
		}
	}()
	return l.Addr().String()
}

// download reads a connection to EOF and returns bytes/s.
func download(dial func() net.Conn, size int64) float64 {
	c := dial()
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			break
		}
	}
	if n != size {
		fail("downloaded %d bytes, want %d", n, size)
	}
	return float64(n) / time.Since(start).Seconds()
}

func httpOrigin() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	}))
	return l.Addr().String()
}

func reqPerSec(u string, proxy *url.URL, workers int, d time.Duration) float64 {
	var n atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
		if proxy != nil {
			tr.Proxy = http.ProxyURL(proxy)
		}
		cl := &http.Client{Transport: tr}
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			for ctx.Err() == nil {
				resp, err := cl.Get(u)
				if err != nil {
					fail("GET %s: %v", u, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					fail("GET %s: %s", u, resp.Status)
				}
				n.Add(1)
			}
		})
	}
	start := time.Now()
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// idleServer accepts connections and holds them open, idle.
func idleServer() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return l.Addr().String()
}

func mustDial(addr string) net.Conn {
	c, err := net.Dial("tcp", addr)
	check(err)
	return c
}

// connect opens a CONNECT tunnel to target through the proxy.
func connect(proxy, target string) net.Conn {
	c := mustDial(proxy)
	_, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	check(err)
	// Read the status line and the blank line byte by byte, so that no
	// tunnelled byte is left in a buffer.
	var line []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(line), "\r\n\r\n") {
		if _, err := c.Read(b); err != nil {
			fail("CONNECT %s: %v after %q", target, err, line)
		}
		line = append(line, b[0])
	}
	if !strings.HasPrefix(string(line), "HTTP/1.1 200") {
		fail("CONNECT %s: %q", target, line)
	}
	return c
}

func latencies(n int, f func()) []time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		start := time.Now()
		f()
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return ds
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// rss is the resident set size of a process in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	check(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			check(err)
			return kb * 1024
		}
	}
	fail("no VmRSS for pid %d", pid)
	return 0
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
