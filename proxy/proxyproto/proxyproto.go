// Package proxyproto accepts the PROXY protocol (versions 1 and 2) on a
// listener, for egress running behind a load balancer that would otherwise
// hide the client's address.
//
// Listener wraps a net.Listener: each accepted connection must start with a
// PROXY header, which is read (with a timeout) before Accept returns the
// connection, so the HTTP server never sees a connection without one. The
// returned connection's RemoteAddr is the client address from the header;
// per-client policies and allow_from then apply to it. A missing or bad
// header closes the connection and logs why. A LOCAL (v2) or UNKNOWN (v1)
// header, which load balancers send for their own health checks, keeps the
// real peer address.
//
// Anyone who can connect to a PROXY protocol listener can claim any source
// address, so use Trusted (or a firewall) to accept headers only from the
// load balancer. It does not write PROXY headers and ignores v2 TLVs.
//
// Conn keeps the socket reachable (TCPConn, Buffered, CloseWrite), so
// that tunnels through it keep splice, the poller, half-close and the
// idle timeout (proxy/tunnel unwraps it).
//
// Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/proxy/accept"
)

// DefaultHeaderTimeout bounds the wait for the header of one connection.
const DefaultHeaderTimeout = 5 * time.Second

// v1 headers are at most 107 bytes, CRLF included (spec §2.1).
const maxV1 = 107

// v2Sig is the 12-byte signature of a v2 header (spec §2.2).
var v2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ErrNoHeader means the connection did not start with a PROXY header.
var ErrNoHeader = errors.New("no proxy protocol header")

// ErrBadHeader means the header was malformed or unsupported.
var ErrBadHeader = errors.New("bad proxy protocol header")

// Header is a parsed PROXY header. Source and Dest are invalid for a
// LOCAL or UNKNOWN header (keep the connection's own addresses).
type Header struct {
	Version int // 1 or 2
	Source  netip.AddrPort
	Dest    netip.AddrPort
}

// Listener wraps a net.Listener with PROXY protocol. Only Listener is
// required.
type Listener struct {
	net.Listener
	// HeaderTimeout bounds the wait for a header; 0 means
	// DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// Trusted, if set, says which peers may send a header; a connection
	// from any other peer is closed. Nil trusts every peer.
	Trusted func(netip.Addr) bool
	// Logger receives one line per refused connection.
	Logger zerolog.Logger

	once   sync.Once
	conns  chan net.Conn
	errc   chan error
	closed chan struct{}
	cmu    sync.Mutex
	isDone bool
}

var (
	_ net.Listener = (*Listener)(nil)
	_ net.Conn     = (*Conn)(nil)
)

func (l *Listener) init() {
	l.once.Do(func() {
		l.conns = make(chan net.Conn)
		l.errc = make(chan error, 1)
		l.closed = make(chan struct{})
		go l.acceptLoop()
	})
}

// acceptLoop accepts raw connections and reads each one's header in its
// own goroutine, so that a slow or silent client cannot hold up others.
func (l *Listener) acceptLoop() {
	err := accept.Loop(l.Listener, nil, l.Logger, "proxy protocol", l.handshake)
	select {
	case l.errc <- err:
	case <-l.closed:
	}
}

