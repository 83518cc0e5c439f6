package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/internal/testwait"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/proxy/eventlog"
)

// tcpPair is both ends of one loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// lines collects recorded entries.
type lines struct {
	mu sync.Mutex
	es []eventlog.Entry
	ch chan eventlog.Entry
}

func newGroup(t *testing.T, set *Set) (*Group, *lines) {
	l := &lines{ch: make(chan eventlog.Entry, 100)}
	logger := zerolog.New(zerolog.NewTestWriter(t))
	// The lines are read through Observe, which sees a line before it is
	// logged: logging it to t could then write after the test returned.
	return &Group{Set: set, Logger: logger, Events: &eventlog.Sink{Logger: zerolog.Nop(), Observe: func(e eventlog.Entry) {
		l.mu.Lock()
		l.es = append(l.es, e)
		l.mu.Unlock()
		l.ch <- e
	}}}, l
}

func (l *lines) next(t *testing.T) eventlog.Entry {
	t.Helper()
	select {
	case e := <-l.ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no line within 5s")
	}
	return eventlog.Entry{}
}

func load(t *testing.T, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Load("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// open starts a tunnel between two loopback connections and returns the
// far ends: what the client and the upstream see.
func open(t *testing.T, g *Group, req policy.Request, idle time.Duration) (client, upstream net.Conn, tn *Tunnel) {
	t.Helper()
	c, cc := tcpPair(t)
	up, u := tcpPair(t)
	tn, err := g.Acquire(10)
	if err != nil {
		t.Fatal(err)
	}
	fill(tn, req)
	tn.Idle = idle
	tn.Start(cc, up)
	return c, u, tn
}

// fill sets what a data path sets before Start: an allowed request.
func fill(tn *Tunnel, req policy.Request) {
	tn.Entry = eventlog.Entry{ID: eventlog.NewID(), Proto: eventlog.ProtoConnect, Decision: policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonAllowedByRule, IP: req.IP, Port: req.Port}}
	tn.Began, tn.Request = time.Now(), req
}

func echoOnce(t *testing.T, client, upstream net.Conn) {
	t.Helper()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	upstream.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(upstream, b); err != nil || string(b) != "ping" {
		t.Fatalf("upstream read %q %v", b, err)
	}
	if _, err := upstream.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, b); err != nil || string(b) != "pong" {
		t.Fatalf("client read %q %v", b, err)
	}
}

// Closing a tunnel (Drain's deadline, Revoke, the idle watcher) while
// it is starting its copy must not race with the start: run with -race.
func TestCloseWhileStarting(t *testing.T) {
	g, _ := newGroup(t, nil)
	deny := load(t, "version: 1\ndefault: deny\n")
	for range 30 {
		c, cc := tcpPair(t)
		up, _ := tcpPair(t)
		tn, err := g.Acquire(100)
		if err != nil {
			t.Fatal(err)
		}
		fill(tn, policy.Request{IP: netip.MustParseAddr("127.0.0.1"), Port: 1})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 50 {
				g.set.Revoke(deny)
			}
		}()
		tn.Start(cc, up)
		<-done
		// The revokes above may all have come before the tunnel joined
		// the set: this one cannot, so every tunnel ends.
		g.set.Revoke(deny)
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v (%d open)", err, g.Open())
	}
}

