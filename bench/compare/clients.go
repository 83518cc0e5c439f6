package main

import (
	"bytes"
	"context"
	"io"
	"math"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func mustDial(addr string) net.Conn {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	check(err)
	return c
}

// connect opens a CONNECT tunnel to target through the proxy. It reads
// the answer byte by byte so that no tunnelled byte is left in a buffer.
func connect(proxy, target string) net.Conn {
	c := mustDial(proxy)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	check(err)
	head := readHead(c, proxy, "CONNECT "+target)
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) && !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) {
		fail("CONNECT %s via %s: %q", target, proxy, head)
	}
	c.SetDeadline(time.Time{})
	return c
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

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkErrors = regexp.MustCompile(`(Socket errors:.*|Non-2xx or 3xx responses:.*)`)
)

// wrk runs wrk with one thread against the origin, through s's proxy when
// it has one, and returns requests/s and any error lines.
func wrk(s *subject, origin, script string, conns int, d time.Duration) (float64, string) {
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(math.Round(d.Seconds()))) + "s"}
	if s.addr == "" {
		args = append(args, "http://"+origin+"/")
	} else {
		args = append(args, "-s", script, "http://"+s.addr+"/")
	}
	out, err := exec.Command("wrk", args...).CombinedOutput()
	if err != nil {
		fail("wrk %v: %v\n%s", args, err, out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		fail("wrk %v: no Requests/sec in\n%s", args, out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	var errs []string
	for _, e := range wrkErrors.FindAll(out, -1) {
		errs = append(errs, strings.TrimSpace(string(e)))
	}
	return v, strings.Join(errs, "; ")
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

// perSecond runs f on workers goroutines for d and returns calls/s.
func perSecond(workers int, d time.Duration, f func()) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				f()
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}
