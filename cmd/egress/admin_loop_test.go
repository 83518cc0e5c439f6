package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
)

// lockedLog is a log destination read while egress writes it.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// waitLine waits for a JSON line that pred accepts.
func (l *lockedLog) waitLine(t *testing.T, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	return waitJSONLine(t, testwait.Timeout, func() string {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.b.String()
	}, pred)
}

// waitJSONLine waits until the log text returns has a JSON line that
// pred accepts, and returns that line.
func waitJSONLine(t *testing.T, timeout time.Duration, text func() string, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	testwait.UntilNil(t, timeout, func() error {
		text := text()
		for _, line := range strings.Split(text, "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && pred(m) {
				found = m
				return nil
			}
		}
		return fmt.Errorf("no matching line in the log:\n%s", text)
	})
	return found
}

// TestAdminListenerIsALoop: with a policy that allows loopback, the admin
// listener (which hands out the policy) is still refused as a loop, on
// every path: plain HTTP, CONNECT and transparent.
func TestAdminListenerIsALoop(t *testing.T) {
	pol, err := policy.Load("loop.yaml", []byte(`version: 1
default: deny
allow:
  - cidr: 127.0.0.1/32
listen:
  http: 127.0.0.1:0
  admin: 127.0.0.1:0
  transparent: 127.0.0.1:0
timeouts:
  drain: 2s
`))
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedLog{}
	e := newServer(pol, nil, time.Now(), zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t))))
	if err := e.listen(""); err != nil {
		e.closeServices()
		t.Fatal(err)
	}
	stop, err := e.startAdmin(pol.Listen.Admin, false)
	if err != nil || stop == nil {
		t.Fatalf("startAdmin: %v", err)
	}
	defer stop()
	if e.adminAddr == "" {
		t.Fatal("no admin listener")
	}
	admin := netip.MustParseAddrPort(e.adminAddr)
	// Every transparent connection was "redirected" from the admin address.
	e.transparent.OriginalDst = func(*net.TCPConn) (netip.AddrPort, error) { return admin, nil }
	addrs := map[string]string{}
	for _, s := range e.svcs {
		addrs[s.name] = s.addr
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { e.run(ctx, nil); close(ran) }()
	defer func() { cancel(); <-ran; e.drain() }()

	// The admin listener answers directly: it is there to be reached.
	if resp, err := http.Get("http://" + e.adminAddr + "/policy"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin /policy directly: %v %v", resp, err)
	}

	for _, tt := range []struct{ name, request string }{
		{"plain HTTP", "GET http://" + e.adminAddr + "/policy HTTP/1.1\r\nHost: " + e.adminAddr + "\r\n\r\n"},
		{"CONNECT", "CONNECT " + e.adminAddr + " HTTP/1.1\r\nHost: " + e.adminAddr + "\r\n\r\n"},
	} {
		t.Run(tt.name+" to the admin listener is a loop", func(t *testing.T) {
			c, err := net.DialTimeout("tcp", addrs["http"], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tt.request)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: strings.Fields(tt.request)[0]})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Egress-Reason") != "loop" {
				t.Fatalf("%s: %s, reason %q; want 403 loop", tt.name, resp.Status, resp.Header.Get("X-Egress-Reason"))
			}
		})
	}

	t.Run("a transparent connection to the admin listener is a loop", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", addrs["transparent"], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /policy HTTP/1.1\r\nHost: %s\r\n\r\n", e.adminAddr)
		if b, _ := io.ReadAll(c); len(b) > 0 {
			t.Fatalf("the transparent path reached the admin listener: %q", b)
		}
		logs.waitLine(t, func(m map[string]any) bool { return m["proto"] == "tcp" && m["reason"] == "loop" })
	})
}
