//go:build linux

package transparent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/eventlog"
	"github.com/egress-proxy/egress/proxy/names"
)

// mapResolver resolves from a map; other names do not exist.
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// recorder keeps the entries a Server records.
type recorder struct {
	mu sync.Mutex
	es []eventlog.Entry
	ch chan eventlog.Entry
}

func newRecorder(t *testing.T) (*recorder, *eventlog.Sink) {
	r := &recorder{ch: make(chan eventlog.Entry, 100)}
	return r, &eventlog.Sink{Logger: zerolog.New(zerolog.NewTestWriter(t)), LogAllowed: true, Observe: func(e eventlog.Entry) {
		r.mu.Lock()
		r.es = append(r.es, e)
		r.mu.Unlock()
		r.ch <- e
	}}
}

// next waits for the next recorded entry.
func (r *recorder) next(t *testing.T) eventlog.Entry {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no entry recorded within 5s")
	}
	return eventlog.Entry{}
}

// greeter is a server-speaks-first origin (like MySQL or SMTP): it
// writes a greeting, then echoes.
func greeter(t *testing.T) *net.TCPAddr {
	t.Helper()
	return testnet.ServeTCP(t, func(c net.Conn) {
		io.WriteString(c, "220 greeter ready\r\n")
		io.Copy(c, c)
	})
}

type fixture struct {
	ns     *testNetns
	srv    *Server
	rec    *recorder
	names  *names.Table
	greet  *net.TCPAddr
	web    *httptest.Server // plain HTTP
	tlsWeb *httptest.Server
	pol    atomic.Pointer[policy.Policy]
	seen   chan string // the r.Host of each request web served
}

func portOf(u string) string {
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://"))
	return p
}

func newFixture(t *testing.T) *fixture {
	ns := newTestNetns(t)
	f := &fixture{ns: ns, names: &names.Table{}, greet: greeter(t), seen: make(chan string, 100)}
	f.web = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case f.seen <- r.Host:
		default:
		}
		fmt.Fprintf(w, "hello %s", r.Host)
	}))
	t.Cleanup(f.web.Close)
	f.tlsWeb = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello tls %s", r.TLS.ServerName)
	}))
	t.Cleanup(f.tlsWeb.Close)
	yaml := fmt.Sprintf(`version: 1
default: deny
allow:
  - cidr: 127.0.0.1
    ports: [%d]
  - host: web.test
    ports: [%s]
  - host: tls.test
    ports: [%s]
deny:
  - host: evil.test
    reason: "evil.test is off limits: ask #netops"
`, f.greet.Port, portOf(f.web.URL), portOf(f.tlsWeb.URL))
	pol, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	res := mapResolver{
		"web.test":   {netip.MustParseAddr("127.0.0.1")},
		"tls.test":   {netip.MustParseAddr("127.0.0.1")},
		"other.test": {netip.MustParseAddr("127.0.0.1")},
		"far.test":   {netip.MustParseAddr("192.0.2.7")}, // resolves elsewhere
	}
	rec, sink := newRecorder(t)
	f.rec = rec
	f.pol.Store(pol)
	current := f.pol.Load
	f.srv = &Server{
		Policy:      current,
		Dialer:      &dialer.Dialer{Policy: current, Resolver: res, Timeout: 2 * time.Second},
		Names:       f.names,
		PeekTimeout: 100 * time.Millisecond,
		Events:      sink,
		Logger:      zerolog.New(zerolog.NewTestWriter(t)),
	}
	go f.srv.Serve(ns.Listener)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		f.srv.Shutdown(ctx)
	})
	return f
}

// isReset reports whether err says the connection was reset (or closed
// without an answer): how a denied client sees the refusal.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}