func TestTunnel(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	t.Run("bytes flow both ways and are counted on the one line", func(t *testing.T) {
		g, l := newGroup(t, nil)
		c, u, _ := open(t, g, policy.Request{IP: lo, Port: 1}, 0)
		echoOnce(t, c, u)
		c.Close()
		u.Close()
		e := l.next(t)
		if e.BytesUp != 4 || e.BytesDown != 4 || e.Err != nil {
			t.Errorf("line: up %d down %d err %v; want 4, 4, none", e.BytesUp, e.BytesDown, e.Err)
		}
	})
	t.Run("groups of one set share the limit", func(t *testing.T) {
		set := &Set{}
		a, _ := newGroup(t, set)
		b, _ := newGroup(t, set)
		ta, err := a.Acquire(1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Acquire(1); !errors.Is(err, ErrTooMany) {
			t.Fatalf("second group's Acquire at the limit: %v, want ErrTooMany", err)
		}
		ta.Release()
		if _, err := b.Acquire(1); err != nil {
			t.Fatalf("after Release: %v", err)
		}
	})
	t.Run("a tunnel started after the drain deadline is closed at once", func(t *testing.T) {
		g, l := newGroup(t, nil)
		c, cc := tcpPair(t)
		up, _ := tcpPair(t)
		tn, err := g.Acquire(10)
		if err != nil {
			t.Fatal(err)
		}
		fill(tn, policy.Request{IP: lo, Port: 1})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		drained := make(chan error, 1)
		go func() { drained <- g.Drain(ctx) }()
		// Past the deadline once Acquire refuses.
		testwait.Until(t, testwait.Timeout, "Drain to pass its deadline", func() bool {
			other, err := g.Acquire(10)
			if err == nil {
				other.Release()
			}
			return errors.Is(err, ErrClosed)
		})
		tn.Start(cc, up)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("client read %v, want EOF", err)
		}
		if err := <-drained; !errors.Is(err, context.Canceled) {
			t.Errorf("Drain = %v", err)
		}
		if e := l.next(t); e.Err == nil {
			t.Error("the line does not say it was closed on shutdown")
		}
	})
	t.Run("the idle timeout closes a quiet tunnel", func(t *testing.T) {
		g, l := newGroup(t, nil)
		c, u, _ := open(t, g, policy.Request{IP: lo, Port: 1}, 300*time.Millisecond)
		echoOnce(t, c, u)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("client read %v, want EOF", err)
		}
		if e := l.next(t); e.Err == nil {
			t.Error("the line does not say why it closed")
		}
	})
	t.Run("connections that are not TCP are copied on goroutines", func(t *testing.T) {
		g, l := newGroup(t, nil)
		c, cc := net.Pipe()
		up, u := net.Pipe()
		tn, err := g.Acquire(10)
		if err != nil {
			t.Fatal(err)
		}
		fill(tn, policy.Request{IP: lo, Port: 1})
		tn.Start(cc, up)
		echoOnce(t, c, u)
		c.Close()
		if e := l.next(t); e.BytesUp != 4 || e.BytesDown != 4 {
			t.Errorf("line: up %d down %d; want 4, 4", e.BytesUp, e.BytesDown)
		}
	})
	t.Run("a revoked tunnel closes with reason revoked and the new rule", func(t *testing.T) {
		g, l := newGroup(t, nil)
		c, u, _ := open(t, g, policy.Request{Host: "db.test", IP: lo, Port: 5432}, 0)
		kc, ku, _ := open(t, g, policy.Request{Host: "api.test", IP: lo, Port: 443}, 0)
		pol := load(t, "version: 1\ndefault: allow\nallow:\n  - cidr: 127.0.0.1/32\ndeny:\n  - host: db.test\n")
		if n := g.set.Revoke(pol); n != 1 {
			t.Fatalf("Revoke closed %d, want 1", n)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("client read %v, want EOF", err)
		}
		u.Close()
		e := l.next(t)
		d := e.Decision
		if d.Reason != policy.ReasonRevoked || d.Verdict != policy.Deny || d.RuleLocation() != "test.yaml:6" || d.Hint == "" {
			t.Errorf("line: %s %s rule %q hint %q; want deny revoked test.yaml:6 with a hint", d.Verdict, d.Reason, d.RuleLocation(), d.Hint)
		}
		echoOnce(t, kc, ku) // the allowed one stays
	})
}

// notTCP hides a connection's socket, as a TLS connection does not: the
// tunnel copies it on goroutines and cannot read its idle time from
// TCP_INFO. It can half-close, as a *tls.Conn can.
type notTCP struct{ net.Conn }

