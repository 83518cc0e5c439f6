package proxyproto

import (
	"bufio"
	"bytes"
	"errors"
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
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve starts an HTTP server behind a PROXY protocol Listener whose
// handler answers with the RemoteAddr it sees.
func serve(t *testing.T, configure func(*Listener)) (addr string, logs *syncBuffer) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncBuffer{}
	l := &Listener{Listener: raw, Logger: zerolog.New(zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t)))}
	if configure != nil {
		configure(l)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return raw.Addr().String(), logs
}

// roundTrip writes prefix and a GET in one write, as a balancer that
// forwards the header together with the first bytes of the client, and
// returns the response body or the error.
func roundTrip(t *testing.T, addr string, prefix []byte) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := append(append([]byte{}, prefix...), "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"...)
	if _, err := c.Write(msg); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestHeaderSetsRemoteAddr(t *testing.T) {
	addr, _ := serve(t, nil)
	v4src := netip.MustParseAddrPort("203.0.113.7:51000")
	v4dst := netip.MustParseAddrPort("198.51.100.1:3128")
	v6src := netip.MustParseAddrPort("[2001:db8::7]:51000")
	v6dst := netip.MustParseAddrPort("[2001:db8::1]:3128")
	tests := []struct {
		name   string
		header []byte
		want   string
	}{
		{"a v1 TCP4 header gives its source", AppendV1(nil, v4src, v4dst), "203.0.113.7:51000"},
		{"a v1 TCP6 header gives its source", AppendV1(nil, v6src, v6dst), "[2001:db8::7]:51000"},
		{"a v2 IPv4 header gives its source", AppendV2(nil, v4src, v4dst), "203.0.113.7:51000"},
		{"a v2 IPv6 header gives its source", AppendV2(nil, v6src, v6dst), "[2001:db8::7]:51000"},
		{"a v2 header with TLVs gives its source", withTLV(AppendV2(nil, v4src, v4dst)), "203.0.113.7:51000"},
		{"a v1 UNKNOWN header keeps the peer address", []byte("PROXY UNKNOWN\r\n"), "127.0.0.1:"},
		{"a v2 LOCAL header keeps the peer address", local(), "127.0.0.1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := roundTrip(t, addr, tt.header)
			if err != nil {
				t.Fatalf("request failed: %v", err)
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("server saw RemoteAddr %q, want %q", got, tt.want)
			}
		})
	}
}

// withTLV adds a 7-byte TLV (PP2_TYPE_AUTHORITY "x.y") to a v2 header.
func withTLV(h []byte) []byte {
	h = append(h, 0x02, 0x00, 0x03, 'x', '.', 'y')
	n := int(h[14])<<8 | int(h[15])
	n += 6
	h[14], h[15] = byte(n>>8), byte(n)
	return h
}

func local() []byte {
	return append(append([]byte{}, v2Sig...), 0x20, 0x00, 0x00, 0x00)
}

func TestBadOrMissingHeaderClosesTheConnection(t *testing.T) {
	tests := []struct {
		name   string
		header []byte
		reason string
	}{
		{"a plain HTTP request without a header", nil, "no proxy protocol header"},
		{"a v1 header with a bad port", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 99999 3128\r\n"), "bad port"},
		{"a v1 header with a leading-zero port", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 0443 3128\r\n"), "bad port"},
		{"a v1 TCP4 header with IPv6 addresses", []byte("PROXY TCP6 203.0.113.7 198.51.100.1 1 2\r\n"), "does not match"},
		{"a v1 header without CRLF", []byte("PROXY TCP4 203.0.113.7 198.51.100.1 1 2\n"), "bad proxy protocol header"},
		{"a v1 header too long", []byte("PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n"), "no CRLF within 107 bytes"},
		{"a v2 header of a UNIX socket", append(append([]byte{}, v2Sig...), 0x21, 0x31, 0, 0), "address family"},
		{"a v2 header of version 3", append(append([]byte{}, v2Sig...), 0x31, 0x11, 0, 0), "version 3"},
		{"a v2 header with a short address block", append(append([]byte{}, v2Sig...), 0x21, 0x11, 0, 4, 1, 2, 3, 4), "short ipv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, logs := serve(t, nil)
			got, err := roundTrip(t, addr, tt.header)
			if err == nil {
				t.Fatalf("request answered (%q), want the connection closed", got)
			}
			testwait.UntilNil(t, testwait.Timeout, func() error {
				if !strings.Contains(logs.String(), tt.reason) {
					return fmt.Errorf("log does not give the reason %q:\n%s", tt.reason, logs.String())
				}
				return nil
			})
			if !strings.Contains(logs.String(), "proxy protocol: connection closed") {
				t.Errorf("log does not say the connection was closed:\n%s", logs.String())
			}
		})
	}
}

func TestSilentClientTimesOutWithoutBlockingOthers(t *testing.T) {
	addr, logs := serve(t, func(l *Listener) { l.HeaderTimeout = 300 * time.Millisecond })
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Another client is served while the silent one holds its handshake.
	src := netip.MustParseAddrPort("203.0.113.9:1234")
	if got, err := roundTrip(t, addr, AppendV1(nil, src, netip.MustParseAddrPort("198.51.100.1:3128"))); err != nil || got != src.String() {
		t.Fatalf("second client: %q %v", got, err)
	}
	silent.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = silent.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("silent connection: read returned %v, want it closed by the server's header timeout", err)
	}
	if !strings.Contains(logs.String(), "i/o timeout") {
		t.Errorf("log does not give the timeout:\n%s", logs.String())
	}
}

func TestUntrustedPeerIsRefused(t *testing.T) {
	addr, logs := serve(t, func(l *Listener) {
		l.Trusted = func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.1") }
	})
	src := netip.MustParseAddrPort("203.0.113.7:1")
	if got, err := roundTrip(t, addr, AppendV1(nil, src, src)); err == nil {
		t.Fatalf("untrusted peer served: %q", got)
	}
	testwait.Until(t, testwait.Timeout, "the log to say the peer is not trusted", func() bool { return strings.Contains(logs.String(), "not trusted") })
}

func TestCloseUnblocksAccept(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Listener: raw}
	errc := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		errc <- err
	}()
	testwait.UntilBlockedIn(t, testwait.Timeout, "github.com/egress-proxy/egress/proxy/proxyproto.(*Listener).Accept")
	l.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
}

func FuzzReadHeader(f *testing.F) {
	src, dst := netip.MustParseAddrPort("203.0.113.7:51000"), netip.MustParseAddrPort("198.51.100.1:3128")
	f.Add(AppendV1(nil, src, dst))
	f.Add(AppendV2(nil, src, dst))
	f.Add(withTLV(AppendV2(nil, src, dst)))
	f.Add(local())
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			return
		}
		if h.Version != 1 && h.Version != 2 {
			t.Fatalf("version %d", h.Version)
		}
		if h.Source.IsValid() != h.Dest.IsValid() {
			t.Fatalf("source %v, dest %v: one without the other", h.Source, h.Dest)
		}
		if h.Source.IsValid() && h.Version == 1 {
			// A v1 header parses back to itself.
			again, err := ReadHeader(bufio.NewReader(bytes.NewReader(AppendV1(nil, h.Source, h.Dest))))
			if err != nil || again != h {
				t.Fatalf("round trip of %+v: %+v, %v", h, again, err)
			}
		}
	})
}