func (l *Listener) handshake(c net.Conn) {
	peer := addrPort(c.RemoteAddr())
	if l.Trusted != nil && !l.Trusted(peer.Addr()) {
		l.refuse(c, peer, errors.New("peer not trusted to send a proxy protocol header"))
		return
	}
	timeout := l.HeaderTimeout
	if timeout <= 0 {
		timeout = DefaultHeaderTimeout
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReaderSize(c, 256)
	h, err := ReadHeader(br)
	if err != nil {
		l.refuse(c, peer, err)
		return
	}
	c.SetReadDeadline(time.Time{})
	pc := &Conn{Conn: c, r: br, header: h}
	select {
	case l.conns <- pc:
	case <-l.closed:
		c.Close()
	}
}

func (l *Listener) refuse(c net.Conn, peer netip.AddrPort, err error) {
	l.Logger.Warn().Str("peer", peer.String()).Str("local", c.LocalAddr().String()).Err(err).
		Msg("proxy protocol: connection closed")
	c.Close()
}

// Accept returns the next connection whose header was read.
func (l *Listener) Accept() (net.Conn, error) {
	l.init()
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // every later Accept fails too
		return nil, err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener; connections still sending their header are
// closed.
func (l *Listener) Close() error {
	l.init()
	l.cmu.Lock()
	if !l.isDone {
		l.isDone = true
		close(l.closed)
	}
	l.cmu.Unlock()
	return l.Listener.Close()
}

// Conn is a connection whose PROXY header has been read. RemoteAddr and
// LocalAddr are the header's addresses when it carried any.
type Conn struct {
	net.Conn
	r      *bufio.Reader // holds bytes read past the header
	header Header
}

// Header is the header the connection started with.
func (c *Conn) Header() Header { return c.header }

// TCPConn is the TCP socket under c, nil if the listener's connections
// are not TCP. Like pires/go-proxyproto's Conn.TCPConn, it keeps what the
// wrapper would hide reachable: splice, TCP_INFO (the tunnel idle
// timeout), half-close and the tunnel poller all need the socket. Read
// the Buffered bytes through c first: they were read past the header.
func (c *Conn) TCPConn() *net.TCPConn {
	tc, _ := c.Conn.(*net.TCPConn)
	return tc
}

// Buffered is how many bytes past the header c has read from the socket
// and not yet returned from Read.
func (c *Conn) Buffered() int {
	if c.r == nil {
		return 0
	}
	return c.r.Buffered()
}

// CloseWrite half-closes the TCP socket under c.
func (c *Conn) CloseWrite() error {
	if tc := c.TCPConn(); tc != nil {
		return tc.CloseWrite()
	}
	return errors.New("proxyproto: CloseWrite: not a TCP connection")
}

func (c *Conn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil // drained: read the socket directly from now on
	}
	return c.Conn.Read(p)
}

// RemoteAddr is the client address of the header (a *net.TCPAddr), or
// the peer's for a LOCAL/UNKNOWN header.
func (c *Conn) RemoteAddr() net.Addr {
	if c.header.Source.IsValid() {
		return net.TCPAddrFromAddrPort(c.header.Source)
	}
	return c.Conn.RemoteAddr()
}

// LocalAddr is the destination address of the header, or the socket's.
func (c *Conn) LocalAddr() net.Addr {
	if c.header.Dest.IsValid() {
		return net.TCPAddrFromAddrPort(c.header.Dest)
	}
	return c.Conn.LocalAddr()
}

// ReadHeader reads a v1 or v2 header from r and nothing more.
func ReadHeader(r *bufio.Reader) (Header, error) {
	first, err := r.Peek(1)
	if err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrNoHeader, err)
	}
	switch first[0] {
	case 'P':
		return readV1(r)
	case '\r':
		return readV2(r)
	}
	return Header{}, ErrNoHeader
}

