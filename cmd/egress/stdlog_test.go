package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestServeLogIsAllJSON: net/http's client writes "Unsolicited response
// received on idle HTTP channel" through the standard log package when an
// origin sends bytes on an idle kept-alive connection. egress serve's
// stderr must still be one JSON object per line.
func TestServeLogIsAllJSON(t *testing.T) {
	// An origin that answers, then writes more on the idle connection
	// once the client has its response.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	answered := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		<-answered
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited")
		io.Copy(io.Discard, c)
	}()

	child := startChild(t, "serve", "--config", writeConfig(t, loopbackPolicy), "--listen", "127.0.0.1:0")
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: child.addr(t, "http")})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("body %q, want ok", body)
	}
	close(answered)

	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(child.logText(), "Unsolicited response"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("net/http never reported the unsolicited response:\n%s", child.logText())
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(child.logText()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q", line)
		}
	}
}
