//go:build linux

package transparent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/answertest"
	"github.com/egress-proxy/egress/internal/testnet"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/dialer"
	"github.com/egress-proxy/egress/proxy/names"
	"github.com/egress-proxy/egress/proxy/tunnel"
)

// lateFixture is a transparent Server whose every connection goes to one
// origin at 127.0.0.1, allowed by address; web.test is allowed there and
// evil.test refused. PeekTimeout is short, so a client that waits longer
// than it before its first byte is a late one.
type lateFixture struct {
	srv  *Server
	addr string // the listener
	rec  *recorder
	pol  *atomic.Pointer[policy.Policy] // what srv.Policy returns: a store is a reload
}

const latePeek = 100 * time.Millisecond

func newLateFixture(t *testing.T, origin netip.AddrPort, held *Held, extra ...string) *lateFixture {
	t.Helper()
	return newOriginFixture(t, origin, held, fmt.Sprintf(`version: 1
default: deny
allow:
  - cidr: 127.0.0.1
    ports: [%d]
  - host: web.test
    ports: [%d]
deny:
  - host: evil.test
`, origin.Port(), origin.Port())+strings.Join(extra, ""))
}

// newOriginFixture is a lateFixture whose policy is yaml (p.yaml).
func newOriginFixture(t *testing.T, origin netip.AddrPort, held *Held, yaml string) *lateFixture {
	t.Helper()
	p, err := policy.Load("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	pol := &atomic.Pointer[policy.Policy]{}
	pol.Store(p)
	current := pol.Load
	res := mapResolver{"web.test": {netip.MustParseAddr("127.0.0.1")}, "evil.test": {netip.MustParseAddr("127.0.0.1")}}
	rec, sink := newRecorder(t)
	srv := &Server{
		Policy:      current,
		Dialer:      &dialer.Dialer{Policy: current, Resolver: res, Timeout: 2 * time.Second},
		Names:       &names.Table{},
		PeekTimeout: latePeek,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return origin, nil },
		Events:      sink,
		Logger:      zerolog.New(zerolog.NewTestWriter(t)),
		Held:        held,
	}
	addr := serveOnLoopback(t, srv)
	return &lateFixture{srv: srv, addr: addr, rec: rec, pol: pol}
}

// dialLate connects and lets the peek time pass with the client silent:
// what it sends next is late. The pause is the client under test (one
// that speaks after the first-bytes wait), not a wait for a result.
func (f *lateFixture) dialLate(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	time.Sleep(3 * latePeek) // the late client under test: silent past the peek
	return c
}

// hostOrigin is a net/http origin that reports every Host it served.
func hostOrigin(t *testing.T) (netip.AddrPort, <-chan string) {
	seen := make(chan string, 100)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Host
		io.WriteString(w, "hello "+r.Host)
	}))
	t.Cleanup(web.Close)
	return netip.MustParseAddrPort(web.Listener.Addr().String()), seen
}

// Issue 18: a client that sends its first bytes late but completely is
// decided when they come, as a prompt one is. A late HTTP/1 first request
// is served and its connection gated for its whole life: a keep-alive
// second request naming a refused host is answered with egress's 403 and
// ends it, before it goes up.
func TestSecurityLateHTTPIsGatedForItsLife(t *testing.T) {
	origin, seen := hostOrigin(t)
	f := newLateFixture(t, origin, nil)
	web := "web.test:" + strconv.Itoa(int(origin.Port()))
	c := f.dialLate(t)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+web+"\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the late first request, for an allowed host, was not answered: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if h := <-seen; h != web {
		t.Fatalf("the origin served Host %q, want %q", h, web)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
	id := answertest.Refusal(t, br, "GET", "GET http://evil.test:"+strconv.Itoa(int(origin.Port()))+"/", string(policy.ReasonDeniedByRule))
	e := f.rec.next(t)
	if !e.Decision.Denied() || e.Decision.Host != "evil.test" || e.ID != id {
		t.Fatalf("entry = %+v, want a denial of evil.test, id %s", e, id)
	}
	select {
	case h := <-seen:
		t.Fatalf("the origin served Host %q after the refusal", h)
	default:
	}
}

// A late request line that comes in pieces is read whole and decided on
// what it names, or refused when it does not finish in time; in neither
// case does the origin serve the refused host.
func TestSecurityLateHTTPInPiecesIsDecided(t *testing.T) {
	origin, seen := hostOrigin(t)
	f := newLateFixture(t, origin, nil)
	for _, tc := range []struct {
		name  string
		pause time.Duration // between the two pieces: the slow client under test
	}{
		{"the rest within the peek time", 0},
		{"the rest after the peek time", 3 * latePeek},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dialLate(t)
			io.WriteString(c, "GE")
			time.Sleep(tc.pause) // the pause between the pieces is what is under test
			io.WriteString(c, "T / HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n")
			b, _ := io.ReadAll(c)
			e := f.rec.next(t)
			if !e.Decision.Denied() {
				t.Errorf("entry = %+v, want a denial (the client got %q)", e.Decision, b)
			}
			select {
			case h := <-seen:
				t.Fatalf("the origin served Host %q", h)
			default:
			}
		})
	}
}