func readV1(r *bufio.Reader) (Header, error) {
	var line []byte
	for len(line) < maxV1 {
		b, err := r.ReadByte()
		if err != nil {
			return Header{}, fmt.Errorf("%w: v1: %w", ErrBadHeader, err)
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return Header{}, fmt.Errorf("%w: v1: no CRLF within %d bytes", ErrBadHeader, maxV1)
	}
	return ParseV1(string(line[:len(line)-2]))
}

// ParseV1 parses a v1 header line without its CRLF:
// "PROXY TCP4 192.0.2.1 192.0.2.2 56324 443".
func ParseV1(line string) (Header, error) {
	f := strings.Split(line, " ")
	if f[0] != "PROXY" {
		return Header{}, ErrNoHeader
	}
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		return Header{Version: 1}, nil // spec: ignore the rest
	}
	if len(f) != 6 {
		return Header{}, fmt.Errorf("%w: v1: want 6 fields, got %d", ErrBadHeader, len(f))
	}
	src, err1 := netip.ParseAddr(f[2])
	dst, err2 := netip.ParseAddr(f[3])
	sp, err3 := parsePort(f[4])
	dp, err4 := parsePort(f[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Header{}, fmt.Errorf("%w: v1: %w", ErrBadHeader, err)
	}
	switch {
	case f[1] == "TCP4" && src.Is4() && dst.Is4():
	case f[1] == "TCP6" && src.Is6() && dst.Is6() && src.Zone() == "" && dst.Zone() == "":
	default:
		return Header{}, fmt.Errorf("%w: v1: protocol %q does not match the addresses", ErrBadHeader, f[1])
	}
	return Header{Version: 1, Source: netip.AddrPortFrom(src, sp), Dest: netip.AddrPortFrom(dst, dp)}, nil
}

// parsePort parses a decimal port without sign or leading zeros, as the
// spec requires.
func parsePort(s string) (uint16, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || s[0] == '+' || s[0] == '-' {
		return 0, fmt.Errorf("bad port %q", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(n), nil
}

func readV2(r *bufio.Reader) (Header, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("%w: v2: %w", ErrBadHeader, err)
	}
	if !bytes.Equal(fixed[:12], v2Sig) {
		return Header{}, ErrNoHeader
	}
	n := int(binary.BigEndian.Uint16(fixed[14:16]))
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Header{}, fmt.Errorf("%w: v2: %w", ErrBadHeader, err)
	}
	return ParseV2(fixed, body)
}

// ParseV2 parses a v2 header: its 16 fixed bytes and the address block
// that follows (TLVs included, ignored).
func ParseV2(fixed [16]byte, body []byte) (Header, error) {
	if !bytes.Equal(fixed[:12], v2Sig) {
		return Header{}, ErrNoHeader
	}
	if ver := fixed[12] >> 4; ver != 2 {
		return Header{}, fmt.Errorf("%w: v2: version %d", ErrBadHeader, ver)
	}
	h := Header{Version: 2}
	switch cmd := fixed[12] & 0xf; cmd {
	case 0x0: // LOCAL: the balancer's own connection
		return h, nil
	case 0x1: // PROXY
	default:
		return Header{}, fmt.Errorf("%w: v2: command %#x", ErrBadHeader, cmd)
	}
	fam, proto := fixed[13]>>4, fixed[13]&0xf
	if proto != 0x1 && fam != 0x0 { // only STREAM carries a TCP client
		return Header{}, fmt.Errorf("%w: v2: transport %#x is not stream", ErrBadHeader, proto)
	}
	switch fam {
	case 0x0: // UNSPEC: keep the connection's addresses
		return h, nil
	case 0x1: // INET
		if len(body) < 12 {
			return Header{}, fmt.Errorf("%w: v2: short ipv4 address block", ErrBadHeader)
		}
		src := netip.AddrFrom4([4]byte(body[0:4]))
		dst := netip.AddrFrom4([4]byte(body[4:8]))
		h.Source = netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[8:10]))
		h.Dest = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[10:12]))
	case 0x2: // INET6
		if len(body) < 36 {
			return Header{}, fmt.Errorf("%w: v2: short ipv6 address block", ErrBadHeader)
		}
		src := netip.AddrFrom16([16]byte(body[0:16]))
		dst := netip.AddrFrom16([16]byte(body[16:32]))
		h.Source = netip.AddrPortFrom(src.Unmap(), binary.BigEndian.Uint16(body[32:34]))
		h.Dest = netip.AddrPortFrom(dst.Unmap(), binary.BigEndian.Uint16(body[34:36]))
	default: // UNIX sockets have no address a policy could use
		return Header{}, fmt.Errorf("%w: v2: address family %#x", ErrBadHeader, fam)
	}
	return h, nil
}

// AppendV1 appends a v1 header for src and dst (same family) to b. It is
// for tests and tools that play the load balancer.
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	fam := "TCP4"
	if src.Addr().Is6() {
		fam = "TCP6"
	}
	return fmt.Appendf(b, "PROXY %s %s %s %d %d\r\n", fam, src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// AppendV2 appends a v2 PROXY header for src and dst (same family) to b.
func AppendV2(b []byte, src, dst netip.AddrPort) []byte {
	b = append(b, v2Sig...)
	b = append(b, 0x21) // version 2, PROXY
	if src.Addr().Is4() {
		b = append(b, 0x11, 0, 12)
		s, d := src.Addr().As4(), dst.Addr().As4()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	} else {
		b = append(b, 0x21, 0, 36)
		s, d := src.Addr().As16(), dst.Addr().As16()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
