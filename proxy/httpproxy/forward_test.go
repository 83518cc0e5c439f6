package httpproxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/httpproxy"
)

// countingOrigin is an HTTP origin on 127.0.0.1 that counts the
// connections it accepted and those that were closed.
type countingOrigin struct {
	*httptest.Server
	opened, closed atomic.Int32
	closedCh       chan struct{} // one value per closed connection
}

func newCountingOrigin(t *testing.T, h http.Handler) *countingOrigin {
	t.Helper()
	o := &countingOrigin{closedCh: make(chan struct{}, 100)}
	o.Server = httptest.NewUnstartedServer(h)
	o.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			o.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			o.closed.Add(1)
			o.closedCh <- struct{}{}
		}
	}
	o.Start()
	t.Cleanup(o.Close)
	return o
}

// waitClosed waits for n connections of o to be closed.
func (o *countingOrigin) waitClosed(t *testing.T, n int, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for o.closed.Load() < int32(n) {
		select {
		case <-o.closedCh:
		case <-deadline:
			t.Fatalf("%d of the origin's connections closed after %v, want %d", o.closed.Load(), d, n)
		}
	}
}

// swappablePolicy makes the proxy and its dialer read the policy from cur,
// which it sets to the fixture's: a test stores another to reload.
func swappablePolicy(cur *atomic.Pointer[policy.Policy]) option {
	return func(f *fixture) {
		cur.Store(f.proxy.Policy())
		f.proxy.Policy = cur.Load
		f.dialer.Policy = cur.Load
	}
}

func okHandler(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) }

// get sends one GET for url through f on a new client connection.
func (f *fixture) get(t *testing.T, url string, extra string) (*http.Response, string) {
	t.Helper()
	resp, body, _, _ := f.raw("GET " + url + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n")
	return resp, body
}

func TestUpstreamPool(t *testing.T) {
	t.Run("requests from different client connections reuse one upstream connection", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		for i := range 5 {
			if resp, body := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 || body != "ok /" {
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
			}
		}
		if n := o.opened.Load(); n != 1 {
			t.Errorf("origin accepted %d connections for 5 sequential requests, want 1", n)
		}
	})

	t.Run("a clients: entry has a pool of its own", func(t *testing.T) {
		f := newFixture(t, testPolicy+`clients:
  - name: vendor-a
    users: [vendor-a]
    default: deny
    allow:
      - cidr: 127.0.0.1/32
`)
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		asVendor := "Proxy-Authorization: Basic dmVuZG9yLWE6c2VjcmV0\r\n"
		for _, extra := range []string{"", asVendor, "", asVendor} {
			if resp, _ := f.get(t, o.URL+"/", extra); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		if n := o.opened.Load(); n != 2 {
			t.Errorf("origin accepted %d connections, want 2: one per clients: entry, each reused", n)
		}
	})

	t.Run("a reload closes idle connections and a revoked destination is not reached", func(t *testing.T) {
		cur := &atomic.Pointer[policy.Policy]{}
		f := newFixture(t, testPolicy, swappablePolicy(cur))
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		if resp, _ := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		// Same rules, new policy: a new pool, the old connection closed.
		cur.Store(loadPolicy(t, testPolicy))
		if resp, _ := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		o.waitClosed(t, 1, 5*time.Second)
		if n := o.opened.Load(); n != 2 {
			t.Errorf("origin accepted %d connections, want 2 (one per policy)", n)
		}
		// A policy that no longer allows the origin's address: the
		// connection pooled under the last policy is closed at the
		// reload (serve calls CloseIdleConnections) and the request
		// refused.
		cur.Store(loadPolicy(t, "version: 1\ndefault: allow\n"))
		f.proxy.CloseIdleConnections()
		o.waitClosed(t, 2, 5*time.Second)
		resp, body := f.get(t, o.URL+"/", "")
		if resp.StatusCode != 403 {
			t.Fatalf("after revoking 127.0.0.1: %d %q, want 403", resp.StatusCode, body)
		}
		o.waitClosed(t, 2, 5*time.Second)
		if n := o.opened.Load(); n != 2 {
			t.Errorf("origin accepted %d connections, want no new one", n)
		}
	})

	t.Run("a connection pooled under one policy is not reused under the next, which refuses its address", func(t *testing.T) {
		cur := &atomic.Pointer[policy.Policy]{}
		f := newFixture(t, testPolicy, swappablePolicy(cur))
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		url := "http://origin.test:" + portOf(o.URL) + "/"
		if resp, _ := f.get(t, url, ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		// The name still passes step one; its address does not. No
		// CloseIdleConnections: the pools themselves must keep apart.
		cur.Store(loadPolicy(t, "version: 1\ndefault: allow\ndeny:\n  - cidr: 127.0.0.1/32\n"))
		resp, body := f.get(t, url, "")
		if resp.StatusCode != 403 || resp.Header.Get("X-Egress-Reason") != "denied_by_rule" {
			t.Fatalf("after the reload: %d %q, want a 403 decided on the address", resp.StatusCode, body)
		}
		if n := o.opened.Load(); n != 1 {
			t.Errorf("origin accepted %d connections, want 1", n)
		}
	})

	t.Run("shutdown closes idle connections", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		if resp, _ := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.proxy.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		o.waitClosed(t, 1, 5*time.Second)
	})

	t.Run("an idle connection is closed after the idle timeout", func(t *testing.T) {
		t.Cleanup(httpproxy.SetUpstreamIdleTimeout(200 * time.Millisecond))
		f := newFixture(t, testPolicy)
		o := newCountingOrigin(t, http.HandlerFunc(okHandler))
		if resp, _ := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		o.waitClosed(t, 1, 5*time.Second)
	})

	t.Run("an idempotent request is sent again when the origin closes the pooled connection as it arrives", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		// Each connection answers one request, then takes the next
		// and closes without a word: the race of an idle timeout on
		// the origin's side with a request on its way.
		var accepted atomic.Int32
		url := "http://" + testnet.ServeTCP(t, func(c net.Conn) {
			accepted.Add(1)
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			http.ReadRequest(br)
		}).String() + "/"
		if resp, _ := f.get(t, url, ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		for i, method := range []string{"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} {
			resp, body, _, _ := f.raw(method + " " + url + " HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 {
				t.Fatalf("%s on a connection the origin closed: %d %q, want 200 from a second connection", method, resp.StatusCode, body)
			}
			if n := accepted.Load(); n != int32(i+2) {
				t.Fatalf("%s: origin accepted %d connections, want %d", method, n, i+2)
			}
		}
		// A POST is not sent twice: the client learns what happened.
		resp, body, _, _ := f.raw("POST " + url + " HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
		if resp.StatusCode != 502 || !strings.Contains(body, "connection closed before a response") && !strings.Contains(body, "EOF") {
			t.Errorf("POST on a connection the origin closed: %d %q, want a 502", resp.StatusCode, body)
		}
	})

	t.Run("a POST does not take a pooled connection the origin closed", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }))
		if resp, _ := f.get(t, o.URL+"/", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		o.CloseClientConnections()
		o.waitClosed(t, 1, 5*time.Second)
		resp, body, _, _ := f.raw("POST " + o.URL + "/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
		if resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("POST after the origin closed the pooled connection: %d %q", resp.StatusCode, body)
		}
	})
}

