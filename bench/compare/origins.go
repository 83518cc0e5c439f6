package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

func httpOrigin() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	}))
	return l.Addr().String()
}

// sourceServer writes size bytes to every connection, then closes it;
// with rate > 0, at most rate bytes per second (a slower link).
func sourceServer(size, rate int64) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	chunk := int64(256 << 10)
	if rate > 0 {
		chunk = 64 << 10
	}
	buf := make([]byte, chunk)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				start := time.Now()
				var sent int64
				for sent < size {
					m, err := c.Write(buf[:min(size-sent, chunk)])
					if err != nil {
						return
					}
					sent += int64(m)
					if rate > 0 {
						if ahead := time.Duration(sent*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
							time.Sleep(ahead)
						}
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// idleServer accepts connections and holds them, idle, until the peer
// closes; it counts those open.
type idleServer struct {
	addr string
	open atomic.Int64
}

func newIdleServer() *idleServer { return newHoldingServer(nil) }

// newHoldingServer is an idleServer that first runs greet, if set, on
// each connection (which then reads the rest from r).
func newHoldingServer(greet func(c net.Conn, r *bufio.Reader) bool) *idleServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	s := &idleServer{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.open.Add(1)
			go func() {
				defer s.open.Add(-1)
				defer c.Close()
				var r io.Reader = c
				if greet != nil {
					br := bufio.NewReader(c)
					if !greet(c, br) {
						return
					}
					r = br
				}
				io.Copy(io.Discard, r)
			}()
		}
	}()
	return s
}

// waitOpen waits until n connections are open (bounded).
func (s *idleServer) waitOpen(n int64, d time.Duration) {
	deadline := time.Now().Add(d)
	for s.open.Load() != n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