func TestTransparent(t *testing.T) {
	f := newFixture(t)
	greetAddr := f.greet.String()
	webPort := portOf(f.web.URL)
	tlsPort := portOf(f.tlsWeb.URL)

	t.Run("a server-speaks-first connection to an allowed address is forwarded after the peek", func(t *testing.T) {
		c := f.ns.Dial(t, greetAddr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "220 greeter ready\r\n" {
			t.Fatalf("greeting = %q, %v", line, err)
		}
		fmt.Fprintf(c, "ping\n")
		c.(*net.TCPConn).CloseWrite()
		rest, _ := io.ReadAll(c)
		if string(rest) != "ping\n" {
			t.Fatalf("echo = %q", rest)
		}
		e := f.rec.next(t)
		if e.Proto != eventlog.ProtoTCP || !e.Decision.Allowed() || e.Decision.IP != netip.MustParseAddr("127.0.0.1") || e.BytesUp != 5 {
			t.Fatalf("entry = %+v", e)
		}
	})

	t.Run("a connection to an address no rule allows is reset at once", func(t *testing.T) {
		start := time.Now()
		c := f.ns.Dial(t, "127.0.0.1:9")
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if !isReset(err) {
			t.Fatalf("read = %v, want a reset", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("refused after %s", el)
		}
		e := f.rec.next(t)
		if e.Decision.Allowed() || e.Decision.Reason != policy.ReasonGuardLoopback || e.Decision.Hint == "" {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("an HTTP request naming an allowed host that resolves to the address is forwarded", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.1:"+webPort)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: web.test:%s\r\nConnection: close\r\n\r\n", webPort)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != 200 || string(body) != "hello web.test:"+webPort {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		e := f.rec.next(t)
		if e.Decision.Host != "web.test" || !e.Decision.Allowed() {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("TLS with an allowed SNI that resolves to the address is forwarded untouched", func(t *testing.T) {
		var c net.Conn
		var err error
		f.ns.Do(func() {
			c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", "127.0.0.1:"+tlsPort,
				&tls.Config{ServerName: "tls.test", InsecureSkipVerify: true})
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if string(body) != "hello tls tls.test" {
			t.Fatalf("body %q", body)
		}
		if e := f.rec.next(t); e.Decision.Host != "tls.test" || !e.Decision.Allowed() {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("an allowed SNI on a connection to an address the name does not own is denied (SNI spoofing)", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.2:"+tlsPort) // tls.test resolves to 127.0.0.1 only
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: "tls.test", InsecureSkipVerify: true})
		err := tc.Handshake()
		if err == nil {
			t.Fatal("handshake through a spoofed SNI succeeded")
		}
		e := f.rec.next(t)
		if e.Decision.Allowed() || e.Decision.Reason != policy.ReasonNameMismatch || e.Decision.Host != "tls.test" || e.Decision.IP != netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("an HTTP Host naming an allowed host on a connection elsewhere is denied", func(t *testing.T) {
		c := f.ns.Dial(t, "127.0.0.3:"+webPort)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("read = %v, want a reset", err)
		}
		if e := f.rec.next(t); e.Decision.Reason != policy.ReasonNameMismatch {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("an SNI that does not own an address allowed by cidr is ignored", func(t *testing.T) {
		c := f.ns.Dial(t, greetAddr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: "far.test", InsecureSkipVerify: true})
		tc.Handshake() // the greeter is no TLS server; only the decision matters
		c.Close()
		e := f.rec.next(t)
		if !e.Decision.Allowed() || e.Decision.Host != "" || e.Decision.Rule == nil || !e.Decision.Rule.Prefix.IsValid() {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("a denied SNI is denied on the name, whatever the address", func(t *testing.T) {
		c := f.ns.Dial(t, greetAddr) // the address is allowed by cidr
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: "evil.test", InsecureSkipVerify: true})
		if err := tc.Handshake(); err == nil {
			t.Fatal("handshake succeeded")
		}
		e := f.rec.next(t)
		if e.Decision.Allowed() || e.Decision.Host != "evil.test" || e.Decision.Reason != policy.ReasonDeniedByRule {
			t.Fatalf("entry = %+v", e.Decision)
		}
		// The rule's reason: is on the refusal's log line.
		var buf bytes.Buffer
		eventlog.Log(zerolog.New(&buf), e)
		if !strings.Contains(buf.String(), `"rule_reason":"evil.test is off limits: ask #netops"`) {
			t.Errorf("log line %s lacks the rule's reason", buf.String())
		}
	})

	t.Run("an address egress's DNS returned for an allowed name is allowed without a name in the stream", func(t *testing.T) {
		// db.test is allowed on the greeter's port, 127.0.0.4 is not.
		ln, err := net.Listen("tcp", "127.0.0.4:0")
		if err != nil {
			t.Skipf("cannot listen on 127.0.0.4: %v", err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				io.WriteString(c, "db hello\n")
				c.Close()
			}
		}()
		port := ln.Addr().(*net.TCPAddr).Port
		pol := f.pol.Load()
		yaml := fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - host: db.test\n    ports: [%d]\n", port)
		p2, err := policy.Load("db.yaml", []byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		f.pol.Store(p2)
		defer f.pol.Store(pol)

		// Unknown to DNS: denied on the bare address.
		c := f.ns.Dial(t, ln.Addr().String())
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("read = %v, want a reset", err)
		}
		if e := f.rec.next(t); e.Decision.Allowed() || e.Decision.Reason != policy.ReasonGuardLoopback {
			t.Fatalf("entry = %+v", e.Decision)
		}

		// Once egress's DNS answered db.test with it: allowed.
		f.names.Remember(netip.MustParseAddr("127.0.0.1"), "db.test", netip.MustParseAddr("127.0.0.4"), time.Minute)
		c = f.ns.Dial(t, ln.Addr().String())
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != "db hello\n" {
			t.Fatalf("read %q, %v", line, err)
		}
		if e := f.rec.next(t); !e.Decision.Allowed() || e.Decision.Host != "db.test" {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("IPv6 connections are caught and decided like IPv4", func(t *testing.T) {
		c := f.ns.Dial(t, "[2001:db8::1]:443")
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("read = %v, want a reset", err)
		}
		e := f.rec.next(t)
		if e.Decision.Allowed() || e.Decision.IP != netip.MustParseAddr("2001:db8::1") || e.Decision.Port != 443 {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("a connection straight to the listener is refused as not redirected", func(t *testing.T) {
		// Exempt from the redirect, as egress's own listeners are; the
		// reset may come before or after connect returns.
		var c net.Conn
		var err error
		f.ns.Do(func() {
			c, err = net.Dial("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(f.ns.Listener.Addr().(*net.TCPAddr).Port)))
		})
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !isReset(err) {
			t.Fatalf("got %v, want a reset", err)
		}
		if e := f.rec.next(t); e.Decision.Reason != policy.ReasonNotRedirected {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})

	t.Run("a tunnel idle longer than timeouts.tunnel_idle is closed", func(t *testing.T) {
		pol := f.pol.Load()
		yaml := fmt.Sprintf("version: 1\ndefault: deny\nallow:\n  - cidr: 127.0.0.1\n    ports: [%d]\ntimeouts:\n  tunnel_idle: 300ms\n", f.greet.Port)
		p2, err := policy.Load("idle.yaml", []byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		f.pol.Store(p2)
		defer f.pol.Store(pol)
		c := f.ns.Dial(t, greetAddr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := io.ReadAll(c); err != nil && !isReset(err) {
			t.Fatalf("read: %v", err)
		}
		if el := time.Since(start); el < 300*time.Millisecond || el > 3*time.Second {
			t.Fatalf("closed after %s, want about 300ms", el)
		}
		if e := f.rec.next(t); e.Err == nil || !strings.Contains(e.Err.Error(), "idle") {
			t.Fatalf("entry err = %v", e.Err)
		}
	})

	t.Run("a client that connects and closes at once is forwarded and recorded", func(t *testing.T) {
		c := f.ns.Dial(t, greetAddr)
		c.Close()
		if e := f.rec.next(t); !e.Decision.Allowed() || e.Decision.Port != uint16(f.greet.Port) {
			t.Fatalf("entry = %+v", e.Decision)
		}
	})
}

// serveOnLoopback serves srv on a loopback listener until the test ends,
// then shuts it down (2 s); it returns srv's address.
func serveOnLoopback(t testing.TB, srv *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return l.Addr().String()
}