func (c notTCP) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// Issue 19: a tunnel whose client has gone while its origin stays silent
// was kept forever (the proxy's end in CLOSE-WAIT, the slot counted
// against limits.max_tunnels). Once one side has ended its direction, the
// other gets timeouts.half_close of silence.
func TestHalfClosedTunnel(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, path := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"spliced on the poller", func(c net.Conn) net.Conn { return c }},
		{"copied on goroutines", func(c net.Conn) net.Conn { return notTCP{c} }},
	} {
		t.Run(path.name, func(t *testing.T) {
			t.Run("a client gone while its origin stays silent frees the tunnel after half_close", func(t *testing.T) {
				set := &Set{}
				g, l := newGroup(t, set)
				c, cc := tcpPair(t)
				up, u := tcpPair(t)
				tn, err := g.Acquire(10)
				if err != nil {
					t.Fatal(err)
				}
				fill(tn, policy.Request{IP: lo, Port: 1})
				tn.HalfClose = 300 * time.Millisecond
				began := time.Now()
				tn.Start(path.wrap(cc), path.wrap(up))
				echoOnce(t, c, u)
				c.Close() // gone; the origin neither answers nor closes
				e := l.next(t)
				if el := time.Since(began); el < 300*time.Millisecond {
					t.Errorf("closed after %v, before half_close", el)
				}
				if e.BytesUp != 4 || e.BytesDown != 4 || e.Err == nil || !strings.Contains(e.Err.Error(), "half_close") {
					t.Errorf("line: up %d down %d err %v; want 4, 4, an error naming half_close", e.BytesUp, e.BytesDown, e.Err)
				}
				testwait.Until(t, testwait.Timeout, "its max_tunnels slot freed", func() bool { return set.Open() == 0 })
				u.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := u.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
					t.Errorf("origin read %v, want EOF: the tunnel's end is closed", err)
				}
			})
			t.Run("an answer still flowing to a half-closed client keeps the tunnel", func(t *testing.T) {
				g, l := newGroup(t, nil)
				c, cc := tcpPair(t)
				up, u := tcpPair(t)
				tn, err := g.Acquire(10)
				if err != nil {
					t.Fatal(err)
				}
				fill(tn, policy.Request{IP: lo, Port: 1})
				tn.HalfClose = 300 * time.Millisecond
				tn.Start(path.wrap(cc), path.wrap(up))
				if err := c.CloseWrite(); err != nil { // request sent, answer awaited
					t.Fatal(err)
				}
				u.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := u.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
					t.Fatalf("origin read %v, want EOF (the client's half-close)", err)
				}
				// The origin answers slowly: a chunk every 100 ms for
				// 800 ms, longer than half_close. The pacing is what is
				// under test, not a wait for a result.
				go func() {
					for range 8 {
						if _, err := u.Write([]byte("x")); err != nil {
							return
						}
						time.Sleep(100 * time.Millisecond) // the origin's pacing under test: activity within half_close
					}
				}()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				got, err := io.ReadAll(c)
				if len(got) != 8 || err != nil {
					t.Errorf("client read %d bytes, %v; want all 8, then EOF once the origin fell silent", len(got), err)
				}
				if e := l.next(t); e.BytesDown != 8 || e.Err == nil {
					t.Errorf("line: down %d err %v; want 8 and half_close", e.BytesDown, e.Err)
				}
			})
			t.Run("drain does not wait for a tunnel whose client has gone", func(t *testing.T) {
				g, l := newGroup(t, nil)
				c, cc := tcpPair(t)
				up, _ := tcpPair(t)
				tn, err := g.Acquire(10)
				if err != nil {
					t.Fatal(err)
				}
				fill(tn, policy.Request{IP: lo, Port: 1})
				tn.HalfClose = time.Hour
				tn.Start(path.wrap(cc), path.wrap(up))
				c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				began := time.Now()
				if err := g.Drain(ctx); err != nil {
					t.Fatalf("Drain = %v after %v, want nil: it waited for a client that has gone", err, time.Since(began))
				}
				if e := l.next(t); e.Err == nil {
					t.Error("the line does not say why it closed")
				}
			})
		})
	}
}
