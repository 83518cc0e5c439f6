package main

import (
	"bufio"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
)

// TestStdLogIsJSON: net/http writes through the standard log package on
// its own (an http.Server without an ErrorLog: the admin listener's "http:
// TLS handshake error"); what it writes must come out as JSON lines.
func TestStdLogIsJSON(t *testing.T) {
	var buf strings.Builder
	restore := routeStdLog(zerolog.New(&buf))
	log.Printf("http: TLS handshake error from 127.0.0.1:1: EOF")
	restore()
	var m map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(buf.String())), &m); err != nil || m["message"] != "http: TLS handshake error from 127.0.0.1:1: EOF" || m["level"] != "warn" {
		t.Errorf("standard log line came out as %q (%v)", buf.String(), err)
	}
}

// TestServeUnsolicitedResponse: an origin that writes on an idle
// kept-alive connection (once net/http's Transport logged that through the
// standard log package) has the connection dropped, not reused: the next
// request gets its own answer, and serve's stderr stays one JSON object
// per line.
func TestServeUnsolicitedResponse(t *testing.T) {
	// An origin that answers, then writes more on the idle connection
	// once the client has its response.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answered := make(chan struct{})
	unasked := make(chan net.Conn, 1) // the first connection written on unasked
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				<-answered
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited")
				select {
				case unasked <- c:
				default:
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()

	child := startChild(t, "serve", "--config", writeConfig(t, loopbackPolicy), "--listen", "127.0.0.1:0")
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: child.addr(t, "http")})}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 2 {
		resp, err := cl.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("request %d: body %q, want ok", i, body)
		}
		if i == 0 {
			close(answered)
			// The unsolicited bytes reach egress's socket.
			select {
			case c := <-unasked:
				testnet.Delivered(t, c)
			case <-time.After(testwait.Timeout):
				t.Fatalf("waited %v for the origin to write on the idle connection", testwait.Timeout)
			}
			// Idle past origin.FreshIdle (1 ms), a connection is looked
			// at before egress reuses it: without the pause the test
			// fails, egress taking the connection unlooked.
			time.Sleep(5 * time.Millisecond) // the idleness under test
		}
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("origin accepted %d connections, want 2 (the one it wrote on unasked is not reused)", n)
	}
	for _, line := range strings.Split(strings.TrimSpace(child.logText()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q", line)
		}
	}
}