// rawOrigin accepts connections on 127.0.0.1, reads a request head on
// each and writes answer.
func rawOrigin(t *testing.T, answer func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	return "http://" + testnet.ServeTCP(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		answer(c, br)
	}).String()
}

func TestResponseHeaderTooLargeIs502(t *testing.T) {
	f := newFixture(t, testPolicy)
	url := rawOrigin(t, func(c net.Conn, _ *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 2<<20)+"\r\nContent-Length: 0\r\n\r\n")
	})
	line, resp, _ := statusLine(t, f, "GET "+url+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	host := strings.TrimPrefix(url, "http://")
	want := "HTTP/1.1 502 egress got a bad response from " + host + ": response header larger than 1024 KiB (id " + resp.Header.Get("X-Egress-Id") + ")"
	if line != want {
		t.Errorf("status line\n%q, want\n%q", line, want)
	}
	if resp.StatusCode != 502 {
		t.Errorf("status %d", resp.StatusCode)
	}
}

func TestHopByHopHeaders(t *testing.T) {
	f := newFixture(t, testPolicy)
	var got http.Header
	var gotHost string
	o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, gotHost = r.Header.Clone(), r.Host
		w.Header().Set("Connection", "X-Bar")
		w.Header().Set("X-Bar", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End", "kept")
		io.WriteString(w, "ok")
	}))
	resp, body := f.get(t, o.URL+"/", "Connection: X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic dmVuZG9yLWE6c2VjcmV0\r\nTe: gzip\r\nX-Kept: yes\r\n")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	for _, h := range []string{"Connection", "X-Foo", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te"} {
		if v, ok := got[h]; ok {
			t.Errorf("origin got hop-by-hop %s: %q", h, v)
		}
	}
	if got.Get("X-Kept") != "yes" {
		t.Errorf("origin did not get X-Kept: %v", got)
	}
	if want := strings.TrimPrefix(o.URL, "http://"); gotHost != want {
		t.Errorf("origin got Host %q, want the URI's %q", gotHost, want)
	}
	for _, h := range []string{"X-Bar", "Keep-Alive"} {
		if v, ok := resp.Header[h]; ok {
			t.Errorf("client got hop-by-hop %s: %q", h, v)
		}
	}
	if resp.Header.Get("X-End") != "kept" {
		t.Errorf("client did not get X-End: %v", resp.Header)
	}
}