// A late client whose first bytes are neither TLS nor HTTP (PostgreSQL's
// SSLRequest) is decided on the address and copied raw, whether the
// origin waits for it or greets it first.
func TestLateOtherProtocolsPass(t *testing.T) {
	ssl := "\x00\x00\x00\x08\x04\xd2\x16\x2f"
	for _, greeting := range []string{"", "220 ready\r\n"} {
		t.Run(fmt.Sprintf("greeting %q", greeting), func(t *testing.T) {
			echo := testnet.ServeTCP(t, func(c net.Conn) {
				io.WriteString(c, greeting)
				io.Copy(c, c)
			})
			f := newLateFixture(t, netip.MustParseAddrPort(echo.String()), nil)
			c := f.dialLate(t)
			br := bufio.NewReader(c)
			if greeting != "" {
				if l, err := br.ReadString('\n'); err != nil || l != greeting {
					t.Fatalf("greeting %q, %v", l, err)
				}
			}
			io.WriteString(c, ssl)
			b := make([]byte, len(ssl))
			if _, err := io.ReadFull(br, b); err != nil || string(b) != ssl {
				t.Fatalf("echo %q, %v", b, err)
			}
			c.Close()
			if e := f.rec.next(t); !e.Decision.Allowed() {
				t.Fatalf("entry = %+v, want allowed", e.Decision)
			}
		})
	}
}

// egress run's connect fidelity: an upstream dialled while the client's
// SYN was held (Prepare) is the one used, and a late client on it is read
// and decided as on a dialled one: its HTTP gated for its whole life, the
// greeting of an origin that speaks first passed on.
func TestLateClientOnHeldUpstream(t *testing.T) {
	var accepted atomic.Int64
	seen := make(chan string, 100)
	web := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Host
		io.WriteString(w, "hello "+r.Host)
	}))
	web.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepted.Add(1)
		}
	}
	web.Start()
	t.Cleanup(web.Close)
	greeter := testnet.ServeTCP(t, func(c net.Conn) {
		accepted.Add(1)
		io.WriteString(c, "220 ready\r\n")
		io.Copy(c, c)
	})

	// dialHeld connects from a port of its own after Prepare held an
	// upstream for that port, as the held SYN's handler does.
	dialHeld := func(t *testing.T, f *lateFixture, dst netip.AddrPort) net.Conn {
		t.Helper()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		from := netip.MustParseAddrPort(l.Addr().String())
		l.Close()
		if o := f.srv.Prepare(context.Background(), from, dst); o != Connected {
			t.Fatalf("Prepare = %d, want Connected", o)
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(from)}
		c, err := d.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}

	t.Run("a late HTTP client is gated for its life", func(t *testing.T) {
		origin := netip.MustParseAddrPort(web.Listener.Addr().String())
		f := newLateFixture(t, origin, &Held{})
		hostWeb := "web.test:" + strconv.Itoa(int(origin.Port()))
		before := accepted.Load()
		c := dialHeld(t, f, origin)
		time.Sleep(3 * latePeek) // the late client under test
		br := bufio.NewReader(c)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+hostWeb+"\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the late first request was not answered: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if h := <-seen; h != hostWeb {
			t.Fatalf("the origin served Host %q, want %q", h, hostWeb)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
		answertest.Refusal(t, br, "GET", "GET http://evil.test:"+strconv.Itoa(int(origin.Port()))+"/", string(policy.ReasonDeniedByRule))
		if e := f.rec.next(t); !e.Decision.Denied() || e.Decision.Host != "evil.test" {
			t.Fatalf("entry = %+v, want a denial of evil.test", e.Decision)
		}
		if n := accepted.Load() - before; n != 1 {
			t.Errorf("the origin accepted %d connections, want the held one only", n)
		}
	})
	t.Run("an origin that speaks first greets a silent client", func(t *testing.T) {
		origin := netip.MustParseAddrPort(greeter.String())
		f := newLateFixture(t, origin, &Held{})
		before := accepted.Load()
		c := dialHeld(t, f, origin)
		br := bufio.NewReader(c)
		if l, err := br.ReadString('\n'); err != nil || l != "220 ready\r\n" {
			t.Fatalf("greeting %q, %v", l, err)
		}
		io.WriteString(c, "QUIT\r\n")
		if l, err := br.ReadString('\n'); err != nil || l != "QUIT\r\n" {
			t.Fatalf("echo %q, %v", l, err)
		}
		c.Close()
		if e := f.rec.next(t); !e.Decision.Allowed() {
			t.Fatalf("entry = %+v, want allowed", e.Decision)
		}
		if n := accepted.Load() - before; n != 1 {
			t.Errorf("the origin accepted %d connections, want the held one only", n)
		}
	})
}

// A client that never speaks to an origin that never speaks is waited
// for timeouts.tunnel_idle, then closed and logged, as on CONNECT.
func TestLateSilenceEndsAtTunnelIdle(t *testing.T) {
	silent := testnet.ServeTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	f := newLateFixture(t, netip.MustParseAddrPort(silent.String()), nil, "timeouts:\n  tunnel_idle: 300ms\n")
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %v, want the connection ended by egress", err)
	}
	e := f.rec.next(t)
	if !e.Decision.Allowed() || !errors.Is(e.Err, tunnel.ErrFirstMoveIdle) {
		t.Fatalf("entry = %+v, err %v; want the allowed connection ended by tunnel_idle", e.Decision, e.Err)
	}
}
