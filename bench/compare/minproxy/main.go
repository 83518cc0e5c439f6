// Command minproxy is the smallest Go forward proxy that passes
// bench/compare's measures: no policy, no log, no limits, no timeouts. It
// is not a product: it is the reference that shows what any Go proxy costs
// on the benchmark machine, so that a figure egress misses can be told
// apart from one no proxy written this way could reach.
//
// Plain HTTP: one goroutine per client connection reads a request, writes
// it to one upstream connection kept for that client connection, reads the
// response and writes it back, inline (no goroutine hand-offs, unlike
// net/http's Server and Transport). CONNECT: dial, 200, io.Copy both ways
// (splice between TCP connections).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "`addr`ess to listen on; the bound address is printed on stdout")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "minproxy:", err)
		os.Exit(1)
	}
	fmt.Println(l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "minproxy:", err)
			os.Exit(1)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	var up net.Conn
	var upHost string
	var ubr *bufio.Reader
	var ubw *bufio.Writer
	defer func() {
		if up != nil {
			up.Close()
		}
	}()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Method == http.MethodConnect {
			tunnel(c, br, req.Host)
			return
		}
		host := req.URL.Host
		if req.URL.Port() == "" {
			host += ":80"
		}
		if up == nil || host != upHost {
			if up != nil {
				up.Close()
			}
			if up, err = net.Dial("tcp", host); err != nil {
				up = nil
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			upHost, ubr, ubw = host, bufio.NewReader(up), bufio.NewWriter(up)
		}
		req.Header.Del("Proxy-Connection")
		if err := req.Write(ubw); err != nil || ubw.Flush() != nil {
			return
		}
		resp, err := http.ReadResponse(ubr, req)
		if err != nil {
			return
		}
		err = resp.Write(bw)
		resp.Body.Close()
		if err != nil || bw.Flush() != nil || resp.Close || req.Close {
			return
		}
	}
}

func tunnel(c net.Conn, br *bufio.Reader, target string) {
	u, err := net.Dial("tcp", target)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	defer u.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := u.Write(b); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		u.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, u)
	c.(*net.TCPConn).CloseWrite()
	<-done
}