func TestStreaming(t *testing.T) {
	t.Run("a chunked response reaches the client as it comes", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		release := make(chan struct{})
		o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "first;")
			w.(http.Flusher).Flush()
			<-release
			io.WriteString(w, "second")
		}))
		c, br := f.dial()
		io.WriteString(c, "GET "+o.URL+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("first;"))
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first;" {
			t.Fatalf("first piece %q %v before the origin finished", buf, err)
		}
		close(release)
		rest, _ := io.ReadAll(resp.Body)
		if string(rest) != "second" {
			t.Errorf("rest %q", rest)
		}
	})

	t.Run("a chunked request body reaches the origin as it comes", func(t *testing.T) {
		f := newFixture(t, testPolicy)
		gotFirst := make(chan string, 1)
		o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			buf := make([]byte, 6)
			io.ReadFull(r.Body, buf)
			gotFirst <- string(buf)
			rest, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s%s", buf, rest)
		}))
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", o.URL+"/", pr)
		done := make(chan struct{})
		var resp *http.Response
		var err error
		go func() { defer close(done); resp, err = f.client().Do(req) }()
		pw.Write([]byte("first;"))
		select {
		case s := <-gotFirst:
			if s != "first;" {
				t.Errorf("origin got %q", s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the origin did not get the first piece before the body ended")
		}
		pw.Write([]byte("second"))
		pw.Close()
		<-done
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "first;second" {
			t.Errorf("echo %q", b)
		}
	})

	t.Run("a large body goes up and down whole and is counted in the log", func(t *testing.T) {
		f := newFixture(t, testPolicy, logAllowed())
		o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }))
		const size = 32 << 20
		req, _ := http.NewRequest("PUT", o.URL+"/", io.LimitReader(neverEnding('x'), size))
		req.ContentLength = size
		resp, err := f.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			t.Fatalf("echoed %d bytes (%v), want %d", n, err, size)
		}
		line := f.logs.waitLine(t, "PUT", func(e map[string]any) bool { return e["method"] == "PUT" })
		if line["bytes_up"] != float64(size) || line["bytes_down"] != float64(size) {
			t.Errorf("log line %v, want bytes_up and bytes_down %d", line, size)
		}
	})
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestExpectContinue(t *testing.T) {
	f := newFixture(t, testPolicy)
	o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusUnauthorized) // without reading the body
			return
		}
		io.Copy(w, r.Body)
	}))
	t.Run("the origin's 100 lets the body go up", func(t *testing.T) {
		c, br := f.dial()
		io.WriteString(c, "POST "+o.URL+"/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		tp := textproto.NewReader(br)
		line, err := tp.ReadLine()
		if err != nil || line != "HTTP/1.1 100 Continue" {
			t.Fatalf("first line %q %v, want a 100 before the body is sent", line, err)
		}
		tp.ReadMIMEHeader()
		io.WriteString(c, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "hello" {
			t.Errorf("%d %q", resp.StatusCode, b)
		}
	})
	t.Run("the origin's final answer comes without the body", func(t *testing.T) {
		c, br := f.dial()
		io.WriteString(c, "POST "+o.URL+"/refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 401 {
			t.Errorf("status %d, want the origin's 401 without a 100", resp.StatusCode)
		}
	})
	t.Run("net/http's client with ExpectContinueTimeout", func(t *testing.T) {
		tr := &http.Transport{Proxy: http.ProxyURL(f.url), ExpectContinueTimeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("POST", o.URL+"/", strings.NewReader("hello"))
		req.Header.Set("Expect", "100-continue")
		start := time.Now()
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello" {
			t.Errorf("echo %q", b)
		}
		if time.Since(start) > 4*time.Second {
			t.Errorf("took %v: the 100 did not come through", time.Since(start))
		}
	})
}

func TestInformationalResponsesForwarded(t *testing.T) {
	f := newFixture(t, testPolicy)
	o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	}))
	var mu sync.Mutex
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprintf("%d %s", code, h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", o.URL+"/", nil)
	resp, err := f.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("1xx seen by the client: %q, want the 103 with its Link", got)
	}
	if string(b) != "final" || resp.Header.Get("Link") != "" {
		t.Errorf("final answer %q, Link %q", b, resp.Header.Get("Link"))
	}
}

func TestEarlyAnswerToALargeUpload(t *testing.T) {
	// The origin answers 413 without reading the body; the client has
	// sent part of it and waits. The answer must reach the client, and
	// the request must end, not wait for the rest of the body.
	f := newFixture(t, testPolicy, logAllowed())
	o := newCountingOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	c, br := f.dial()
	io.WriteString(c, "POST "+o.URL+"/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
	c.Write(make([]byte, 100<<10))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want the origin's 413", resp.StatusCode)
	}
	f.waitEnded(t, o.URL+"/upload", "the request did not end while the client held the rest of its body")
}

// waitEnded waits for the log line of the request for url: the request
// has ended.
func (f *fixture) waitEnded(t *testing.T, url, msg string) {
	t.Helper()
	testwait.Until(t, testwait.Timeout, msg, func() bool {
		for _, e := range f.logs.entries(t, "") {
			if e["url"] == url {
				return true
			}
		}
		return false
	})
}
